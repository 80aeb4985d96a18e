"""Shared pieces of the importers: input checks, CSV streaming, the raw-events writer.

Every importer turns its format into tables with the RAW_EVENTS data columns and
hands them to one `RawEventsWriter`, which splits rows into `ds=` partitions and
publishes each partition atomically (artefacts.storage.staged_dir).

Nothing is lost silently: lines that cannot become a row (wrong number of fields,
bytes that are not UTF-8) are counted in `ReadStats` and logged with a sample; fields
that cannot be parsed become nulls, so the Spark job quarantines those rows with a
reason. A partition that already exists is appended to (its files are kept), unless
the caller asks to replace it.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from artefacts.storage import staged_dir
from schemas.tables import RAW_EVENTS

log = logging.getLogger(__name__)

RAW_SCHEMA = RAW_EVENTS.arrow_schema(include_partition=False)
TIMESTAMP = pa.timestamp("us", tz="UTC")
DAY_US = 86_400_000_000
BLOCK_SIZE = 64 << 20  # bytes of CSV per streamed batch (~1-2M rows)
MAX_SAMPLES = 5  # malformed lines kept for the log
NOT_UTF8 = "\x00not UTF-8"  # stands for a line utf8_blocks set aside (one field: invalid)
MAX_LINE_BYTES = 64 << 20  # memory bound of the UTF-8 filter on a file without newlines

# Whole seconds, at most 11 digits (before ~year 5100): anything else is unparsable.
_UNIX_SECONDS = r"^\s*-?\d{1,11}\s*$"
_NUMBER = r"^\s*-?(\d+\.?\d*|\.\d+)\s*$"
_NULL_STR = pa.scalar(None, pa.string())


class InputFormatError(ValueError):
    """Input that cannot be imported (missing column, unreadable CSV); names the file."""


@dataclass
class ReadStats:
    """What a reader saw; printed by the CLI so that no loss goes unnoticed."""

    rows: int = 0  # rows produced
    malformed_lines: int = 0  # wrong number of fields: skipped, counted, sampled
    malformed_samples: list[str] = field(default_factory=list)
    null_event_time: int = 0  # kept with a null event_time (missing/unparsable timestamp)
    unknown_behavior: int = 0  # kept as is; quarantined downstream
    filtered: int = 0  # dropped on purpose (e.g. rating below min_rating)

    def add_malformed(self, where: str) -> None:
        self.malformed_lines += 1
        if len(self.malformed_samples) < MAX_SAMPLES:
            self.malformed_samples.append(where)


def utf8_blocks(path: Path, stats: "ReadStats", block_size: int) -> Iterator[tuple[int, bytes]]:
    """The file as blocks of whole lines, (number of the block's first line, bytes).

    A line that is not valid UTF-8 is counted in `stats` (with its line number) and
    replaced by NOT_UTF8, a one-field line the CSV reader's invalid-row handler skips,
    instead of failing the whole file. A block is decoded whole first (fast C path);
    only one that fails is split into lines. A file without newlines is cut every
    MAX_LINE_BYTES (memory bound).
    """
    line, tail = 1, b""
    with open(path, "rb") as f:
        while True:
            data, more = tail, b""
            while True:  # up to the last complete line (a line longer than a block: more)
                more = f.read(block_size)
                data += more
                cut = data.rfind(b"\n") + 1
                if cut or not more or len(data) >= MAX_LINE_BYTES:
                    break
            if not more or cut == 0:  # end of file, or no newline in MAX_LINE_BYTES
                cut = len(data)
            if not data:
                return
            block, tail = data[:cut], data[cut:]
            try:
                block.isascii() or block.decode("utf-8")  # isascii: no copy, the common case
            except UnicodeDecodeError:
                block = _empty_bad_lines(block, line, path, stats)
            yield line, block
            line += block.count(b"\n")


def _empty_bad_lines(block: bytes, first: int, path: Path, stats: "ReadStats") -> bytes:
    lines = block.split(b"\n")
    for k, text in enumerate(lines):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:
            stats.add_malformed(f"{path}:{first + k}: {text[:40]!r} (not UTF-8: byte "
                                f"{text[e.start]:#04x} at {e.start})")
            lines[k] = NOT_UTF8.encode()  # keeps pyarrow's row numbers (it skips empty lines)
    return b"\n".join(lines)


def require_file(path: Path | str, what: str = "input file") -> Path:
    """Return `path` if it is a readable file; else raise an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def check_raw_events(table: pa.Table) -> pa.Table:
    """Return `table` with exactly the RAW_EVENTS data columns, in schema order.

    Raises ValueError naming the first missing, extra or mistyped column.
    """
    names = set(table.column_names)
    for f in RAW_SCHEMA:
        if f.name not in names:
            raise ValueError(f"raw events: missing column {f.name!r} ({f.type}); "
                             f"got {table.column_names}")
        got = table.schema.field(f.name).type
        if got != f.type:
            raise ValueError(f"raw events: column {f.name!r} has type {got}, expected {f.type}")
    extra = names - set(RAW_SCHEMA.names)
    if extra:
        raise ValueError(f"raw events: unexpected column(s) {sorted(extra)} "
                         f"(the ds partition column is derived by the writer)")
    return table.select(RAW_SCHEMA.names).cast(RAW_SCHEMA)


# ---------------------------------------------------------------------------- parsing


def read_csv_batches(path: Path | str, column_names: list[str], stats: ReadStats, *,
                     header: bool = False, delimiter: str = ",",
                     block_size: int = BLOCK_SIZE) -> Iterator[pa.RecordBatch]:
    """Stream a CSV as string columns; lines with a wrong field count are counted.

    With `header=True` the first line must name every column of `column_names`
    (in any order; other columns are read too); else the file has no header.
    """
    path = require_file(path)
    names = column_names
    if header:
        with open(path, "rb") as f:  # the first line only: a bad byte later is one line
            first = f.readline()
        try:
            names = next(csv.reader([first.decode("utf-8-sig")], delimiter=delimiter), [])
        except UnicodeDecodeError as e:
            raise InputFormatError(f"{path}: the header line is not UTF-8 text "
                                   f"({e.reason} at byte {e.start}); is it a CSV file?") from None
        except csv.Error as e:  # e.g. a NUL byte
            raise InputFormatError(f"{path}: unreadable header line ({e})") from None
        missing = [c for c in column_names if c not in names]
        if missing:
            raise InputFormatError(f"{path}: missing column(s) {missing} in header {names}")

    first_line = 1  # of the block being parsed: pyarrow numbers rows within a block

    def on_invalid(row) -> str:
        if row.text == NOT_UTF8:  # counted by utf8_blocks already
            return "skip"
        stats.add_malformed(f"{path}:{first_line + row.number - 1}: {row.text[:60]!r} "
                            f"({row.actual_columns} fields, expected {row.expected_columns})")
        return "skip"

    parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    # Ids stay strings; empty fields become nulls (quarantined downstream, not lost).
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                   strings_can_be_null=True, null_values=[""])
    # Each block of whole lines is parsed from memory: pyarrow never reads a Python file
    # object (its read-ahead thread on one aborts the interpreter after an error).
    empty = True
    for first_line, block in utf8_blocks(path, stats, block_size):
        skip = int(header and first_line == 1)
        read = pacsv.ReadOptions(column_names=names, skip_rows=skip,
                                 block_size=len(block) + 1, use_threads=False)
        try:
            table = pacsv.read_csv(pa.BufferReader(block), read_options=read,
                                   parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                continue
            raise InputFormatError(f"{path} (lines from {first_line}): {_first_line(e)}"
                                   ) from None
        empty = empty and table.num_rows == 0
        yield from table.to_batches()
    if empty:
        log.warning("%s: no data lines", path)


def _first_line(e: BaseException, limit: int = 200) -> str:
    """An error message fit for one line (Arrow quotes the offending row, raw bytes too)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def read_csv_table(path: Path | str, column_names: list[str], stats: ReadStats, *,
                   header: bool = False) -> pa.Table:
    """The whole CSV as one table of `column_names` (strings), possibly empty."""
    batches = list(read_csv_batches(path, column_names, stats, header=header))
    if not batches:
        return pa.table({c: pa.array([], pa.string()) for c in column_names})
    return pa.Table.from_batches(batches).select(column_names)


def unix_seconds(col: pa.Array | pa.ChunkedArray, stats: ReadStats) -> pa.Array:
    """Unix seconds (strings) -> UTC timestamps; unparsable values become null (counted)."""
    ok = pc.fill_null(pc.match_substring_regex(col, _UNIX_SECONDS), False)
    secs = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, col, _NULL_STR)), pa.int64())
    stats.null_event_time += len(col) - (pc.sum(ok).as_py() or 0)
    return pc.cast(pc.multiply(secs, 1_000_000), pa.int64()).cast(TIMESTAMP)


def numbers(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Decimal strings -> float64; anything else becomes null."""
    ok = pc.fill_null(pc.match_substring_regex(col, _NUMBER), False)
    return pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, col, _NULL_STR)), pa.float64())


