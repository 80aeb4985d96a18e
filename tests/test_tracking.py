"""MLflow tracking with a real MLflow and a temporary SQLite store, read back through
`MlflowClient`: a training run (params, per-epoch metrics, artefacts, model version), its
resume, a compare (parent + one child per method), aggregate, the daily DAG's training and
gate steps, and the failure rule (a broken store never fails training)."""
from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from artefacts.pointer import model_version  # noqa: E402
from mind_model.train import TrainConfig, train  # noqa: E402
from tests.conftest import build_generated_sequences  # noqa: E402

DS = "2026-11-28"
TINY = dict(embed_dim=16, tower_hidden=(32,), profile_dim=4, n_neg=64, batch_size=64, lr=3e-3,
            threads=1, reader_workers=1, shuffle_buffer=1024, eval_users=300, log_every=10,
            progress=False)

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def seq_dir(spark, tmp_path_factory) -> Path:
    return build_generated_sequences(spark, tmp_path_factory.mktemp("track_data"), ds=DS,
                                     days=2, n_events=12_000, seed=5, min_row_groups=2)


@pytest.fixture
def store(tmp_path, monkeypatch) -> tuple[str, MlflowClient]:
    """Tracking on, into a SQLite store of this test."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MIND_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri, MlflowClient(uri)


def _runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_training_run_in_the_default_store_under_the_data_root(seq_dir, tmp_path, monkeypatch):
    """No MLFLOW_TRACKING_URI: sqlite:///<data root>/mlflow.db, artefacts beside it. The run
    has every TrainConfig field as a param, one loss / samples/s / valid HR point per
    epoch equal to train's history, the test HRs, metrics.json, training.png and
    best.pt's model version; a resume continues the same run."""
    monkeypatch.setenv("MIND_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MIND_DATA_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    root = seq_dir.parents[1]
    out = tmp_path / "run"
    cfg = TrainConfig(data_dir=seq_dir, out_dir=out, epochs=2, steps_per_epoch=8, patience=None,
                      **TINY)
    res = train(cfg)
    assert (root / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = _runs(client, "mind-train")
    assert [r.info.run_id for r in runs] == [res["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((root / "mlartifacts").as_uri())

    params = run.data.params
    for key, value in cfg.to_dict().items():
        assert params[key] == str(value), key
    assert params["data.world_size"] == "1" and params["data.steps_per_epoch"] == "8"

    hist = res["history"]
    assert [e["epoch"] for e in hist] == [0, 1]
    for name, key in (("loss", "loss"), ("samples_per_s", "samples_per_s"),
                      ("valid_hr_at_50", "valid_hr@50"), ("valid_hr_at_10", "valid_hr@10")):
        got = _history(client, run.info.run_id, name)
        assert [s for s, _ in got] == [0, 1], name
        assert [v for _, v in got] == pytest.approx([e[key] for e in hist]), name
    assert run.data.metrics["test_hr_at_50"] == pytest.approx(res["test"]["hr@50"])
    assert run.data.metrics["best_valid_hr_at_50"] == pytest.approx(
        res["best_valid"]["valid_hr@50"])
    assert run.data.tags["mind.model_version"] == model_version(out / "best.pt")
    assert run.data.tags["mind.kind"] == "training"

    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "training.png"} <= arts
    local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == json.loads((out / "metrics.json").read_text())
    png = Path(client.download_artifacts(run.info.run_id, "training.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resume with a longer budget: the same run gets epoch 2, no duplicated points
    res2 = train(TrainConfig(**{**cfg.to_dict(), "epochs": 3, "tower_hidden": (32,)}))
    assert res2["mlflow_run_id"] == res["mlflow_run_id"]
    assert [s for s, _ in _history(client, run.info.run_id, "loss")] == [0, 1, 2]
    assert len(_runs(client, "mind-train")) == 1
    assert client.get_run(run.info.run_id).data.params["epochs"] == "2"  # params keep their start


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nobody listens there


@pytest.mark.parametrize("broken", ["file-as-folder", "server-down"])
def test_a_broken_tracking_store_does_not_fail_training(seq_dir, tmp_path, monkeypatch, caplog,
                                                        broken):
    (tmp_path / "a-file").write_text("not a folder")
    uri = (f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}" if broken == "file-as-folder"
           else f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MIND_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="mind_model.tracking"):
        res = train(TrainConfig(data_dir=seq_dir, out_dir=tmp_path / "run", epochs=1,
                                steps_per_epoch=4, **TINY))
    assert res["mlflow_run_id"] is None
    assert (tmp_path / "run" / "best.pt").is_file() and res["step"] == 4
    warnings = [r for r in caplog.records if "MLflow tracking" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert time.monotonic() - t0 < 120  # the retries to a server that is down are bounded


def test_switched_off_writes_no_store(seq_dir, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MIND_TRACKING", "1")
    res = train(TrainConfig(data_dir=seq_dir, out_dir=tmp_path / "a", epochs=1,
                            steps_per_epoch=2, tracking=False, **TINY))
    monkeypatch.setenv("MIND_TRACKING", "off")
    res2 = train(TrainConfig(data_dir=seq_dir, out_dir=tmp_path / "b", epochs=1,
                             steps_per_epoch=2, **TINY))
    assert res["mlflow_run_id"] is None and res2["mlflow_run_id"] is None
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "a" / "mlflow_run.json").exists()


def test_compare_logs_a_parent_with_one_child_per_method(seq_dir, tmp_path, store):
    from experiments.compare import METHOD_NAMES, compare

    _, client = store
    res = compare(seq_dir, tmp_path / "cmp", epochs=2, max_steps=6, seed=1,
                  overrides=dict(TINY), variants=("youtube", "mind"), baselines=("popularity",),
                  heatmap_users=0)
    runs = _runs(client, "mind-compare")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert res["mlflow"]["run_id"] == parent.info.run_id
    children = {r.data.tags["mind.method"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"popularity", "youtube", "mind"}
    assert {m: c.info.run_id for m, c in children.items()} == res["mlflow"]["children"]
    for m, child in children.items():
        row = res["methods"][m]
        assert child.info.run_name == METHOD_NAMES[m]
        for n in (10, 50, 100):
            assert child.data.metrics[f"hr_at_{n}"] == pytest.approx(row[f"hr@{n}"])
            assert parent.data.metrics[f"{m}.hr_at_{n}"] == pytest.approx(row[f"hr@{n}"])
    rel = res["methods"]["mind"]["rel_hr@50"]  # nan when YouTube DNN's HR@50 is 0: not logged
    if math.isfinite(rel):
        assert children["mind"].data.metrics["rel_hr_at_50"] == pytest.approx(rel)
    else:
        assert "rel_hr_at_50" not in children["mind"].data.metrics
    # the trained children hold their own training: config params and epoch curves
    for m in ("youtube", "mind"):
        c = children[m]
        assert c.data.params["variant"] == m and c.data.params["max_steps"] == "6"
        losses = [v for _, v in _history(client, c.info.run_id, "loss")]
        assert losses == pytest.approx(res["methods"][m]["loss_by_epoch"])
    assert parent.data.params["split"] == "test" and parent.data.params["max_steps"] == "6"
    assert {"compare.json", "compare.md"} <= {a.path for a in
                                              client.list_artifacts(parent.info.run_id)}
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["mlflow"]["run_id"] == parent.info.run_id
    assert len(_runs(client, "mind-train")) == 0  # no stray top-level training runs


def test_aggregate_logs_a_parent_with_one_child_per_method(tmp_path, store):
    from experiments import aggregate as agg

    _, client = store
    runs = []
    for i, (yt, mk) in enumerate(((0.20, 0.26), (0.22, 0.25))):
        d = tmp_path / f"c{i}"
        d.mkdir()
        run = {"settings": {"data": str(tmp_path / f"sequences/ds=2026-11-2{i}"),
                            "split": "test"},
               "methods": {m: {"hr@10": hr / 2, "hr@50": hr, "hr@100": hr * 1.5, "users": 100}
                           for m, hr in (("youtube", yt), ("mind", mk))}}
        (d / "compare.json").write_text(json.dumps(run))
        runs.append(d)
    assert agg.main([str(r) for r in runs] + ["--out", str(tmp_path / "agg")]) == 0
    found = _runs(client, "mind-aggregate")
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["mind.method"]: r for r in found if r is not parent}
    assert set(children) == {"youtube", "mind"}
    # by hand: mean HR@50 of MIND-K (0.26 + 0.25) / 2, mean difference ((.06) + (.03)) / 2
    assert children["mind"].data.metrics["mean_hr_at_50"] == pytest.approx(0.255)
    assert children["mind"].data.metrics["mean_diff"] == pytest.approx(0.045)
    assert parent.data.metrics["mind.mean_diff"] == pytest.approx(0.045)
    assert {"summary.json", "summary.md"} <= {a.path for a in
                                              client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_daily_training_and_gate_steps_tag_one_run(seq_dir, tmp_path, store, monkeypatch):
    """The DAG's steps without Airflow: train_command opens the run with ds, fingerprint and
    warm start; the torchrun command logs the training into it; the gate adds its decision
    and writes the run id into evaluation.json; version_pointer carries it to current.json."""
    import shutil

    from artefacts.layout import DataLayout
    from artefacts.pointer import _training_run
    from orchestration import steps
    from orchestration.config import PipelineConfig

    _, client = store
    root = tmp_path / "data"
    shutil.copytree(seq_dir, root / "sequences" / f"ds={DS}")
    cfg = PipelineConfig(data_root=root, train_nproc=1, train_epochs=1, train_patience=1,
                         train_args=("--batch-size", "64", "--n-neg", "64", "--embed-dim", "16",
                                     "--tower-hidden", "32", "--steps-per-epoch", "4",
                                     "--eval-users", "200", "--threads", "1"))
    plan = steps.plan_training(cfg, DS)
    cmd = steps.train_command(cfg, DS)
    subprocess.run(["bash", "-c", cmd], check=True, capture_output=True)
    result = steps.evaluate_and_stage(cfg, DS)

    runs = _runs(client, "mind-daily")
    assert len(runs) == 1
    run = runs[0]
    tags = run.data.tags
    assert tags["mind.ds"] == DS and tags["mind.fingerprint"] == plan["fingerprint"]
    assert tags["mind.warm_start_from"] == "none" and tags["mind.baseline_version"] == "none"
    assert tags["mind.gate.publish"] == "true" and tags["mind.gate.reason"] == result["reason"]
    assert tags["mind.model_version"] == result["model_version"] == model_version(
        DataLayout(root).model_file(DS))
    assert run.data.params["data_dir"] == plan["seq_dir"] and run.data.params["epochs"] == "1"
    assert [s for s, _ in _history(client, run.info.run_id, "loss")] == [0]
    assert run.data.metrics["gate_new_hr_at_50"] == pytest.approx(result["new"]["hr@50"])
    saved = json.loads(DataLayout(root).evaluation(DS).read_text())
    assert saved["mlflow_run_id"] == run.info.run_id
    assert _training_run(DataLayout(root), DS) == run.info.run_id

    # a retry of the task continues the same run
    subprocess.run(["bash", "-c", steps.train_command(cfg, DS)], check=True, capture_output=True)
    assert [r.info.run_id for r in _runs(client, "mind-daily")] == [run.info.run_id]


@pytest.mark.slow
def test_mlflow_ui_serves_the_compare_runs_on_loopback(tmp_path, store):
    """`make mlflow-ui`'s command (mind_model.tracking.ui_command) answers on 127.0.0.1: the
    page, and its REST API lists the compare parent with its children."""
    import os
    import signal
    import sys
    import urllib.request

    from experiments import track
    from experiments.compare import METHOD_NAMES
    from mind_model.tracking import ui_command, ui_env

    parent = track.start_parent("compare", "compare ds=X (test)", tmp_path, {"split": "test"})
    children: dict = {}
    track.log_rows(parent, {"youtube": {"hr@50": 0.20}, "mind": {"hr@50": 0.25}}, children,
                   METHOD_NAMES)
    parent.end()
    port = _closed_port()
    cmd = ui_command(tmp_path, port)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"] and "127.0.0.1" in cmd
    base = f"http://127.0.0.1:{port}"

    def get(path: str, body: dict | None = None) -> bytes:
        req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    log = open(tmp_path / "ui.log", "w")
    # its own process group: mlflow ui runs the web server as a child process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=ui_env())
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                assert get("/health") == b"OK"
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the UI did not answer within 180 s"
                time.sleep(1)
        assert b"<title>MLflow</title>" in get("/")
        exp = json.loads(get("/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                             "mind-compare"))["experiment"]
        runs = json.loads(get("/api/2.0/mlflow/runs/search",
                              {"experiment_ids": [exp["experiment_id"]]}))["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert set(by_name) == {"compare ds=X (test)", "YouTube DNN", "MIND-K"}
        for name in ("YouTube DNN", "MIND-K"):
            tags = {t["key"]: t["value"] for t in by_name[name]["data"]["tags"]}
            assert tags["mlflow.parentRunId"] == parent.run_id
        metrics = {m["key"]: m["value"] for m in by_name["MIND-K"]["data"]["metrics"]}
        assert metrics["hr_at_50"] == pytest.approx(0.25)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_sweep_logs_a_parent_curve_and_one_child_per_value(seq_dir, tmp_path, store):
    from experiments.sweep import sweep

    _, client = store
    res = sweep(seq_dir, tmp_path / "sw", "sigma", [0.5, 2.0], epochs=1, max_steps=3,
                overrides=dict(TINY))
    found = _runs(client, "mind-sweep")
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["mind.sweep_value"]: r for r in found if r is not parent}
    assert set(children) == {"0.5", "2.0"} and res["mlflow"]["run_id"] == parent.info.run_id
    for i, point in enumerate(res["points"]):
        child = children[point["label"]]
        assert child.data.params["routing_sigma"] == point["label"]  # its own training's config
        assert child.data.metrics["hr_at_50"] == pytest.approx(point["hr@50"])
    curve = _history(client, parent.info.run_id, "hr_at_50")
    assert curve == [(i, pytest.approx(p["hr@50"])) for i, p in enumerate(res["points"])]
    assert {"sweep_routing_sigma.json", "sweep_routing_sigma.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}


def test_local_pipeline_report_names_its_runs(tmp_path, monkeypatch):
    from orchestration.report import mlflow_section

    monkeypatch.setenv("MIND_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MIND_DATA_ROOT", raising=False)
    text = "\n".join(mlflow_section(tmp_path, {"mlflow_run_id": "d41"},
                                    {"mlflow": {"run_id": "p07", "children": {"mind": "c99"}}}))
    assert f"sqlite:///{tmp_path}/mlflow.db" in text and "make mlflow-ui" in text
    assert "`d41`" in text and "`p07`" in text
    assert "| MIND-K (child) | mind-compare | `c99` |" in text
    monkeypatch.setenv("MIND_TRACKING", "0")
    assert "switched off" in "\n".join(mlflow_section(tmp_path, {}, {}))
