"""Importers of public interaction data sets into the RAW_EVENTS layout.

`import_any("movielens", [ratings_csv, movies_csv], out_root)` (or a folder holding
the standard file names) writes `out_root/events/ds=.../part-*.parquet`, ready for
jobs.build_sequences. Formats: see FORMATS and each module's docstring.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ingest.importers.amazon_ratings import iter_amazon_ratings, read_amazon_ratings
from ingest.importers.amazon_seq import read_amazon_seq
from ingest.importers.common import (
    InputFormatError,
    RawEventsWriter,
    ReadStats,
    report_stats,
    require_file,
    write_raw_batches,
    write_raw_events,
)
from ingest.importers.movielens import read_movielens
from ingest.importers.taobao import iter_taobao, read_taobao

__all__ = ["FORMATS", "ImportResult", "RawEventsWriter", "ReadStats", "import_any",
           "iter_amazon_ratings", "iter_taobao", "read_amazon_ratings", "read_amazon_seq",
           "read_movielens", "read_taobao", "require_file", "resolve_paths",
           "write_raw_batches", "write_raw_events"]

log = logging.getLogger(__name__)

# format -> what its input paths are (a folder with these standard names also works)
FORMATS: dict[str, str] = {
    "movielens": "ratings.csv movies.csv",
    "amazon-seq": "<name>.txt [<name>_item2attributes.json]",
    "taobao": "UserBehavior.csv [more csv files ...]",
    "amazon-ratings": "ratings.csv [more csv files ...]",
}


@dataclass
class ImportResult:
    format: str
    rows_per_ds: dict[str, int]
    stats: ReadStats = field(default_factory=ReadStats)
    appended: list[str] = field(default_factory=list)  # existing partitions appended to
    replaced: list[str] = field(default_factory=list)  # existing partitions replaced

    @property
    def total_rows(self) -> int:
        return sum(self.rows_per_ds.values())


def resolve_paths(fmt: str, paths: Sequence[Path | str]) -> list[Path]:
    """The input files of `fmt`; a single folder is searched for the standard names."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    ps = [Path(p) for p in paths]
    if len(ps) == 1 and ps[0].is_dir():
        d = ps[0]
        if fmt == "movielens":
            ps = [d / "ratings.csv", d / "movies.csv"]
        elif fmt == "amazon-seq":
            attrs = sorted(d.glob("*_item2attributes.json"))
            if len(attrs) != 1:
                raise FileNotFoundError(f"{d}: expected one *_item2attributes.json, "
                                        f"found {len(attrs)}")
            ps = [d / attrs[0].name.replace("_item2attributes.json", ".txt"), attrs[0]]
        else:
            ps = sorted(d.glob("*.csv"))
            if not ps:
                raise FileNotFoundError(f"{d}: no .csv file")
    if not ps:
        raise ValueError(f"{fmt}: no input path given (expected {FORMATS[fmt]})")
    if fmt == "movielens" and len(ps) != 2:
        raise ValueError(f"movielens needs {FORMATS[fmt]}, got {len(ps)} path(s)")
    if fmt == "amazon-seq" and len(ps) > 2:
        raise ValueError(f"amazon-seq needs {FORMATS[fmt]}, got {len(ps)} path(s)")
    return [require_file(p) for p in ps]


def import_any(fmt: str, paths: Sequence[Path | str], out: Path | str,
               snapshot_ds: str | None = None, *, replace: bool = False,
               **options: Any) -> ImportResult:
    """Import `paths` of format `fmt` into `out/events/ds=...`.

    Existing partitions are appended to (`replace=True`: replaced; see RawEventsWriter).
    options: `min_rating` (movielens, amazon-ratings), `base_time` (amazon-seq).
    """
    files = resolve_paths(fmt, paths)
    stats = ReadStats()
    if fmt == "movielens":
        tables = [read_movielens(*files, stats=stats, **options)]
    elif fmt == "amazon-seq":
        tables = [read_amazon_seq(*files, stats=stats, **options)]
    elif fmt == "taobao":
        tables = (t for f in files for t in iter_taobao(f, stats=stats, **options))
    else:
        tables = (t for f in files for t in iter_amazon_ratings(f, stats=stats, **options))
    try:
        with RawEventsWriter(out, snapshot_ds=snapshot_ds, replace=replace) as writer:
            for t in tables:
                writer.write(t)
        rows = writer.close()
    except InputFormatError:
        raise
    except ValueError as e:  # e.g. no row has a time: name the input, not only the rows
        raise InputFormatError(f"{', '.join(map(str, files))}: {e}") from None
    report_stats(fmt, stats)
    if not rows:  # nothing was written: say why rather than "0 rows", exit 0
        why = (f"{stats.malformed_lines} malformed line(s), e.g. {stats.malformed_samples[0]}"
               if stats.malformed_lines else "no data lines")
        raise InputFormatError(f"{', '.join(map(str, files))}: no row to import as {fmt} "
                               f"({why}); is it the right file and format?")
    log.info("%s: %d rows in %d partition(s) under %s", fmt, sum(rows.values()), len(rows), out)
    return ImportResult(fmt, rows, stats, writer.appended, writer.replaced)
