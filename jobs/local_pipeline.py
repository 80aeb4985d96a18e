"""`make local-pipeline`: the daily DAG on this machine, then a short report.

    python -m jobs.local_pipeline [--data-root data] [--ds 2026-11-28] [--days 3] [--events N]
    python -m jobs.local_pipeline --data PATH [PATH ...] --format movielens|amazon-seq|taobao|amazon-ratings

1. Airflow on an embedded default: AIRFLOW_HOME=<repo>/airflow_home (SQLite, created with
   `airflow db migrate`), the dags/ folder, the `spark_mind` connection = local[*] unless
   AIRFLOW_CONN_SPARK_MIND is set, 2 training processes (MIND_TRAIN_NPROC).
2. Input: generated Tmall-like logs with 3-5 interests per user (jobs.sample_data, preset
   multi), or the user's own logs through an importer (`--data`, `--format`).
3. The daily DAG `mind_daily` for ds through `dag.test()` (one process, SQLite); its
   task progress is shown, its full log is kept in the report folder.
4. MIND-K vs MIND-1 vs YouTube DNN (and popularity) trained on the same sequences with
   the same budget (`mind_model.compare`), scored on the held-out test users.
5. The report, printed and written with plots under <data root>/reports/<run>/:
   data statistics, the HitRate table, the index, recommendations of two users grouped
   by the interest that produced them next to their recent behaviours.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.pipeline_config import LOCAL_SPARK_CONNECTION, PROJECT_ROOT

log = logging.getLogger("local_pipeline")
T0 = time.time()

# Sized for < 10 minutes on 2 shared cores: enough users that the multi-interest model
# separates from the single-vector ones, few enough that each Spark job stays small.
DEFAULTS = dict(ds="2026-11-28", days=3, events=100_000, users=5_000, items=1_000,
                epochs=4, nproc=2)
# Training flags of the daily model and of the compared variants (one budget for all).
TRAIN_FLAGS = dict(batch_size=256, n_neg=256, embed_dim=32, eval_users=2000)


def say(msg: str) -> None:
    el = time.time() - T0
    print(f"[{time.strftime('%H:%M:%S')} +{int(el // 60):02d}:{int(el % 60):02d}] {msg}",
          flush=True)


# ----------------------------------------------------------------------- environment


def airflow_env(args: argparse.Namespace, lookback: int) -> dict[str, str]:
    env = dict(os.environ)
    home = Path(args.airflow_home).absolute()
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "MIND_DATA_ROOT": str(Path(args.data_root).absolute()),
        "MIND_TRAIN_NPROC": str(args.nproc),
        "MIND_TRAIN_EPOCHS": str(args.epochs),
        "MIND_LOOKBACK_DAYS": str(lookback),
        "MIND_RETRY_DELAY_S": env.get("MIND_RETRY_DELAY_S", "10"),
        "SPARK_LOCAL_IP": env.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "OMP_WAIT_POLICY": "PASSIVE",
    })
    env.setdefault("AIRFLOW_CONN_SPARK_MIND", LOCAL_SPARK_CONNECTION)
    env.setdefault("MIND_TRAIN_ARGS", " ".join(f"--{k.replace('_', '-')} {v}"
                                               for k, v in TRAIN_FLAGS.items()))
    env.setdefault("MIND_SPARK_CONF", "spark.sql.shuffle.partitions=4")
    if args.min_count is not None:
        env["MIND_MIN_ITEM_COUNT"] = env["MIND_MIN_USER_COUNT"] = str(args.min_count)
    return env


def prepare_input(args: argparse.Namespace) -> tuple[str, int, str]:
    """Write raw logs under <root>/raw; returns (ds, look-back days, description)."""
    raw = Path(args.data_root) / "raw"
    if args.data:
        return import_input(args, raw)
    from jobs import sample_data

    ds = args.ds_given or DEFAULTS["ds"]
    say(f"generating {args.events:,} events, {args.users:,} users, {args.items:,} items over "
        f"{args.days} days (3-5 interests per user, with malformed rows)")
    sample_data.main(["--out", str(raw), "--end-ds", ds, "--days", str(args.days),
                      "--events", str(args.events), "--users", str(args.users),
                      "--items", str(args.items), "--preset", "multi", "--bad-rows"])
    return ds, args.days, "generated (jobs.sample_data --preset multi --bad-rows)"


def import_input(args: argparse.Namespace, raw: Path) -> tuple[str, int, str]:
    """The user's logs as ONE raw partition (a snapshot) dated by their last event; the
    look-back window spans all of them. raw/ of this root is replaced (it is our copy)."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from jobs.importers import import_any

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


