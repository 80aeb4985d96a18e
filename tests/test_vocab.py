"""The distributed vocabulary (jobs.vocab) against a plain-Python reference."""
from __future__ import annotations

import random

import pytest

from jobs.vocab import extend_vocabularies, partition_offsets
from schemas import FIRST_IDX

pytestmark = pytest.mark.spark


def reference(counts: dict[str, int], previous: dict[str, int]) -> dict[str, int]:
    """Old ids kept; new values appended most frequent first, ties by value."""
    out = dict(previous)
    last = max(previous.values(), default=FIRST_IDX - 1)
    new = sorted((v for v in counts if v not in previous), key=lambda v: (-counts[v], v))
    out.update({v: last + 1 + k for k, v in enumerate(new)})
    return out


def run_vocabularies(spark, counts: dict[str, dict[str, int]],
                     previous: dict[str, dict[str, int]] | None,
                     partitions: int) -> dict[str, dict[str, int]]:
    """{name: {value: idx}} from extend_vocabularies over `partitions` partitions."""
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    try:
        values = spark.createDataFrame(
            sorted((name, v, n) for name, c in counts.items() for v, n in c.items()),
            "name string, value string, n long").repartition(partitions)
        prev = None if previous is None else spark.createDataFrame(
            [(name, v, i, "2026-01-01") for name, p in previous.items() for v, i in p.items()],
            "name string, value string, idx int, first_ds string")
        df = extend_vocabularies(values, prev, "2026-01-02")
        plan = df._jdf.queryExecution().executedPlan().toString()
        rows = df.collect()
        df.unpersist()
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "4")
    assert "Window" not in plan  # no single-partition window
    old = previous or {}
    assert {r["first_ds"] for r in rows if r["value"] not in old.get(r["name"], {})} \
        <= {"2026-01-02"}
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        assert r["value"] not in out.setdefault(r["name"], {}), r  # one row per value
        out[r["name"]][r["value"]] = r["idx"]
    return out


def run_vocab(spark, counts: dict[str, int], previous: dict[str, int] | None,
              partitions: int) -> dict[str, int]:
    """One vocabulary through extend_vocabularies."""
    out = run_vocabularies(spark, {"v": counts}, None if previous is None else {"v": previous},
                           partitions)
    return out.get("v", {})


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


def test_vocabularies_extended_together_match_each_alone(spark):
    """Several names in one sort: each gets exactly its own reference ids, whether its
    rows share partitions with other names or not; a name with no previous ids starts at
    FIRST_IDX, and one with nothing new keeps yesterday's ids."""
    rng = random.Random(2)
    counts = {
        "user": {f"u{k}": rng.randint(1, 5) for k in range(1500)},
        "item": {f"i{k}": rng.randint(1, 30) for k in range(800)},
        "brand": {f"b{k}": rng.randint(1, 3) for k in range(7)},  # fewer than partitions
        "gender": {"f": 1, "m": 1},
        "city_tier": {"1": 4},
    }
    previous = {
        "item": {f"i{k}": FIRST_IDX + 10 + k for k in range(0, 800, 3)},  # gaps: max + 1
        "city_tier": {"1": FIRST_IDX},
        "user": {"gone": FIRST_IDX + 5},  # absent today, keeps its id
    }
    want = {name: reference(c, previous.get(name, {})) for name, c in counts.items()}
    for partitions in (1, 3, 11):
        assert run_vocabularies(spark, counts, previous, partitions) == want, partitions
    assert want["city_tier"] == previous["city_tier"]


def test_partition_offsets_by_hand():
    """Partition 0 holds a:3, b:1; partition 1 holds b:2, c:1 (sorted by name)."""
    counts = [(1, "c", 1), (0, "b", 1), (1, "b", 2), (0, "a", 3)]
    got = {(p, n): o for p, n, o in partition_offsets(counts, {"b": 9})}
    first = FIRST_IDX
    assert got[(0, "a")] == first            # a's positions 0..2 -> first..first+2
    assert got[(0, "b")] == 10 - 3           # position 3 -> idx 10 (previous max 9)
    assert got[(1, "b")] == 10 + 1           # positions 0..1 -> 11, 12
    assert got[(1, "c")] == first - 2        # position 2 -> first
