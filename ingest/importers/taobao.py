"""Taobao UserBehavior.csv (`user,item,category,behavior,timestamp`, no header), streamed.

behavior pv -> "click"; cart, fav and buy keep their names (they are BEHAVIORS);
any other value is kept as is and counted, so the Spark job quarantines it.
category_id is the Taobao category; brand_id is null (the set has none).
The real file has 100M lines (3.6 GB): it is read in blocks and written as it comes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ingest.importers.common import BLOCK_SIZE, ReadStats, raw_table, read_csv_batches, unix_seconds
from schemas.tables import BEHAVIORS

COLUMNS = ["user", "item", "category", "behavior", "timestamp"]
BEHAVIOR_MAP = {"pv": "click"}


def iter_taobao(path: Path | str, *, stats: ReadStats | None = None,
                block_size: int = BLOCK_SIZE) -> Iterator[pa.Table]:
    """Yield RAW_EVENTS data tables, one per CSV block."""
    stats = stats if stats is not None else ReadStats()
    known = pa.array(BEHAVIORS)
    for batch in read_csv_batches(path, COLUMNS, stats, block_size=block_size):
        b = pa.Table.from_batches([batch])
        behavior = b.column("behavior")
        for src, dst in BEHAVIOR_MAP.items():
            behavior = pc.if_else(pc.equal(behavior, src), dst, behavior)
        stats.unknown_behavior += len(behavior) - (
            pc.sum(pc.is_in(behavior, value_set=known)).as_py() or 0)
        table = raw_table(b.column("user"), b.column("item"),
                          unix_seconds(b.column("timestamp"), stats),
                          category_id=b.column("category"), behavior=behavior)
        stats.rows += table.num_rows
        yield table


def read_taobao(path: Path | str, *, stats: ReadStats | None = None) -> pa.Table:
    """The whole file as one table (small files and tests)."""
    tables = list(iter_taobao(path, stats=stats))
    return pa.concat_tables(tables) if tables else raw_table([], [], [])
