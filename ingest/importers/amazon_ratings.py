"""Amazon ratings-only CSV (`user,item,rating,timestamp`, no header), streamed.

Every rating is a "click" at its Unix-second timestamp; category and brand are
unknown (null). The full files are tens of millions of lines, so rows are read in
blocks and written as they come (see common.RawEventsWriter).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ingest.importers.common import (
    BLOCK_SIZE,
    ReadStats,
    drop_below,
    numbers,
    raw_table,
    read_csv_batches,
    unix_seconds,
)

COLUMNS = ["user", "item", "rating", "timestamp"]


def iter_amazon_ratings(path: Path | str, *, min_rating: float | None = None,
                        stats: ReadStats | None = None,
                        block_size: int = BLOCK_SIZE) -> Iterator[pa.Table]:
    """Yield RAW_EVENTS data tables, one per CSV block."""
    stats = stats if stats is not None else ReadStats()
    for batch in read_csv_batches(path, COLUMNS, stats, block_size=block_size):
        b = pa.Table.from_batches([batch])
        b = drop_below(b, numbers(b.column("rating")), min_rating, stats)
        table = raw_table(b.column("user"), b.column("item"),
                          unix_seconds(b.column("timestamp"), stats))
        stats.rows += table.num_rows
        yield table


def read_amazon_ratings(path: Path | str, *, min_rating: float | None = None,
                        stats: ReadStats | None = None) -> pa.Table:
    """The whole file as one table (small files and tests)."""
    tables = list(iter_amazon_ratings(path, min_rating=min_rating, stats=stats))
    return pa.concat_tables(tables) if tables else raw_table([], [], [])
