"""tune: a coordinate-wise search on the valid users, the collapse rule, and the settings
file read back by training and by the daily DAG's plan."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import build_generated_sequences

DS = "2026-11-28"
TINY = dict(embed_dim=8, tower_hidden=(16,), profile_dim=4, n_neg=64, batch_size=64, lr=3e-3,
            threads=1, reader_workers=1, shuffle_buffer=1024, eval_users=200, log_every=10,
            epochs=2, max_steps=20)


@pytest.fixture(scope="module")
def seq_dir(spark, tmp_path_factory) -> Path:
    return build_generated_sequences(spark, tmp_path_factory.mktemp("tune_data"), ds=DS,
                                     days=1, n_events=8_000, seed=5, min_row_groups=1)


@pytest.mark.spark
def test_tune_chooses_the_best_valid_run_and_rejects_collapsed_interests(seq_dir, tmp_path):
    from experiments.tune import tune
    from mind_model.train import load_settings, parse_args

    grid = {"routing_sigma": [0.3], "n_interests": [2]}
    res = tune(seq_dir, tmp_path, variant="mind", grid=grid, common=TINY, max_cosine=1.0)
    trials = {json.dumps(t["params"], sort_keys=True): t for t in res["trials"]}
    # defaults, sigma 0.3, then K=2 at the best sigma (K=4 there is a run already made)
    assert len(trials) == 3
    assert all(t["rejected"] is None and 0 <= t["valid_hr@50"] <= 1 for t in trials.values())
    assert all(-1 <= t["interest_cosine"] <= 1 for t in trials.values())
    # coordinate-wise: the chosen setting has the best valid HR@50 among the ones tried
    best = max(trials.values(), key=lambda t: t["valid_hr@50"])
    assert res["valid_hr@50"] == best["valid_hr@50"]
    assert res["chosen"] == best["params"]
    sigma_best = max((t for t in trials.values() if "n_interests" not in t["params"]),
                     key=lambda t: t["valid_hr@50"])["params"]
    assert {k: v for k, v in res["chosen"].items() if k != "n_interests"} == sigma_best
    assert res["trials"][-1]["params"] == {**sigma_best, "n_interests": 2}

    written = json.loads((tmp_path / "settings.json").read_text())
    assert written["chosen"] == res["chosen"] and (tmp_path / "settings.md").is_file()
    # the recipe every trial shared (--set) comes with the chosen values; the budget not
    recipe = {"embed_dim": 8, "tower_hidden": [16], "profile_dim": 4, "n_neg": 64,
              "batch_size": 64, "lr": 3e-3, "shuffle_buffer": 1024}
    assert written["fixed"] == recipe
    assert load_settings(tmp_path / "settings.json") == {**recipe, **res["chosen"]}
    args = parse_args(["--data-dir", "d", "--out-dir", "o", "--settings",
                       str(tmp_path / "settings.json"), "--lr", "0.01"])
    for k, v in res["chosen"].items():
        assert args[k] == v
    assert args["embed_dim"] == 8 and args["n_neg"] == 64  # trained so: not the defaults
    assert args["max_steps"] != TINY["max_steps"] and args["epochs"] != TINY["epochs"]
    assert args["lr"] == 0.01  # an explicit flag wins over the file

    # the collapse rule: with a bound below every run's cosine all are rejected and the
    # defaults are kept (the runs resume, nothing is trained again)
    res = tune(seq_dir, tmp_path, variant="mind", grid=grid, common=TINY, max_cosine=-1.0)
    assert all(t["rejected"] for t in res["trials"]) and res["chosen"] == {}
    assert res["chosen_rejected"]


@pytest.mark.spark
def test_a_stop_signal_stops_the_search_not_only_the_current_run(seq_dir, tmp_path):
    """SIGTERM during the first trial: that run writes last.pt and stops, and the tuner
    exits 143 without starting the next trial or writing a settings file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = [f"--set={k}={v}" for k, v in {**TINY, "tower_hidden": 16}.items()
            if k not in ("epochs", "max_steps")]
    cmd = [sys.executable, "-m", "experiments.tune", "--data", str(seq_dir), "--out",
           str(tmp_path / "out"), "--grid", '{"n_interests": [2]}', "--set=epochs=1000",
           "--set=max_steps=100000", *sets]
    log_path = tmp_path / "tune.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while " step " not in log_path.read_text():  # training: the handler is installed
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "no training step within 300 s"
                time.sleep(0.5)
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=300) == 143, log_path.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "training stopped by a signal" in text
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert runs == ["defaults"] and (tmp_path / "out" / "runs" / "defaults" / "last.pt").is_file()
    assert not (tmp_path / "out" / "settings.json").exists()


def test_daily_plan_takes_the_settings_file(tmp_path):
    from orchestration.config import PipelineConfig
    from orchestration.steps import plan_training

    seq = tmp_path / "sequences" / f"ds={DS}"
    seq.mkdir(parents=True)
    (seq / "stats.json").write_text(json.dumps({"ds": DS}))
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"chosen": {"routing_sigma": 0.3}}))
    plain = plan_training(PipelineConfig(data_root=tmp_path), DS)
    tuned = plan_training(PipelineConfig(data_root=tmp_path, train_settings=settings), DS)
    assert "--settings" not in plain["flags"]
    assert tuned["flags"][tuned["flags"].index("--settings") + 1] == str(settings)
    assert tuned["fingerprint"] != plain["fingerprint"]
    settings.write_text(json.dumps({"chosen": {"routing_sigma": 0.5}}))  # new settings: new run
    assert plan_training(PipelineConfig(data_root=tmp_path, train_settings=settings),
                         DS)["fingerprint"] != tuned["fingerprint"]
    settings.write_text(json.dumps({"nope": 1}))
    with pytest.raises(ValueError, match="not a settings file"):
        plan_training(PipelineConfig(data_root=tmp_path, train_settings=settings), DS)


def test_shipped_review_data_settings_train_as_written():
    """The settings file shipped for review-like data is one training reads: every key a
    TrainConfig field, applied by --settings, giving a run with cosine scores on."""
    from mind_model.train import TrainConfig, load_settings, parse_args

    path = Path(__file__).resolve().parents[1] / "experiments" / "settings" / "review_data.json"
    assert load_settings(path) == {"cosine_temperature": 0.1, "hist_dropout": 0.2}
    cfg = TrainConfig(**parse_args(["--data-dir", "d", "--out-dir", "o", "--settings", str(path)]))
    assert (cfg.cosine_temperature, cfg.hist_dropout) == (0.1, 0.2)
    assert cfg.cosine_scores and cfg.softmax_scale == cfg.logit_scale / 0.1


def test_shipped_movielens_settings_carry_the_fixed_recipe():
    """The MovieLens file holds the tuner's choice and the values every trial shared: a run
    from it has the window, K = 3 and cosine scores, not the defaults plus the choice."""
    from mind_model.train import TrainConfig, load_settings, parse_args

    path = Path(__file__).resolve().parents[1] / "experiments" / "settings" / "movielens.json"
    assert load_settings(path) == {"cosine_temperature": 0.1, "hist_dropout": 0.2,
                                   "history_window": 20, "n_interests": 3}
    cfg = TrainConfig(**parse_args(["--data-dir", "d", "--out-dir", "o", "--settings", str(path)]))
    assert (cfg.history_window, cfg.n_interests, cfg.cosine_temperature) == (20, 3, 0.1)
