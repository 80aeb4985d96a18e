"""Exact-duplicate removal and per-user event counts in one pass over events grouped by user.

Spark's `dropDuplicates` on every column is a hash aggregate of all events, and the user
filter then needs a count per user and a semi-join: three passes over all events. Here one
shuffle by user_id and a sort within each partition by a 64-bit hash of the user (Spark's
external sort, which spills beyond its memory; one long key sorts ~2x faster than the
event's six columns) put every user's events next to each other, and a Python worker walks
the batches once (`stream_distinct_with_counts`, pure Arrow):

    rows of a hash value are sorted by (user, every other column) in Arrow, so that
    duplicates are adjacent (two users that share a hash are told apart there);
    a row equal to the previous one in every column (nulls equal) is a duplicate;
    n_events = the number of distinct events of the row's user.

Rows of the hash value that ends a batch are held back until the next batch arrives, so
memory per worker is one batch plus the largest user's events, whatever the data size.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

COUNT_COLUMN = "n_events"


def same_as_previous(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n,) bool: row i equals row i - 1 (two nulls are equal); row 0 is False."""
    a = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(a) == 0:
        return np.zeros(0, dtype=bool)
    cur, prev = a.slice(1), a.slice(0, len(a) - 1)
    equal = pc.fill_null(pc.equal(cur, prev), False)
    if a.null_count:
        equal = pc.or_(equal, pc.and_(pc.is_null(cur), pc.is_null(prev)))
    return np.concatenate([[False], equal.to_numpy(zero_copy_only=False)])


def distinct_with_counts(events: pa.Table, key_columns: Sequence[str],
                         user_column: str = "user_id") -> pa.Table:
    """`events` holding all of each of its users' events, in any order -> the distinct
    rows sorted by (user, every other key column; nulls last), plus COUNT_COLUMN (int64):
    the user's distinct rows."""
    order = [user_column, *(c for c in key_columns if c != user_column)]
    events = events.sort_by([(c, "ascending") for c in order])
    duplicate = np.ones(events.num_rows, dtype=bool)
    for c in key_columns:
        duplicate &= same_as_previous(events.column(c))
    distinct = events.filter(pa.array(~duplicate))
    new_user = ~same_as_previous(distinct.column(user_column))  # row 0: True
    starts = np.flatnonzero(new_user)
    sizes = np.diff(np.append(starts, distinct.num_rows))
    return distinct.append_column(COUNT_COLUMN, pa.array(np.repeat(sizes, sizes), pa.int64()))


def _last_group_start(table: pa.Table, group_column: str) -> int:
    """Index of the first row of the table's last group (0 for an empty table)."""
    starts = np.flatnonzero(~same_as_previous(table.column(group_column)))
    return int(starts[-1]) if len(starts) else 0


def stream_distinct_with_counts(batches: Iterable[pa.RecordBatch], key_columns: Sequence[str],
                                user_column: str = "user_id",
                                group_column: str | None = None) -> Iterator[pa.RecordBatch]:
    """`distinct_with_counts` over a partition's batches, one batch at a time. The rows of
    a group (of `group_column`, default the user column) are contiguous, and a group holds
    all the events of its users; the last group of a batch waits for the next one (its
    rows may continue there). A `group_column` other than the key columns is dropped."""
    group = group_column or user_column

    def finish(table: pa.Table) -> list[pa.RecordBatch]:
        if group not in key_columns and group != user_column:
            table = table.drop_columns([group])
        return distinct_with_counts(table, key_columns, user_column).to_batches()

    pending: pa.Table | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if pending is not None:
            table = pa.concat_tables([pending, table])
        cut = _last_group_start(table, group)
        pending = table.slice(cut)
        if cut:
            yield from finish(table.slice(0, cut))
    if pending is not None and pending.num_rows:
        yield from finish(pending)


USER_HASH = "_user_hash"


def distinct_events_with_counts(events: DataFrame, key_columns: Sequence[str],
                                user_column: str = "user_id") -> DataFrame:
    """Spark: `events` without exact duplicates (over `key_columns`), each with COUNT_COLUMN.

    The output is hash-partitioned by the user column (one shuffle of all events)."""
    keys = list(key_columns)
    schema = StructType([*events.schema.fields, StructField(COUNT_COLUMN, LongType(), False)])

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return stream_distinct_with_counts(batches, keys, user_column, group_column=USER_HASH)

    return (events.repartition(user_column)
            .withColumn(USER_HASH, F.xxhash64(user_column)).sortWithinPartitions(USER_HASH)
            .mapInArrow(per_partition, schema))
