"""The distributed vocabulary (jobs.vocab) against a plain-Python reference."""
from __future__ import annotations

import random

import pytest

from jobs.vocab import extend_vocab
from schemas import FIRST_IDX, VOCAB

pytestmark = pytest.mark.spark


def reference(counts: dict[str, int], previous: dict[str, int]) -> dict[str, int]:
    """Old ids kept; new values appended most frequent first, ties by value."""
    out = dict(previous)
    last = max(previous.values(), default=FIRST_IDX - 1)
    new = sorted((v for v in counts if v not in previous), key=lambda v: (-counts[v], v))
    out.update({v: last + 1 + k for k, v in enumerate(new)})
    return out


def run_vocab(spark, counts: dict[str, int], previous: dict[str, int] | None,
              partitions: int) -> dict[str, int]:
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    try:
        values = spark.createDataFrame(sorted(counts.items()), "value string, n long") \
            .repartition(partitions)
        prev = None if previous is None else spark.createDataFrame(
            [(v, i, "2026-01-01") for v, i in previous.items()], VOCAB.spark_schema())
        df = extend_vocab(values, prev, "2026-01-02")
        plan = df._jdf.queryExecution().executedPlan().toString()
        rows = df.collect()
        df.unpersist()
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "4")
    assert "Window" not in plan  # no single-partition window
    assert {r["first_ds"] for r in rows if previous is None or r["value"] not in previous} \
        <= {"2026-01-02"}
    return {r["value"]: r["idx"] for r in rows}


def test_new_vocabulary_matches_reference_whatever_the_partitioning(spark):
    rng = random.Random(0)
    counts = {f"v{k}": rng.randint(1, 20) for k in range(3000)}  # many ties on n
    want = reference(counts, {})
    for partitions in (1, 4, 13):
        got = run_vocab(spark, counts, None, partitions)
        assert got == want, partitions
    assert sorted(want.values()) == list(range(FIRST_IDX, FIRST_IDX + len(counts)))


def test_extension_keeps_old_ids_and_appends_dense(spark):
    rng = random.Random(1)
    # yesterday's vocabulary: not in frequency order, and some of it absent today
    old = [f"old{k}" for k in range(500)]
    rng.shuffle(old)
    previous = {v: FIRST_IDX + k for k, v in enumerate(old)}
    counts = {v: rng.randint(1, 9) for v in old[:300]}
    counts.update({f"new{k}": rng.randint(1, 9) for k in range(700)})
    want = reference(counts, previous)
    first = run_vocab(spark, counts, previous, 4)
    assert first == want
    assert all(first[v] == i for v, i in previous.items())
    new_ids = sorted(i for v, i in first.items() if v not in previous)
    assert new_ids == list(range(max(previous.values()) + 1, max(previous.values()) + 701))
    assert run_vocab(spark, counts, previous, 7) == first  # a rerun, split differently
    # nothing new today: the vocabulary is yesterday's
    assert run_vocab(spark, {v: 1 for v in old[:10]}, previous, 3) == previous