def migrate(env: dict[str, str]) -> None:
    say(f"Airflow metadata DB (SQLite) in {env['AIRFLOW_HOME']}: airflow db migrate")
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit("airflow db migrate failed")


_REFRESH_ASSETS = (
    "from airflow.jobs.job import Job\n"
    "from airflow.jobs.scheduler_job_runner import SchedulerJobRunner\n"
    "SchedulerJobRunner(job=Job())._update_asset_orphanage()\n")


def refresh_assets(env: dict[str, str]) -> None:
    """Re-parse the DAGs into the metadata DB and do the scheduler's asset bookkeeping
    (dag.test() runs no scheduler): assets no DAG references any more are deactivated and
    the referenced ones activated. Without it, an asset that an older version of the DAGs
    declared for the same path (another name, same URI) stays active, and every task using
    the path fails with AirflowInactiveAssetInInletOrOutletException."""
    steps = ([sys.executable, "-m", "airflow", "dags", "reserialize"],
             [sys.executable, "-c", _REFRESH_ASSETS])
    for cmd in steps:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
        if r.returncode:
            sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
            raise SystemExit(f"refreshing the DAGs' assets failed: {' '.join(cmd[1:4])}")


# ------------------------------------------------------------------------ the DAG run

DAG_TASKS = ("resolve_ds", "build_sequences", "train", "evaluate_gate", "embed_users",
             "build_index", "publish")
_SHOW = ("[1/", "[2/", "[3/", "[4/", "[5/", "[6/", "epoch ", "gate ", "ds=", "published ",
         "users ", "recall@", "Task failed", "Error", "error:")


def run_daily_dag(env: dict[str, str], ds: str, log_path: Path) -> dict[str, Any]:
    """dag.test() of mind_daily in a child process (Airflow reads its config at import);
    prints task starts/ends and the jobs' stage lines, keeps the whole log."""
    say(f"running the daily DAG mind_daily for ds={ds} through Airflow (dag.test, SQLite); "
        f"log: {log_path}")
    code = ("import json, sys, pendulum\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            "b = DagBag(dag_folder=sys.argv[1])\n"
            "assert not b.import_errors, b.import_errors\n"
            "dr = b.dags['mind_daily'].test(logical_date=pendulum.parse(sys.argv[2], tz='UTC'))\n"
            "tis = {ti.task_id: {'state': str(ti.state), 'seconds': (ti.end_date - ti.start_date)"
            ".total_seconds() if ti.end_date and ti.start_date else None}"
            " for ti in dr.get_task_instances()}\n"
            "print('DAG_RESULT ' + json.dumps({'state': str(dr.state), 'run_id': dr.run_id,"
            " 'tasks': tis}))\n")
    result: dict[str, Any] = {}
    starts: dict[str, float] = {}
    with open(log_path, "w") as logf:
        p = subprocess.Popen([sys.executable, "-c", code, env["AIRFLOW__CORE__DAGS_FOLDER"], ds],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=PROJECT_ROOT, bufsize=1)
        for line in p.stdout:
            logf.write(line)
            if line.startswith("DAG_RESULT "):
                result = json.loads(line[len("DAG_RESULT "):])
            elif "[DAG TEST] starting task_id=" in line:
                tid = line.split("task_id=")[1].split()[0]
                starts[tid] = time.time()
                say(f"  > {tid}")
            elif "[DAG TEST] end task task_id=" in line:
                tid = line.split("task_id=")[1].split()[0]
                say(f"  < {tid} ({time.time() - starts.get(tid, time.time()):.0f}s)")
            else:
                msg = _job_message(line)
                if msg and any(k in msg for k in _SHOW) and "SecurityManager" not in msg:
                    say(f"      {msg[:150]}")
        p.wait()
    done = {t for t, v in result.get("tasks", {}).items() if v["state"] == "success"}
    if p.returncode or result.get("state") != "success" or not set(DAG_TASKS) <= done:
        failed = [t for t, v in result.get("tasks", {}).items() if v["state"] == "failed"]
        raise SystemExit(f"the daily DAG did not succeed (state {result.get('state')}, failed "
                         f"tasks {failed}); see {log_path}")
    return result


