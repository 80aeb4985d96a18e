"""Command line: `python -m ingest.importers.cli FORMAT --out DIR [--snapshot-ds D] PATHS...`.

Rows landing on a `ds=` partition that already exists are appended to it (`--replace`
replaces such partitions instead); the summary names the partitions concerned.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from artefacts.cli import run_main
from ingest.importers import FORMATS, import_any


def _instant(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ingest.importers.cli",
        description="Import public interaction data into raw event partitions.",
        epilog="inputs: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    p.add_argument("format", choices=sorted(FORMATS))
    p.add_argument("paths", nargs="+", type=Path, help="input files, or one folder")
    p.add_argument("--out", type=Path, required=True, help="raw root: writes OUT/events/ds=...")
    p.add_argument("--snapshot-ds", default=None,
                   help="put every row into this one partition (for multi-year data)")
    p.add_argument("--min-rating", type=float, default=None,
                   help="movielens, amazon-ratings: drop ratings below this")
    p.add_argument("--base-time", type=_instant, default=None,
                   help="amazon-seq: instant of position 0 (ISO 8601, UTC by default)")
    p.add_argument("--replace", action="store_true",
                   help="replace existing ds= partitions the rows fall on (default: append)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    options = {}
    if args.min_rating is not None:
        if args.format not in ("movielens", "amazon-ratings"):
            p.error(f"--min-rating does not apply to {args.format}")
        options["min_rating"] = args.min_rating
    if args.base_time is not None:
        if args.format != "amazon-seq":
            p.error(f"--base-time does not apply to {args.format}")
        options["base_time"] = args.base_time
    t0 = time.perf_counter()
    r = import_any(args.format, args.paths, args.out, args.snapshot_ds, replace=args.replace,
                   **options)
    first, last = (min(r.rows_per_ds), max(r.rows_per_ds)) if r.rows_per_ds else ("-", "-")
    print(f"{args.format}: wrote {r.total_rows:,} rows into {len(r.rows_per_ds):,} "
          f"partition(s) ds={first}..{last} under {args.out / 'events'} "
          f"in {time.perf_counter() - t0:.1f}s")
    if len(r.rows_per_ds) <= 10:
        for ds, n in r.rows_per_ds.items():
            print(f"  ds={ds}: {n:,} rows")
    s = r.stats
    print(f"malformed lines skipped: {s.malformed_lines:,}; rows with null event_time: "
          f"{s.null_event_time:,}; unknown behaviours: {s.unknown_behavior:,}; "
          f"filtered by rating: {s.filtered:,}")
    for sample in s.malformed_samples:
        print(f"  malformed: {sample}")
    if r.appended:
        print(f"appended to {len(r.appended)} existing partition(s) ({_days(r.appended)}): "
              f"their earlier rows are kept (--replace replaces them; rows imported twice "
              f"are removed by build-sequences as exact duplicates)")
    if r.replaced:
        print(f"replaced {len(r.replaced)} existing partition(s) ({_days(r.replaced)})")
    return 0


def _days(ds: list[str]) -> str:
    return ", ".join(f"ds={d}" for d in ds[:5]) + (" ..." if len(ds) > 5 else "")


if __name__ == "__main__":
    sys.exit(main())
