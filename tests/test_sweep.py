"""sweep: two tiny σ runs on a small prep output -> JSON and a PNG line plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.sweep import parse_values
from tests.conftest import build_generated_sequences

DS = "2026-11-28"


@pytest.fixture(scope="module")
def seq_dir(spark, tmp_path_factory) -> Path:
    return build_generated_sequences(spark, tmp_path_factory.mktemp("sweep_data"), ds=DS,
                                     days=1, n_events=8_000, seed=5, min_row_groups=1)


def test_parse_values():
    assert parse_values("0.1,1,5") == [0.1, 1, 5]
    assert parse_values("0, 2 ,inf") == [0, 2, math.inf]
    assert parse_values("log_uniform,popularity") == ["log_uniform", "popularity"]


@pytest.mark.spark
def test_sigma_sweep_writes_json_and_plot(seq_dir, tmp_path):
    from experiments.sweep import main

    out = tmp_path / "sw"
    assert main(["--data", str(seq_dir), "--out", str(out), "--param", "sigma",
                 "--values", "0.1,5", "--epochs", "1", "--max-steps", "15",
                 "--set", "embed_dim=16", "--set", "tower_hidden=32", "--set", "n_neg=64",
                 "--set", "batch_size=64", "--set", "threads=1", "--set", "eval_users=200",
                 "--set", "reader_workers=1", "--set", "shuffle_buffer=1024"]) == 0
    js = json.loads((out / "sweep_routing_sigma.json").read_text())
    assert js["param"] == "routing_sigma" and js["values"] == ["0.1", "5"]
    assert [p["value"] for p in js["points"]] == [0.1, 5]
    for p in js["points"]:
        assert 0.0 <= p["hr@10"] <= p["hr@50"] <= p["hr@100"] <= 1.0
    # each run really used its value
    for v in ("0.1", "5"):
        cfg = json.loads((out / "runs" / f"routing_sigma={v}" / "metrics.json")
                         .read_text())["config"]
        assert cfg["routing_sigma"] == float(v) and cfg["max_steps"] == 15
    assert (out / "sweep_routing_sigma.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
