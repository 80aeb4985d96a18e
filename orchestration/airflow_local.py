"""Airflow on this machine for `make local-pipeline`: an embedded default (SQLite in
AIRFLOW_HOME, dags/ as the DAG folder, the `spark_mind` connection = local[*] unless
AIRFLOW_CONN_SPARK_MIND is set) and one run of the daily DAG through `dag.test()`.

Everything Airflow runs in child processes with their own environment (`airflow_env`):
Airflow reads its configuration at import, so this process never imports it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from orchestration.config import LOCAL_SPARK_CONNECTION, PROJECT_ROOT
from orchestration.console import say


def airflow_env(*, airflow_home: Path | str, data_root: Path | str, nproc: int, epochs: int,
                lookback: int, train_flags: Mapping[str, Any] | None = None,
                min_count: int | None = None) -> dict[str, str]:
    """The environment of the Airflow child processes (settings: orchestration.config)."""
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(Path(airflow_home).absolute()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "MIND_DATA_ROOT": str(Path(data_root).absolute()),
        "MIND_TRAIN_NPROC": str(nproc),
        "MIND_TRAIN_EPOCHS": str(epochs),
        "MIND_LOOKBACK_DAYS": str(lookback),
        "MIND_RETRY_DELAY_S": env.get("MIND_RETRY_DELAY_S", "10"),
        "SPARK_LOCAL_IP": env.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "OMP_WAIT_POLICY": "PASSIVE",
    })
    env.setdefault("AIRFLOW_CONN_SPARK_MIND", LOCAL_SPARK_CONNECTION)
    if train_flags:
        env.setdefault("MIND_TRAIN_ARGS", " ".join(f"--{k.replace('_', '-')} {v}"
                                                   for k, v in train_flags.items()))
    env.setdefault("MIND_SPARK_CONF", "spark.sql.shuffle.partitions=4")
    if min_count is not None:
        env["MIND_MIN_ITEM_COUNT"] = env["MIND_MIN_USER_COUNT"] = str(min_count)
    return env


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