def drop_below(table: pa.Table, rating: pa.Array, min_rating: float | None,
               stats: ReadStats) -> pa.Table:
    """Drop rows rated below `min_rating`; unparsable ratings are kept (they are events)."""
    if min_rating is None:
        return table
    below = pc.fill_null(pc.less(rating, min_rating), False)
    stats.filtered += pc.sum(below).as_py() or 0
    return table.filter(pc.invert(below))


def raw_table(user_id, item_id, event_time, *, category_id=None, brand_id=None,
              behavior: str | pa.Array = "click") -> pa.Table:
    """Assemble a RAW_EVENTS data table; scalar/None columns are broadcast."""
    n = len(user_id)

    def col(v, t):
        if v is None:
            return pa.nulls(n, t)
        if isinstance(v, str):
            return pa.array(np.full(n, v, dtype=object), t)
        return v

    return pa.table([col(user_id, pa.string()), col(item_id, pa.string()),
                     col(category_id, pa.string()), col(brand_id, pa.string()),
                     col(behavior, pa.string()), col(event_time, TIMESTAMP)],
                    schema=RAW_SCHEMA)


# ----------------------------------------------------------------------------- writing


def _ds_name(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


class RawEventsWriter:
    """Append RAW_EVENTS tables; rows go to `ds=` partitions published on close.

    ds is the UTC date of event_time, or `snapshot_ds` for every row when given.
    Rows with a null event_time have no date: without a snapshot they are written to
    the latest partition of the import, where the Spark job quarantines them.
    Buffers are flushed as extra part files once they hold `rows_per_part` rows (per
    partition) or `max_buffered` rows (all partitions), so memory stays bounded.
    Partitions are published together on a clean close; on an error none is.

    A partition that already exists is appended to: its files are hard-linked into the
    staged folder next to the new part files (named by this import's id, so no name is
    shared), and the folder replaces the old one in one rename — a reader sees the old
    rows or old + new, never a part. `replace=True` replaces existing partitions
    instead. Importing the same file twice appends its rows twice; build-sequences
    removes them as exact duplicates. (Two imports into the same partition at the same
    time are not supported: the last to publish wins.)
    """

    def __init__(self, out_root: Path | str, *, snapshot_ds: str | None = None,
                 rows_per_part: int = 4 << 20, max_buffered: int = 8 << 20,
                 replace: bool = False) -> None:
        if snapshot_ds is not None:  # fail early on a malformed date
            try:
                date.fromisoformat(snapshot_ds)
            except ValueError:
                raise ValueError(f"--snapshot-ds {snapshot_ds!r} is not a date YYYY-MM-DD"
                                 ) from None
        self.out_root = Path(out_root)
        self.snapshot_ds = snapshot_ds
        self.rows_per_part = rows_per_part
        self.max_buffered = max_buffered
        self.replace = replace
        self.appended: list[str] = []  # partitions that existed and were appended to
        self.replaced: list[str] = []  # partitions that existed and were replaced
        self._run = uuid.uuid4().hex[:8]
        self.rows: dict[str, int] = defaultdict(int)
        self._stack = contextlib.ExitStack()
        self._dirs: dict[str, Path] = {}
        self._parts: dict[str, int] = defaultdict(int)
        self._buf: dict[str, list[pa.Table]] = defaultdict(list)
        self._buf_rows: dict[str, int] = defaultdict(int)
        self._buffered = 0
        self._no_time: list[pa.Table] = []
        self._closed = False

    def __enter__(self) -> "RawEventsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        self._closed = True
        return self._stack.__exit__(exc_type, exc, tb)  # removes every staged partition

    def write(self, table: pa.Table) -> None:
        table = check_raw_events(table)
        if table.num_rows == 0:
            return
        if self.snapshot_ds is not None:
            self._add(self.snapshot_ds, table)
            return
        ts = table.column("event_time")
        if ts.null_count:
            self._no_time.append(table.filter(pc.is_null(ts)))
            table = table.filter(pc.is_valid(ts))
            ts = table.column("event_time")
        if table.num_rows == 0:
            return
        micros = ts.cast(pa.int64()).to_numpy()
        days = np.floor_divide(micros, DAY_US)
        if days[0] == days[-1] and (days == days[0]).all():  # the common case: one day
            self._add(_ds_name(int(days[0])), table)
            return
        order = np.argsort(days, kind="stable")  # keeps input order within a day
        days = days[order]
        table = table.take(pa.array(order))
        cuts = np.flatnonzero(np.diff(days)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(days)]):
            self._add(_ds_name(int(days[lo])), table.slice(lo, hi - lo))

    def _add(self, ds: str, table: pa.Table) -> None:
        self._buf[ds].append(table)
        self._buf_rows[ds] += table.num_rows
        self._buffered += table.num_rows
        self.rows[ds] += table.num_rows
        if self._buf_rows[ds] >= self.rows_per_part:
            self._flush(ds)
        elif self._buffered >= self.max_buffered:
            for d in list(self._buf):
                self._flush(d)

    def _flush(self, ds: str) -> None:
        tables = self._buf.pop(ds, [])
        self._buffered -= self._buf_rows.pop(ds, 0)
        if not tables:
            return
        if ds not in self._dirs:
            final = self.out_root / "events" / f"ds={ds}"
            self._dirs[ds] = self._stack.enter_context(staged_dir(final))
        part = self._dirs[ds] / f"part-{self._run}-{self._parts[ds]:05d}.parquet"
        self._parts[ds] += 1
        pq.write_table(pa.concat_tables(tables).combine_chunks(), part)

    def close(self) -> dict[str, int]:
        """Flush, publish every partition, return rows per ds (sorted by ds)."""
        if self._closed:
            return dict(sorted(self.rows.items()))
        self._closed = True
        try:
            if self._no_time:
                n = sum(t.num_rows for t in self._no_time)
                if not self.rows:
                    raise ValueError(f"{n} row(s) and none has an event_time: "
                                     "pass snapshot_ds to choose their partition")
                latest = max(self.rows)
                log.warning("%d row(s) without event_time go to ds=%s (quarantined downstream)",
                            n, latest)
                for t in self._no_time:
                    self._add(latest, t)
            for ds in list(self._buf):
                self._flush(ds)
            for ds, staged in self._dirs.items():
                self._keep_existing(ds, staged)
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        self._stack.close()  # publishes each staged partition
        return dict(sorted(self.rows.items()))

    def _keep_existing(self, ds: str, staged: Path) -> None:
        """Link the files of an existing partition into its staged folder (append)."""
        final = self.out_root / "events" / f"ds={ds}"
        if not final.is_dir():
            return
        if self.replace:
            self.replaced.append(ds)
            return
        self.appended.append(ds)
        for f in final.iterdir():
            if not f.is_file():
                continue
            target = staged / f.name
            if target.exists():  # never overwrite: a file of this import
                raise FileExistsError(f"{target}: name clash while appending to {final}")
            try:
                os.link(f, target)  # same folder tree: no copy
            except OSError:
                shutil.copy2(f, target)