def _job_message(line: str) -> str | None:
    """The message of a job's own log line inside Airflow's structured log line."""
    if " INFO " in line:
        return line.split(" INFO ", 1)[1].split(" [airflow.task")[0].strip()
    if "[info     ]" in line and ("epoch " in line or "gate " in line):
        return line.split("[info     ]", 1)[1].split(" [")[0].strip()
    return None


# ------------------------------------------------------------------------------ report


def run_compare(seq_dir: Path, out: Path, args: argparse.Namespace, truth: Path | None) -> dict:
    from mind_model import compare as cmp

    say(f"training YouTube DNN, MIND-1 and MIND-K on the same sequences ({args.epochs} epochs, "
        f"{args.nproc} processes each) for the HitRate table")
    logging.getLogger("mind_model.compare").setLevel(logging.INFO)
    return cmp.compare(seq_dir, out / "compare", epochs=args.epochs, nproc=args.nproc,
                       overrides=dict(TRAIN_FLAGS), truth_dir=truth,
                       baselines=("popularity",), heatmap_users=4)


def sample_users(root: Path, n: int = 2) -> list[str]:
    """Users with the most interests (ties: smallest id), from the published vectors."""
    import pyarrow.dataset as pads

    from jobs.publish import read_current

    t = pads.dataset(str(read_current(root).path("user_vectors")), format="parquet").to_table(
        columns=["user_id", "n_interests"])
    rows = sorted(zip(t.column("n_interests").to_pylist(), t.column("user_id").to_pylist()),
                  key=lambda r: (-r[0], r[1]))
    return [u for _, u in rows[:n]]


def recommendations(root: Path, users: list[str], n: int = 12) -> list[dict[str, Any]]:
    import numpy as np
    import pyarrow.parquet as pq

    from mind_model.retrieval import Retriever

    r = Retriever(root, gpu=False)
    seq = r.pointer.path("sequences")
    items = pq.read_table(seq / "items", columns=["item_idx", "category_idx"]).to_pydict()
    cat_of = dict(zip(items["item_idx"], items["category_idx"]))
    _, cat_names = r.vocab("category")

    def label(idx: int) -> str:
        c = cat_of.get(int(idx))
        name = cat_names[c] if c is not None and c < len(cat_names) else None
        return f"{r.item_ids(np.array([idx]))[0]} ({name or 'cat ?'})"

    out = []
    for u in users:
        rec = r.recommend_user(u, n=n)
        seen = r.seen_items(u)
        groups: dict[int, list[str]] = {}
        for rec_row in rec.records():
            groups.setdefault(rec_row["interest"], []).append(label(rec_row["item_idx"]))
        out.append({"user": u, "n_interests": rec.n_interests,
                    "recent": [label(i) for i in seen[-10:][::-1]],
                    "by_interest": {k: groups[k] for k in sorted(groups)}})
    return out


def plots(out: Path, cmp: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    methods = cmp["methods"]
    names = {"popularity": "Popularity", "youtube": "YouTube DNN", "mind1": "MIND-1",
             "mind": "MIND-K"}
    order = [m for m in ("popularity", "youtube", "mind1", "mind") if m in methods]
    ns = [10, 50, 100]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    w = 0.8 / len(order)
    for i, m in enumerate(order):
        ax.bar([j + i * w for j in range(len(ns))], [methods[m][f"hr@{n}"] for n in ns], w,
               label=names[m])
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(ns))], [f"HR@{n}" for n in ns])
    ax.set_ylabel("hit rate (test users)")
    ax.legend()
    ax.set_title("HitRate@N: MIND-K vs MIND-1 vs YouTube DNN")
    fig.tight_layout()
    fig.savefig(out / "hitrate.png", dpi=110)
    plt.close(fig)
    files.append("hitrate.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for m in ("youtube", "mind1", "mind"):
        if m in methods:
            a1.plot(methods[m].get("loss_by_epoch") or [], marker="o", label=names[m])
            a2.plot(methods[m].get("valid_hr50_by_epoch") or [], marker="o", label=names[m])
    a1.set_title("training loss")
    a2.set_title("valid HR@50")
    from matplotlib.ticker import MaxNLocator

    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("epoch")
        a.legend()
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)
    files.append("training.png")
    heat = cmp.get("heatmap")
    if heat and Path(heat).is_file():
        files.append(str(Path(heat).relative_to(out)))
    return files


