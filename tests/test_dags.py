"""The Airflow DAGs: integrity, the daily DAG end to end through `dag.test()` on SQLite,
a rerun of the same date giving identical outputs, and a 3-day backfill.

Airflow reads its configuration when first imported, so the module fixture `airflow_env`
sets a private AIRFLOW_HOME (SQLite) and the pipeline's settings (a temporary data root,
tiny training) before anything imports airflow or the DAG files, and restores the
environment after the module.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS = REPO_ROOT / "dags"
DS = "2026-11-28"
DAYS = ("2026-11-26", "2026-11-27", "2026-11-28")

pytestmark = pytest.mark.spark


@dataclass
class Work:
    """This module's temporary folders (set by the `airflow_env` fixture)."""

    root: Path = Path()

    @property
    def data_root(self) -> Path:
        return self.root / "data"


WORK = Work()


@pytest.fixture(scope="module", autouse=True)
def airflow_env(tmp_path_factory):
    WORK.root = tmp_path_factory.mktemp("mind-dags-test")
    mp = pytest.MonkeyPatch()
    for key, value in {
        "AIRFLOW_HOME": str(WORK.root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW_CONN_SPARK_MIND": '{"conn_type": "spark", "host": "local[2]"}',
        "MIND_DATA_ROOT": str(WORK.data_root),
        "MIND_LOOKBACK_DAYS": "3",
        "MIND_TRAIN_NPROC": "1",
        "MIND_TRAIN_EPOCHS": "1",
        "MIND_TRAIN_ARGS": "--batch-size 64 --n-neg 64 --embed-dim 16 --tower-hidden 32",
        "MIND_MIN_ROW_GROUPS": "2",
        "MIND_SPARK_CONF": "spark.sql.shuffle.partitions=2,spark.default.parallelism=2",
        "MIND_SPARK_DRIVER_MEMORY": "1g",
        "MIND_INDEX_SHARDS": "2",
        "MIND_RETRIES": "1",
        "MIND_RETRY_DELAY_S": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "MIND_TRACKING": "1",  # the daily run's MLflow run, in this module's store
        "MLFLOW_TRACKING_URI": f"sqlite:///{WORK.root / 'mlflow.db'}",
    }.items():
        mp.setenv(key, value)
    yield WORK
    mp.undo()


@pytest.fixture(scope="module")
def airflow_db(airflow_env):
    """Migrated SQLite metadata DB and 3 days of tiny generated logs (3k events)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True, env=os.environ.copy())
    subprocess.run([sys.executable, "-m", "ingest.sample_data", "--out",
                    str(WORK.data_root / "raw"), "--end-ds", DS, "--days", "3", "--events",
                    "3000", "--bad-rows"], check=True, capture_output=True, cwd=REPO_ROOT)
    return WORK.root


@pytest.fixture(scope="module")
def dagbag(airflow_env):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


# ------------------------------------------------------------------------ integrity


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"mind_daily", "mind_backfill"} <= set(dagbag.dags)


def test_dags_tagged_documented_and_retried(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for t in dag.tasks:
            assert t.retries and t.retries > 0, f"{dag_id}.{t.task_id} has no retries"


def test_daily_schedule_and_wiring(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["mind_daily"]
    # @daily with a data interval: the run of day D starts after D ends, logical date = D
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 0 * * *"
    order = ["resolve_ds", "build_sequences", "train", "evaluate_gate", "embed_users",
             "build_index", "publish"]
    for up, down in zip(order, order[1:]):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} -> {down} missing"
    spark = [t for t in dag.tasks if type(t).__name__ == "SparkSubmitOperator"]
    assert {t.task_id for t in spark} == {"build_sequences", "embed_users"}
    assert all(t._conn_id == "spark_mind" for t in spark)
    assert dag.get_task("publish").outlets and dag.get_task("build_sequences").outlets


def test_backfill_is_manual_with_params(dagbag):
    dag = dagbag.dags["mind_backfill"]
    assert dag.timetable.can_be_scheduled is False  # schedule=None
    assert {"start", "end", "retrain"} <= set(dag.params)
    assert dag.params["retrain"] is False


def test_pipeline_steps_without_airflow(tmp_path):
    """ds resolution, date ranges and the choice of the baseline / publish decision."""
    import datetime as dt

    from artefacts.storage import write_json
    from orchestration.steps import baseline_version, date_range, publish_decision, resolve_ds

    assert resolve_ds("2026-11-02", None) == "2026-11-02"
    assert resolve_ds(None, dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc)) == "2026-11-03"
    assert date_range("2026-11-30", "2026-12-02") == ["2026-11-30", "2026-12-01", "2026-12-02"]
    with pytest.raises(ValueError):
        date_range("2026-11-02", "2026-11-01")

    assert baseline_version(tmp_path, "2026-11-28") is None
    assert publish_decision(tmp_path, "2026-11-28")[0]
    for ds in ("2026-11-26", "2026-11-27"):
        (tmp_path / f"models/ds={ds}").mkdir(parents=True)
        (tmp_path / f"models/ds={ds}/model.pt").write_bytes(b"x")
    prev = {"ds": "2026-11-26", "model": "models/ds=2026-11-26/model.pt", "model_version": "a"}
    cur = {"ds": "2026-11-27", "model": "models/ds=2026-11-27/model.pt", "model_version": "b"}
    write_json(tmp_path / "current.json", {**cur, "previous": prev})
    assert baseline_version(tmp_path, "2026-11-28")["ds"] == "2026-11-27"
    # a rerun of the served ds compares with (and warm-starts from) what it replaced
    assert baseline_version(tmp_path, "2026-11-27")["ds"] == "2026-11-26"
    ok, why = publish_decision(tmp_path, "2026-11-20")
    assert not ok and "older" in why


def test_gate_rejects_a_worse_model(tmp_path, monkeypatch):
    """A new model worse than the published one by more than the margin is not published,
    and evaluation.json next to the model says why."""
    from artefacts.storage import write_json
    from orchestration import steps as pipeline_steps
    from orchestration.config import PipelineConfig

    cfg = PipelineConfig(data_root=tmp_path, gate_margin=0.02)
    seq = tmp_path / "sequences/ds=2026-11-28"
    seq.mkdir(parents=True)
    (seq / "stats.json").write_text(json.dumps({"ds": "2026-11-28", "seconds": 1}))
    old = tmp_path / "models/ds=2026-11-27/model.pt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    write_json(tmp_path / "current.json", {"ds": "2026-11-27", "model_version": "v0",
                                           "model": "models/ds=2026-11-27/model.pt"})
    work = Path(pipeline_steps.plan_training(cfg, "2026-11-28")["work_dir"])
    work.mkdir(parents=True)
    (work / "best.pt").write_bytes(b"new")
    scores = {str(old): 0.50, str(work / "best.pt"): 0.45}
    monkeypatch.setattr(pipeline_steps, "hit_rates",
                        lambda path, seq_dir: {"hr@50": scores[str(path)], "users": 10.0})
    res = pipeline_steps.evaluate_and_stage(cfg, "2026-11-28")
    assert res["publish"] is False and "NOT published" in res["reason"]
    saved = json.loads((tmp_path / "models/ds=2026-11-28/evaluation.json").read_text())
    assert saved["publish"] is False and saved["baseline"]["ds"] == "2026-11-27"
    assert (tmp_path / "models/ds=2026-11-28/model.pt").read_bytes() == b"new"

    scores[str(work / "best.pt")] = 0.49  # within the margin
    assert pipeline_steps.evaluate_and_stage(cfg, "2026-11-28")["publish"] is True


# ------------------------------------------------------------------------ end to end


def _run(dagbag, dag_id: str, logical_date: str | None = None, conf: dict | None = None):
    import pendulum

    kw = {"run_conf": conf} if conf else {}
    if logical_date:
        kw["logical_date"] = pendulum.parse(logical_date, tz="UTC")
    dr = dagbag.dags[dag_id].test(**kw)
    return dr, {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _table_digest(folder: Path) -> tuple[int, str]:
    """(files, digest of the sorted rows) of a Parquet folder: the content, not the file names."""
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    t = pq.read_table(folder)
    rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())
    return len(files), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _snapshot() -> dict:
    seq = WORK.data_root / f"sequences/ds={DS}"
    stats = json.loads((seq / "stats.json").read_text())
    stats.pop("seconds")
    snap = {"stats": stats, "current": (WORK.data_root / "current.json").read_text(),
            "tables": {p.name: _table_digest(p) for p in sorted(seq.iterdir()) if p.is_dir()
                       and p.name != "vocab"},
            "vocab": {p.name: _table_digest(p) for p in sorted((seq / "vocab").iterdir())},
            "model": hashlib.sha256((WORK.data_root / f"models/ds={DS}/model.pt")
                                    .read_bytes()).hexdigest(),
            "index": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted((WORK.data_root / f"index/ds={DS}").glob("*.faiss"))},
            "users": _table_digest(WORK.data_root / f"embeddings/ds={DS}/users"),
            "partitions": sorted(p.name for p in (WORK.data_root / "sequences").iterdir())}
    return snap


@pytest.fixture(scope="module")
def daily_run(airflow_db, dagbag):
    dr, states = _run(dagbag, "mind_daily", DS)
    return dr, states


@pytest.mark.slow
def test_daily_dag_end_to_end(daily_run, dagbag):
    dr, states = daily_run
    assert states == {t: "success" for t in dagbag.dags["mind_daily"].task_ids}, states
    assert str(dr.state) == "success"
    from artefacts.pointer import read_current

    cur = read_current(WORK.data_root)
    assert cur.ds == DS and cur.path("index").is_dir()
    gate = json.loads((WORK.data_root / f"models/ds={DS}/evaluation.json").read_text())
    assert gate["publish"] is True and gate["baseline"] is None
    manifest = json.loads((WORK.data_root / f"index/ds={DS}/manifest.json").read_text())
    assert manifest["n_shards"] == 2 and manifest["model_version"] == cur.model_version


@pytest.mark.slow
def test_daily_run_is_tracked_and_linked_to_the_served_version(daily_run):
    """The training's MLflow run carries ds, fingerprint, warm start and the gate decision;
    evaluation.json and current.json name it."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    ev = json.loads((WORK.data_root / f"models/ds={DS}/evaluation.json").read_text())
    cur = json.loads((WORK.data_root / "current.json").read_text())
    assert ev["mlflow_run_id"] and cur["mlflow_run_id"] == ev["mlflow_run_id"]
    run = MlflowClient(f"sqlite:///{WORK.root / 'mlflow.db'}").get_run(ev["mlflow_run_id"])
    tags = run.data.tags
    assert tags["mind.ds"] == DS and tags["mind.fingerprint"] == ev["training"]["fingerprint"]
    assert tags["mind.warm_start_from"] == (ev["training"]["warm_start_from"] or "none")
    assert tags["mind.gate.publish"] == "true" and tags["mind.gate.reason"] == ev["reason"]
    assert tags["mind.model_version"] == cur["model_version"]
    assert tags["mind.published_at"] == cur["published_at"]
    assert run.data.params["epochs"] == "1" and "loss" in run.data.metrics


@pytest.mark.slow
def test_rerun_of_a_date_gives_identical_outputs(daily_run, dagbag):
    before = _snapshot()
    dr, states = _run(dagbag, "mind_daily", DS)
    assert str(dr.state) == "success", states
    after = _snapshot()
    assert after == before
    assert not list((WORK.data_root / "sequences").glob("_*")), "temporary folders left behind"


@pytest.mark.slow
def test_backfill_three_days_creates_three_partitions(daily_run, dagbag):
    dr, states = _run(dagbag, "mind_backfill",
                      conf={"start": DAYS[0], "end": DAYS[-1], "retrain": False})
    assert str(dr.state) == "success", states
    assert states["rebuild_sequences"] == "success"
    assert states["train"] == "skipped" and states["publish"] == "skipped"
    for ds in DAYS:
        assert (WORK.data_root / f"sequences/ds={ds}/stats.json").is_file()
    assert sorted(p.name for p in (WORK.data_root / "sequences").iterdir()) == [
        f"ds={d}" for d in DAYS]
    # the vocabulary is stable across days: each day's ids extend the day before
    import pyarrow.parquet as pq

    v = [dict(zip(*pq.read_table(WORK.data_root / f"sequences/ds={d}/vocab/item")
                  .select(["value", "idx"]).to_pydict().values())) for d in DAYS[:2]]
    assert all(v[1].get(k) == i for k, i in v[0].items())


@pytest.mark.slow
def test_native_backfill_of_the_daily_dag(airflow_db):
    """`airflow backfill create` plans one mind_daily run per day, logical date = the day
    (= the partition it builds)."""
    env = os.environ.copy()
    subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True,
                   capture_output=True, env=env)
    r = subprocess.run([sys.executable, "-m", "airflow", "backfill", "create", "--dag-id",
                        "mind_daily", "--from-date", DAYS[0], "--to-date", DAYS[-1],
                        "--max-active-runs", "1", "--dry-run"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    planned = [d for d in DAYS if f"{d} 00:00:00+00:00" in r.stdout]
    assert planned == list(DAYS), r.stdout[-2000:]
