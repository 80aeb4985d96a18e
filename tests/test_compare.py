"""compare: a tiny end-to-end run (three variants, three baselines, heat map, interest
report with the planted clusters) on a small prep output built here; the table's
relative-improvement column checked against the HR values."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from experiments.compare import METHOD_NAMES, add_relative, markdown_table
from experiments.overrides import parse_overrides
from experiments.stats import hr_se, paired_difference, relative

DS = "2026-11-28"
TINY = dict(embed_dim=16, tower_hidden=(32,), profile_dim=4, n_neg=128, batch_size=64, lr=3e-3,
            threads=1, reader_workers=1, shuffle_buffer=1024, eval_users=300, log_every=10)


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory) -> tuple[Path, Path]:
    from ingest.sample_data import MULTI_INTEREST, generate
    from jobs.build_sequences import PrepConfig, run

    root = tmp_path_factory.mktemp("compare_data")
    generate(root / "raw", end_ds=DS, days=2, n_events=12_000, seed=3, **MULTI_INTEREST)
    run(PrepConfig(data_root=root, ds=DS, lookback_days=2, min_row_groups=2), spark)
    return root / "sequences" / f"ds={DS}", root / "raw" / "truth"


def _table_rows(md: str) -> dict[str, list[str]]:
    """First table of compare.md: method -> its cells."""
    rows, in_table = {}, False
    for line in md.splitlines():
        if line.startswith("| Method | HR@10"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not cells[0].startswith("---"):
                rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.spark
def test_compare_end_to_end(data, tmp_path):
    from experiments.compare import compare

    seq_dir, truth = data
    res = compare(seq_dir, tmp_path / "cmp", epochs=2, max_steps=30, seed=1, overrides=TINY,
                  variant_overrides={"mind": {"n_interests": 3}}, truth_dir=truth,
                  heatmap_users=2, baseline_grids={"itemcf": {"window": (1, 3)}})
    out = tmp_path / "cmp"
    for name in ("compare.json", "compare.md", "coupling_heatmap.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "coupling_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    js = json.loads((out / "compare.json").read_text())
    methods = js["methods"]
    assert list(methods) == ["popularity", "itemcf", "als", "youtube", "mind1", "mind"]
    # same data, budget and seed for the three variants; only the variant (and K) differ
    tcs = js["settings"]["train_configs"]
    for v in ("mind1", "mind"):
        diff = {k for k in tcs[v] if tcs[v][k] != tcs["youtube"][k]}
        assert diff <= {"variant", "out_dir", "n_interests"}, diff
    assert tcs["mind"]["n_interests"] == 3 and tcs["mind"]["seed"] == 1
    assert all(tc["max_steps"] == 30 for tc in tcs.values())

    ref = methods["youtube"]["hr@50"]
    rows = _table_rows((out / "compare.md").read_text())
    assert set(rows) == {METHOD_NAMES[m] for m in methods}
    for key, row in methods.items():
        for n in (10, 50, 100):
            assert 0.0 <= row[f"hr@{n}"] <= 1.0
        assert row["hr@10"] <= row["hr@50"] <= row["hr@100"]
        assert math.isclose(row["hr@50_se"], hr_se(row["hr@50"], row["users"]))
        assert set(row["comirec"]) >= {"recall@20", "recall@50", "hr@20", "hr@50"}
        cells = rows[METHOD_NAMES[key]]
        assert float(cells[1]) == pytest.approx(row["hr@50"], abs=1e-4)
        if ref > 0:
            expected = (row["hr@50"] - ref) / ref
            assert row["rel_hr@50"] == pytest.approx(expected)
            shown = float(re.fullmatch(r"([+-][\d.]+)%", cells[4])[1])
            assert shown == pytest.approx(expected * 100, abs=0.051)
    assert methods["youtube"]["rel_hr@50"] == 0.0
    for key, row in methods.items():  # paired difference: same users, so the HRs subtract
        assert row["diff_hr@50"] == pytest.approx(row["hr@50"] - ref, abs=1e-6)
    assert methods["youtube"]["diff_hr@50_se"] == 0.0

    # item-CF was tuned on the VALID users: the chosen window is the grid's best there
    tuning = methods["itemcf"]["tuning"]
    assert [t["params"] for t in tuning] == [{"window": 1}, {"window": 3}]
    best = max(tuning, key=lambda t: t["hr@50"])
    assert methods["itemcf"]["params"] == best["params"]
    from experiments.baseline_grid import tune
    from mind_model.data import load_meta, read_eval, read_train
    meta = load_meta(seq_dir)
    again, _ = tune("itemcf", read_train(seq_dir), read_eval(seq_dir, "valid"), meta.n_items,
                    meta.active_items, {"window": (1, 3)})
    assert again == best["params"]
    assert "als" not in methods or "tuning" not in methods["als"]  # no grid given for ALS
    # the breakdowns cover every held-out user once, for every method
    for key in ("k_active", "target"):
        groups = js["breakdown"][key]
        assert sum(g["users"] for g in groups.values()) == methods["youtube"]["users"]
        assert all(set(g["methods"]) == set(methods) for g in groups.values())
        for m, row in methods.items():  # the groups' HRs, weighted by users, are the HR
            weighted = sum(g["users"] * g["methods"][m]["hr@50"] for g in groups.values())
            assert weighted / row["users"] == pytest.approx(row["hr@50"])
    assert "By the user's number of interests" in res["markdown"]

    rep = js["interests"]
    assert 0 < rep["k_active_mean"] <= 3
    assert -1.0 <= rep["diversity"] <= 1.0
    assert 0.0 <= rep["routing_sharpness"] <= 1.0
    recovery = rep["recovery"]["retrieval"]
    assert recovery["users"] > 0 and 0.0 <= recovery["coverage"] <= recovery["coverage_ceiling"]
    assert len(rep["heatmap_users"]) == 2
    assert "MIND-K" in res["markdown"] and "cluster recovery" in res["markdown"]


def test_relative_improvement_and_table():
    methods = {"popularity": {"hr@10": 0.01, "hr@50": 0.05, "hr@100": 0.08, "hr@50_se": 0.01},
               "youtube": {"hr@10": 0.1, "hr@50": 0.2, "hr@100": 0.3, "hr@50_se": 0.01},
               "mind": {"hr@10": 0.12, "hr@50": 0.25, "hr@100": 0.33, "hr@50_se": 0.01}}
    add_relative(methods)
    assert methods["mind"]["rel_hr@50"] == pytest.approx(0.25)
    assert methods["popularity"]["rel_hr@50"] == pytest.approx(-0.75)
    assert methods["mind"]["rel_hr@10"] == pytest.approx(0.2)
    rows = _table_rows(markdown_table(methods))
    assert rows["MIND-K"][4] == "+25.0%" and rows["Popularity"][4] == "-75.0%"
    assert rows["YouTube DNN"][4] == "+0.0%"
    assert math.isnan(relative(0.1, 0.0))


def test_parse_overrides():
    common, per = parse_overrides(["embed_dim=32", "mind.n_interests=3", "tower_hidden=256,128",
                                   "pow_p=inf", "sampler=popularity", "youtube.lr=0.002",
                                   "mind1.tower_hidden=64"])
    assert common == {"embed_dim": 32, "tower_hidden": (256, 128), "pow_p": math.inf,
                      "sampler": "popularity"}
    assert per == {"mind": {"n_interests": 3}, "youtube": {"lr": 0.002},
                   "mind1": {"tower_hidden": (64,)}}
    with pytest.raises(ValueError):
        parse_overrides(["nope=1"])
    with pytest.raises(ValueError):
        parse_overrides(["other.embed_dim=1"])


def test_paired_difference_against_hand_computed_values():
    # 5 users: a hits users 0,1,2; b hits users 0,3. Differences (0, 1, 1, -1, 0):
    # mean 0.2, sample variance (0.04 + 0.64 + 0.64 + 1.44 + 0.04) / 4 = 0.7
    a = np.array([1, 1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 0, 1, 0], dtype=bool)
    diff, se = paired_difference(a, b)
    assert diff == pytest.approx(0.2)
    assert se == pytest.approx(math.sqrt(0.7 / 5))
    assert paired_difference(a, a) == (0.0, 0.0)


def test_baseline_grid_flags_a_best_point_on_the_edge():
    from experiments.baseline_grid import at_edge
    evidence = [{"params": {"window": w, "recent": r, "mode": m}, "hr@50": 0.0}
                for w in (1, 5, 20) for r in (3, 10) for m in ("a", "b")]
    assert at_edge(evidence, {"window": 20, "recent": 10, "mode": "a"}) == {"window": 20,
                                                                            "recent": 10}
    assert at_edge(evidence, {"window": 5, "recent": 3, "mode": "b"}) == {"recent": 3}
    # one value tried is no axis; strings have no edge
    assert at_edge([{"params": {"window": 5}, "hr@50": 0.1}], {"window": 5}) == {}
