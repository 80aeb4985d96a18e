"""aggregate: several compare runs -> mean HRs and the mean paired difference from
YouTube DNN with its SE across runs, checked against hand-computed values."""
from __future__ import annotations

import json
import math

import pytest

from experiments.aggregate import aggregate, main, markdown
from experiments.stats import mean_se


def _run(data: str, hr: dict[str, float]) -> dict:
    """A compare.json with the fields aggregate reads: HR@10/50/100 = hr, hr/2, 2*hr...
    per method."""
    return {"settings": {"data": data, "split": "test"},
            "methods": {m: {"hr@10": v / 2, "hr@50": v, "hr@100": 2 * v, "users": 100}
                        for m, v in hr.items()}}


RUNS = [_run("a", {"youtube": 0.20, "mind1": 0.22, "mind": 0.25}),
        _run("b", {"youtube": 0.30, "mind1": 0.29, "mind": 0.31}),
        _run("c", {"youtube": 0.10, "mind1": 0.13, "mind": 0.13, "popularity": 0.05})]


def test_mean_se_by_hand():
    # values 1, 2, 6: mean 3, sample var ((4 + 1 + 9) / 2) = 7, SE = sqrt(7 / 3)
    mean, se = mean_se([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0) and se == pytest.approx(math.sqrt(7 / 3))
    assert math.isnan(mean_se([0.5])[1]) and math.isnan(mean_se([])[0])


def test_aggregate_by_hand():
    s = aggregate(RUNS)
    assert s["n_runs"] == 3 and len(s["test_sets"]) == 3 and s["users"] == [100, 100, 100]
    assert list(s["methods"]) == ["popularity", "youtube", "mind1", "mind"]  # compare's order
    pop = s["methods"]["popularity"]  # only in run c: summarised over that run
    assert (pop["n_runs"] == 1 and pop["diffs"] == pytest.approx([-0.05])
            and math.isnan(pop["diff_se"]))
    mind = s["methods"]["mind"]
    # differences .05, .01, .03: mean .03, sample sd .02, SE .02 / sqrt(3)
    assert mind["diffs"] == pytest.approx([0.05, 0.01, 0.03])
    assert mind["mean_diff"] == pytest.approx(0.03)
    assert mind["diff_se"] == pytest.approx(0.02 / math.sqrt(3))
    assert mind["mean_hr@50"] == pytest.approx(0.23) and mind["mean_hr@100"] == pytest.approx(0.46)
    assert mind["units_at_least_reference"] == 3 and s["unit"] == "test set" and s["n_units"] == 3
    mind1 = s["methods"]["mind1"]  # .02, -.01, .03
    assert mind1["mean_diff"] == pytest.approx(0.04 / 3) and mind1["units_at_least_reference"] == 2
    assert s["methods"]["youtube"]["mean_diff"] == 0.0
    # another metric: HR@10 differences are half of HR@50's here
    assert aggregate(RUNS, metric="hr@10")["methods"]["mind"]["mean_diff"] == pytest.approx(0.015)


def test_markdown_rows_and_shared_split_warning():
    md = markdown(aggregate(RUNS))
    row = next(line for line in md.splitlines() if line.startswith("| MIND-K |"))
    assert "0.250 / 0.310 / 0.130" in row and "+0.0300 (0.0115)" in row and "3/3" in row
    assert "3 distinct test set(s)" in md and "training seed only" not in md
    assert "| Popularity (1 of 3 runs) | 0.050 |" in md
    same = [_run("a", {"youtube": 0.2, "mind": 0.21}), _run("a", {"youtube": 0.22, "mind": 0.2})]
    assert "training seed only" in markdown(aggregate(same))


def test_runs_on_one_test_set_are_averaged_before_the_se():
    # two seeds on set "a" (diffs .05 and .01 -> .03) and one on set "b" (diff -.01):
    # units .03 and -.01, mean .01, sample sd sqrt(2) * .02, SE .02
    runs = [_run("a", {"youtube": 0.20, "mind": 0.25}), _run("a", {"youtube": 0.30, "mind": 0.31}),
            _run("b", {"youtube": 0.30, "mind": 0.29})]
    s = aggregate(runs)
    assert s["unit"] == "test set" and s["n_units"] == 2 and s["n_runs"] == 3
    mind = s["methods"]["mind"]
    assert mind["diffs"] == pytest.approx([0.03, -0.01])
    assert mind["mean_diff"] == pytest.approx(0.01) and mind["diff_se"] == pytest.approx(0.02)
    assert mind["units"] == pytest.approx([0.28, 0.29])  # HR@50 of each set, its seeds averaged
    assert mind["mean_hr@50"] == pytest.approx(0.285)
    # one test set: the runs are the units (SE = training-seed noise only)
    one = aggregate(runs[:2])
    assert one["unit"] == "run" and one["methods"]["mind"]["diffs"] == pytest.approx([0.05, 0.01])


def test_missing_reference_is_an_error():
    with pytest.raises(ValueError, match="youtube"):
        aggregate([_run("a", {"mind": 0.2})])
    with pytest.raises(ValueError, match="no compare runs"):
        aggregate([])


def test_cli_writes_summary(tmp_path, capsys):
    dirs = []
    for i, run in enumerate(RUNS):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "compare.json").write_text(json.dumps(run))
        dirs.append(str(d))
    assert main([*dirs, "--out", str(tmp_path / "summary")]) == 0
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert summary["methods"]["mind"]["mean_diff"] == pytest.approx(0.03)
    assert summary["run_dirs"] == dirs
    assert "MIND-K" in (tmp_path / "summary" / "summary.md").read_text()
    # differences from MIND-1 instead: .03, .02, .00
    assert main([*dirs, "--reference", "mind1", "--out", str(tmp_path / "vs_mind1")]) == 0
    vs = json.loads((tmp_path / "vs_mind1" / "summary.json").read_text())
    assert (vs["reference"] == "mind1"
            and vs["methods"]["mind"]["mean_diff"] == pytest.approx(0.05 / 3))
    assert main([str(tmp_path / "nope")]) == 2
    assert "no compare.json" in capsys.readouterr().err


