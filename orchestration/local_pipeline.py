"""`make local-pipeline`: the daily DAG on this machine, then a short report.

    python -m orchestration.local_pipeline [--data-root data] [--ds 2026-11-28] [--days 3]
    python -m orchestration.local_pipeline --data PATH [PATH ...] \
        --format movielens|amazon-seq|taobao|amazon-ratings

Each step lives in its own module: `inputs` (1), `airflow_local` (2, 3), `report` (4, 5).

1. Airflow on an embedded default: AIRFLOW_HOME=<repo>/airflow_home (SQLite, created with
   `airflow db migrate`), the dags/ folder, the `spark_mind` connection = local[*] unless
   AIRFLOW_CONN_SPARK_MIND is set, 2 training processes (MIND_TRAIN_NPROC).
2. Input: generated Tmall-like logs with 3-5 interests per user (ingest.sample_data, preset
   multi), or the user's own logs through an importer (`--data`, `--format`).
3. The daily DAG `mind_daily` for ds through `dag.test()` (one process, SQLite); its
   task progress is shown, its full log is kept in the report folder.
4. MIND-K vs MIND-1 vs YouTube DNN (and popularity) trained on the same sequences with
   the same budget (`experiments.compare`), scored on the held-out test users.
5. The report, printed and written with plots under <data root>/reports/<run>/:
   data statistics, the HitRate table, the index, recommendations of two users grouped
   by the interest that produced them next to their recent behaviours.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from artefacts.cli import run_main
from artefacts.storage import write_text
from orchestration.airflow_local import airflow_env, migrate, refresh_assets, run_daily_dag
from orchestration.config import PROJECT_ROOT
from orchestration.console import T0, say
from orchestration.inputs import DEFAULT_DS, prepare_input
from orchestration.report import (
    TRAIN_FLAGS,
    build_report,
    plots,
    recommendations,
    run_compare,
    sample_users,
)

# Sized for < 10 minutes on 2 shared cores: enough users that the multi-interest model
# separates from the single-vector ones, few enough that each Spark job stays small.
DEFAULTS = dict(days=3, events=100_000, users=5_000, items=1_000, epochs=4, nproc=2)


def main(argv: list[str] | None = None) -> int:
    """Expected failures (bad flags, unreadable --data) -> one line, exit 2 (--debug: the
    traceback)."""
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=str(PROJECT_ROOT / "data"))
    p.add_argument("--airflow-home", default=str(PROJECT_ROOT / "airflow_home"))
    p.add_argument("--ds", dest="ds_given", default=None,
                   help=f"run date (default {DEFAULT_DS}, or the last day of --data)")
    p.add_argument("--days", type=int, default=DEFAULTS["days"])
    p.add_argument("--events", type=int, default=DEFAULTS["events"])
    p.add_argument("--users", type=int, default=DEFAULTS["users"])
    p.add_argument("--items", type=int, default=DEFAULTS["items"])
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--nproc", type=int, default=DEFAULTS["nproc"])
    p.add_argument("--min-count", type=int, default=None,
                   help="min item and user count (default: the pipeline's, 5)")
    p.add_argument("--data", nargs="*", default=None, help="your own logs (files or a folder)")
    p.add_argument("--format", default=None, help="importer format of --data")
    p.add_argument("--no-compare", action="store_true", help="skip the HitRate comparison")
    args = p.parse_args(argv)
    if args.data and not args.format:
        p.error("--data needs --format (movielens, amazon-seq, taobao, amazon-ratings)")
    for flag in ("days", "events", "users", "items", "epochs", "nproc"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    root = Path(args.data_root).absolute()
    if args.data:  # its own root: dates and ids of your data never mix with the sample's
        root = root / f"import-{args.format}"
    args.data_root = str(root)
    ds, lookback, source = prepare_input(args)
    env = airflow_env(airflow_home=args.airflow_home, data_root=root, nproc=args.nproc,
                      epochs=args.epochs, lookback=lookback, train_flags=TRAIN_FLAGS,
                      min_count=args.min_count)
    run = f"{ds}_{time.strftime('%Y%m%d-%H%M%S')}"
    out = root / "reports" / run
    out.mkdir(parents=True, exist_ok=True)
    migrate(env)
    refresh_assets(env)
    dag = run_daily_dag(env, ds, out / "airflow_dag_test.log")

    cmp: dict[str, Any] = {"methods": {}, "settings": {"epochs": args.epochs}}
    if not args.no_compare:
        truth = root / "raw" / "truth"
        cmp = run_compare(root / "sequences" / f"ds={ds}", out, args,
                          truth if truth.is_dir() and not args.data else None)
    say("reading the index manifest and retrieving for two sample users")
    recs = recommendations(root, sample_users(root))
    pngs = plots(out, cmp) if cmp["methods"] else []
    text = build_report(root, ds, source, dag, cmp, recs, pngs, time.time() - T0)
    write_text(out / "report.md", text)
    print("\n" + text)
    say(f"report: {out / 'report.md'} (+ {', '.join(pngs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