def build_report(root: Path, ds: str, source: str, dag: dict, cmp: dict,
                 recs: list[dict], pngs: list[str], wall_s: float) -> str:
    from jobs.layout import DataLayout

    layout = DataLayout(root)
    stats = json.loads((layout.sequences(ds) / "stats.json").read_text())
    gate = json.loads((layout.models(ds) / "evaluation.json").read_text())
    idx = json.loads((layout.index(ds) / "manifest.json").read_text())
    c, u = stats["counts"], stats["users"]
    quar = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.get("quarantined_by_reason", {})
                                                       .items()))
    L = [f"# MIND local pipeline: ds={ds}", "",
         f"Input: {source}. Wall time {wall_s / 60:.1f} min.", "",
         "## Data", "",
         "| events in | quarantined | duplicates | filtered (rare) | kept | users (train/valid/test) | items |",
         "|---:|---:|---:|---:|---:|---|---:|",
         f"| {c['input']:,} | {c['quarantined']:,} | {c['duplicates']:,} | {c['filtered']:,} | "
         f"{c['kept']:,} | {u['total']:,} ({u['train']:,}/{u['valid']:,}/{u['test']:,}) | "
         f"{stats['items']:,} |", ""]
    if quar:
        L += [f"Quarantined by reason: {quar}.", ""]
    methods = cmp["methods"]
    names = {"popularity": "Popularity", "youtube": "YouTube DNN", "mind1": "MIND-1",
             "mind": "MIND-K"}
    n_test = int(methods.get("mind", next(iter(methods.values()))).get("users", u["test"]))
    L += ["## HitRate (paper protocol, test users)", "",
          f"Same sequences, budget ({cmp['settings']['epochs']} epochs) and seed; "
          f"{n_test:,} held-out users.", "",
          "| method | HR@10 | HR@50 (± s.e.) | HR@100 | HR@50 vs YouTube DNN |",
          "|---|---:|---:|---:|---:|"]
    for m in ("popularity", "youtube", "mind1", "mind"):
        if m in methods:
            r = methods[m]
            rel = r.get("rel_hr@50")
            se = r.get("hr@50_se")
            L.append(f"| {names[m]} | {r['hr@10']:.4f} | {r['hr@50']:.4f}"
                     f"{'' if se is None else f' ± {se:.3f}'} | {r['hr@100']:.4f} "
                     f"| {'' if rel is None else f'{rel:+.1%}'} |")
    L += ["", f"Publish gate of the daily model: {gate['reason']} "
              f"(daily model test HR@50 {gate['new']['hr@50']:.4f}).", "",
          "## Index", "",
          f"{idx['factory']} ({'exact' if idx['exact'] else 'approximate'}) over "
          f"{idx['items']:,} items of dimension {idx['dim']}, {idx['n_shards']} shards, "
          f"{idx['bytes'] / 2**20:.2f} MiB; recall@{idx['recall']['n']} vs exact search "
          f"{idx['recall']['value']:.4f} (threshold {idx['recall']['threshold']}, "
          f"{idx['recall']['users']} users){', search ' + json.dumps(idx['search_params']) if idx['search_params'] else ''}.",
          "", "## Recommendations of two users (published model + index)", ""]
    for r in recs:
        L += [f"### user {r['user']}: {r['n_interests']} interests", "",
              "Recent behaviours (newest first): " + ", ".join(r["recent"]), ""]
        for k, items in r["by_interest"].items():
            L.append(f"- interest {k}: " + ", ".join(items))
        L.append("")
    L += ["## Daily DAG run", "", "| task | state | seconds |", "|---|---|---:|"]
    for t in DAG_TASKS:
        v = dag["tasks"].get(t, {})
        s = v.get("seconds")
        L.append(f"| {t} | {v.get('state', '?')} | {'' if s is None else f'{s:.0f}'} |")
    L += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in pngs), ""]
    return "\n".join(L)


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=str(PROJECT_ROOT / "data"))
    p.add_argument("--airflow-home", default=str(PROJECT_ROOT / "airflow_home"))
    p.add_argument("--ds", dest="ds_given", default=None,
                   help=f"run date (default {DEFAULTS['ds']}, or the last day of --data)")
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
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    root = Path(args.data_root).absolute()
    if args.data:  # its own root: dates and ids of your data never mix with the sample's
        root = root / f"import-{args.format}"
    args.data_root = str(root)
    ds, lookback, source = prepare_input(args)
    env = airflow_env(args, lookback)
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
    (out / "report.md").write_text(text)
    print("\n" + text)
    say(f"report: {out / 'report.md'} (+ {', '.join(pngs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
