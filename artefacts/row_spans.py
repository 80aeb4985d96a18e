"""Row spans: a Parquet table cut into runs of equal rows, in file and row-group order, so
that parallel tasks each read (and decode) only their own rows.

Planned from the files' footers alone (`row_group_rows`: nothing is decoded); the same files
give the same plan, so a retried task reads the same rows. Used by the embedding job (users
in Spark tasks) and the index job (one shard per task).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class RowSpan:
    """Rows [start, stop) of row group `row_group` of the Parquet file `file`."""

    file: str
    row_group: int
    start: int
    stop: int


def row_group_rows(file: str) -> list[tuple[str, int, int]]:
    """[(file, row group, rows)] from one Parquet footer."""
    meta = pq.ParquetFile(file).metadata
    return [(file, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]


def plan_spans(groups: list[tuple[str, int, int]], partitions: int) -> list[list[RowSpan]]:
    """Cut the row groups, in their order, into `partitions` runs of equal rows (+-1):
    partition p owns the table's rows [p n / P, (p + 1) n / P). The same files give the
    same plan, so a retried task reads the same rows."""
    total = sum(rows for *_, rows in groups)
    bounds = [total * p // partitions for p in range(partitions + 1)]
    plans: list[list[RowSpan]] = [[] for _ in range(partitions)]
    offset = 0
    for file, group, rows in groups:
        lo, hi = offset, offset + rows
        p = bisect.bisect_right(bounds, lo) - 1  # the partition holding row lo
        while p < partitions and bounds[p] < hi:
            start, stop = max(lo, bounds[p]), min(hi, bounds[p + 1])
            if stop > start:
                plans[p].append(RowSpan(file, group, start - lo, stop - lo))
            p += 1
        offset = hi
    return plans


def read_spans(spans: list[RowSpan], batch_size: int, *, columns: list[str],
               use_threads: bool = True) -> Iterator[pa.RecordBatch]:
    """A task's rows (`columns`) as record batches of at most `batch_size` rows, one row
    group in memory at a time."""
    files: dict[str, pq.ParquetFile] = {}
    for span in spans:
        try:
            f = files.get(span.file) or files.setdefault(span.file, pq.ParquetFile(span.file))
            table = f.read_row_group(span.row_group, columns=columns, use_threads=use_threads)
        except (pa.ArrowException, OSError) as e:  # name the file: the message may not
            raise ValueError(f"{span.file}: row group {span.row_group}: {e}") from e
        if table.num_rows < span.stop:
            raise ValueError(f"{span.file}: row group {span.row_group} has {table.num_rows} "
                             f"rows, the plan reads up to row {span.stop} (file replaced?)")
        yield from table.slice(span.start, span.stop - span.start).to_batches(batch_size)
