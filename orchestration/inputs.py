"""Raw logs for `make local-pipeline`: generated Tmall-like logs, or the user's own files
through an importer, written under <data root>/raw."""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from orchestration.console import say

DEFAULT_DS = "2026-11-28"


def prepare_input(args: argparse.Namespace) -> tuple[str, int, str]:
    """Write raw logs under <root>/raw; returns (ds, look-back days, description)."""
    raw = Path(args.data_root) / "raw"
    if args.data:
        return import_input(args, raw)
    from ingest import sample_data

    ds = args.ds_given or DEFAULT_DS
    say(f"generating {args.events:,} events, {args.users:,} users, {args.items:,} items over "
        f"{args.days} days (3-5 interests per user, with malformed rows)")
    sample_data.main(["--out", str(raw), "--end-ds", ds, "--days", str(args.days),
                      "--events", str(args.events), "--users", str(args.users),
                      "--items", str(args.items), "--preset", "multi", "--bad-rows"])
    return ds, args.days, "generated (ingest.sample_data --preset multi --bad-rows)"


def import_input(args: argparse.Namespace, raw: Path) -> tuple[str, int, str]:
    """The user's logs as ONE raw partition (a snapshot) dated by their last event; the
    look-back window spans all of them. raw/ of this root is replaced (it is our copy)."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from ingest.importers import import_any

    say(f"importing {args.format} logs from {', '.join(args.data)}")
    shutil.rmtree(raw, ignore_errors=True)
    placeholder = "2000-01-01"
    tmp = raw.with_name("_import_tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    import_any(args.format, args.data, tmp, snapshot_ds=placeholder)
    part = tmp / "events" / f"ds={placeholder}"
    times = pads.dataset(str(part), format="parquet").to_table(columns=["event_time"])
    mm = pc.min_max(times.column("event_time")).as_py()
    if mm["max"] is None:
        raise SystemExit(f"no event with a time in {args.data}")
    ds = args.ds_given or mm["max"].date().isoformat()
    lookback = (dt.date.fromisoformat(ds) - mm["min"].date()).days + 1
    (raw / "events").mkdir(parents=True)
    part.rename(raw / "events" / f"ds={ds}")
    if (tmp / "profiles").is_dir():
        (tmp / "profiles").rename(raw / "profiles")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"imported {times.num_rows:,} events from {mm['min']:%Y-%m-%d} to {mm['max']:%Y-%m-%d} "
        f"as one partition ds={ds}; look-back {lookback} days")
    return ds, lookback, f"{args.format} import of {', '.join(args.data)}"
