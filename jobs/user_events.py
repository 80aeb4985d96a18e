"""Exact-duplicate removal and per-user event counts in one pass over events sorted by user.

Spark's `dropDuplicates` on every column is a hash aggregate of all events, and the user
filter then needs a count per user and a semi-join: three passes over all events. Here one
shuffle by user_id and a sort within each partition (Spark's external sort, which spills
beyond its memory) put every user's events next to each other, duplicates adjacent, and a
Python worker walks the sorted batches once (`distinct_with_counts`, pure Arrow):

    a row equal to the previous one in every column (nulls equal) is a duplicate;
    n_events = the number of distinct events of the row's user.

A user whose events continue in the next batch is held back until that batch arrives, so
memory per worker is one batch plus the largest user's events, whatever the data size.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
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
    """`events` sorted by (user, every other key column), all of each user's events
    present -> the distinct rows, plus COUNT_COLUMN (int64): the user's distinct rows."""
    duplicate = np.ones(events.num_rows, dtype=bool)
    for c in key_columns:
        duplicate &= same_as_previous(events.column(c))
    distinct = events.filter(pa.array(~duplicate))
    new_user = ~same_as_previous(distinct.column(user_column))  # row 0: True
    starts = np.flatnonzero(new_user)
    sizes = np.diff(np.append(starts, distinct.num_rows))
    return distinct.append_column(COUNT_COLUMN, pa.array(np.repeat(sizes, sizes), pa.int64()))


def _last_user_start(table: pa.Table, user_column: str) -> int:
    """Index of the first row of the table's last user (0 for an empty table)."""
    starts = np.flatnonzero(~same_as_previous(table.column(user_column)))
    return int(starts[-1]) if len(starts) else 0


def stream_distinct_with_counts(batches: Iterable[pa.RecordBatch], key_columns: Sequence[str],
                                user_column: str = "user_id") -> Iterator[pa.RecordBatch]:
    """`distinct_with_counts` over a partition's sorted batches, one batch at a time: the
    last user of a batch waits for the next one (its events may continue there)."""
    pending: pa.Table | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if pending is not None:
            table = pa.concat_tables([pending, table])
        cut = _last_user_start(table, user_column)
        pending = table.slice(cut)
        if cut:
            yield from distinct_with_counts(table.slice(0, cut), key_columns,
                                            user_column).to_batches()
    if pending is not None and pending.num_rows:
        yield from distinct_with_counts(pending, key_columns, user_column).to_batches()


def distinct_events_with_counts(events: DataFrame, key_columns: Sequence[str],
                                user_column: str = "user_id") -> DataFrame:
    """Spark: `events` without exact duplicates (over `key_columns`), each with COUNT_COLUMN.

    The output is hash-partitioned by the user column (one shuffle of all events)."""
    keys = list(key_columns)
    order = [user_column, *(c for c in keys if c != user_column)]
    schema = StructType([*events.schema.fields, StructField(COUNT_COLUMN, LongType(), False)])

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return stream_distinct_with_counts(batches, keys, user_column)

    return (events.repartition(user_column).sortWithinPartitions(*order)
            .mapInArrow(per_partition, schema))
