"""Duplicate removal and per-user counts over sorted Arrow batches, against plain Python."""
from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import pyarrow as pa
import pytest

from jobs.user_events import (
    COUNT_COLUMN,
    distinct_events_with_counts,
    distinct_with_counts,
    stream_distinct_with_counts,
)

KEYS = ["user_id", "item_id", "category_id", "brand_id", "behavior", "event_time"]
T0 = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)


def random_events(n: int, seed: int) -> list[tuple]:
    """Few users, items, times and side ids, so that exact duplicates are common; null
    side ids, which count as equal to each other."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = (f"u{rng.randint(0, 30)}", f"i{rng.randint(0, 5)}",
               rng.choice(["c1", "c2", None]), rng.choice(["b1", None]),
               rng.choice(["click", "buy"]), T0 + dt.timedelta(seconds=rng.randint(0, 3)))
        rows.append(row)
        if rng.random() < 0.2:
            rows.append(row)  # an exact duplicate
    return rows


def sort_key(row: tuple) -> tuple:
    """Ascending, nulls last (the order distinct_with_counts returns)."""
    return tuple((v is None, v) for v in row)


def to_table(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[] for _ in KEYS]
    types = [pa.string()] * 5 + [pa.timestamp("us", tz="UTC")]
    return pa.table({k: pa.array(list(c), t) for k, c, t in zip(KEYS, cols, types)})


def reference(rows: list[tuple]) -> list[tuple]:
    """Distinct rows in sorted order, each with its user's number of distinct rows."""
    distinct = sorted(set(rows), key=sort_key)
    per_user = Counter(r[0] for r in distinct)
    return [(*r, per_user[r[0]]) for r in distinct]


def rows_of(table: pa.Table) -> list[tuple]:
    return [tuple(r[c] for c in [*KEYS, COUNT_COLUMN]) for r in table.to_pylist()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distinct_with_counts_matches_reference(seed):
    rows = random_events(400, seed)  # unsorted: the function sorts
    want = reference(rows)
    assert len(want) < len(rows)  # the data has duplicates to remove
    assert rows_of(distinct_with_counts(to_table(rows), KEYS)) == want


@pytest.mark.parametrize("batch_rows", [1, 2, 7, 64, 10_000])
def test_streamed_batches_give_the_same_rows(batch_rows):
    """Users and duplicate runs that straddle batch boundaries are handled: any batch size
    gives the whole-table answer."""
    rows = sorted(random_events(300, seed=5), key=sort_key)
    batches = to_table(rows).to_batches(max_chunksize=batch_rows)
    assert len(batches) == -(-len(rows) // batch_rows)
    out = pa.Table.from_batches(list(stream_distinct_with_counts(batches, KEYS)))
    assert rows_of(out) == reference(rows)


@pytest.mark.parametrize("batch_rows", [1, 5, 64, 10_000])
def test_groups_of_several_users_unsorted_inside(batch_rows):
    """Batches grouped by a coarse key that several users share (as users sharing a
    64-bit hash would), unsorted inside a group: the group column is dropped and the rows
    are the reference's."""
    rows = random_events(300, seed=6)
    group = {u: int(u[1:]) % 4 for u in {r[0] for r in rows}}  # ~8 users per group
    random.Random(4).shuffle(rows)
    rows.sort(key=lambda r: group[r[0]])  # stable: groups contiguous, shuffled inside
    table = to_table(rows).append_column("g", pa.array([group[r[0]] for r in rows], pa.int64()))
    batches = table.to_batches(max_chunksize=batch_rows)
    out = pa.Table.from_batches(list(stream_distinct_with_counts(batches, KEYS,
                                                                 group_column="g")))
    assert out.column_names == [*KEYS, COUNT_COLUMN]
    got = sorted(rows_of(out), key=sort_key)  # per group sorted; groups in group order
    assert got == reference(rows)


def test_empty_input_gives_no_rows():
    assert list(stream_distinct_with_counts(iter([]), KEYS)) == []
    assert distinct_with_counts(to_table([]), KEYS).num_rows == 0


@pytest.mark.spark
def test_spark_partitions_give_the_reference(spark):
    """On Spark (several partitions, unsorted input) the distinct events and counts equal
    the reference."""
    rows = random_events(500, seed=9)
    rng = random.Random(3)
    rng.shuffle(rows)
    df = spark.createDataFrame(to_table(rows).to_pandas()).repartition(5)
    out = distinct_events_with_counts(df, KEYS).collect()
    got = sorted(((*(r[c] for c in KEYS), r[COUNT_COLUMN]) for r in out), key=sort_key)
    want = reference(rows)
    assert [g[:5] + g[6:] for g in got] == [w[:5] + w[6:] for w in want]
    assert [g[5].timestamp() for g in got] == [w[5].timestamp() for w in want]