def _with_k_groups(run: dict, by_group: dict[str, dict[str, float]]) -> dict:
    """The run with compare's K'_u breakdown: {group: {method: HR@50}}, 10 users each."""
    run = json.loads(json.dumps(run))
    run["breakdown"] = {"k_active": {g: {"users": 10, "methods": {m: {"hr@50": v}
                                                                    for m, v in hr.items()}}
                                     for g, hr in by_group.items()}}
    return run


def test_breakdown_by_group_across_runs_by_hand():
    runs = [_with_k_groups(RUNS[0], {"1": {"youtube": 0.2, "mind": 0.2},
                                     "4+": {"youtube": 0.3, "mind": 0.5}}),
            _with_k_groups(RUNS[1], {"1": {"youtube": 0.4, "mind": 0.3},
                                     "4+": {"youtube": 0.2, "mind": 0.3}})]
    s = aggregate(runs)
    k = s["breakdown"]["k_active"]
    assert list(k) == ["1", "4+"] and k["4+"]["users"] == 20
    big = k["4+"]["methods"]["mind"]  # differences .2 and .1: mean .15, SE .05
    assert big["mean_hr@50"] == pytest.approx(0.4)
    assert big["mean_diff"] == pytest.approx(0.15) and big["diff_se"] == pytest.approx(0.05)
    assert k["1"]["methods"]["mind"]["mean_diff"] == pytest.approx(-0.05)
    assert "mind1" not in k["1"]["methods"]  # no breakdown of it in these runs
    md = markdown(s)
    assert "By K'_u" in md
    assert "| MIND-K | 0.2500 (-0.0500 ± 0.0500) | 0.4000 (+0.1500 ± 0.0500) |" in md