def write_raw_events(table: pa.Table, out_root: Path | str, *,
                     snapshot_ds: str | None = None, replace: bool = False) -> dict[str, int]:
    """Write one RAW_EVENTS table under `out_root/events/ds=...`; return rows per ds."""
    return write_raw_batches([table], out_root, snapshot_ds=snapshot_ds, replace=replace)


def write_raw_batches(tables: Iterable[pa.Table], out_root: Path | str, *,
                      snapshot_ds: str | None = None, replace: bool = False) -> dict[str, int]:
    """Stream RAW_EVENTS tables into partitions (appended to, or replaced); rows per ds."""
    with RawEventsWriter(out_root, snapshot_ds=snapshot_ds, replace=replace) as w:
        for t in tables:
            w.write(t)
    return w.close()


def report_stats(name: str, stats: ReadStats) -> None:
    """Log what a reader dropped or nulled, with samples of malformed lines."""
    if stats.malformed_lines:
        log.warning("%s: %d malformed line(s) skipped, e.g. %s", name, stats.malformed_lines,
                    "; ".join(stats.malformed_samples))
    if stats.null_event_time:
        log.warning("%s: %d row(s) with a missing or unparsable timestamp kept with "
                    "event_time null", name, stats.null_event_time)
    if stats.unknown_behavior:
        log.warning("%s: %d row(s) with an unknown behaviour kept as is",
                    name, stats.unknown_behavior)
