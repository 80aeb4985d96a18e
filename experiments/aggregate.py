"""Several `compare` runs summarised as one table: mean HRs and the mean paired
difference from YouTube DNN (or `--reference`) with its standard error across the runs.

    python -m experiments.aggregate RUN_DIR [RUN_DIR ...] [--out DIR] [--metric hr@50]
        [--reference youtube]

One compare run on ~1,000 held-out users cannot separate models whose HR@50 differs
by less than ~0.01: both the training seed and the draw of test users move it that
much. Repeat compare with several seeds and, better, several user splits (build the
sequences again with another `--seed`: a different 19:1 split and other targets), then
aggregate. Runs on the same test set are averaged first and the SE is the spread of
the test sets' differences, sd / sqrt(T), which holds both sources of noise; with one
test set the runs are the units and the SE measures the training seed alone (the report
says which).

`aggregate(runs)` is the pure core (list of compare.json dicts -> summary dict);
`markdown(summary)` renders it. With --out, summary.json and summary.md are written
there (each aside, then renamed into place).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from artefacts.cli import run_main
from artefacts.storage import write_json, write_text
from experiments import track
from experiments.compare import BASELINE_ORDER, METHOD_NAMES, REFERENCE, VARIANT_ORDER
from experiments.stats import mean_se
from mind_model.metrics import HR_NS

METRICS = tuple(f"hr@{n}" for n in HR_NS)
BREAKDOWNS = {"k_active": "By K'_u (history length)",
              "target": "By target item (rare or new vs frequent)"}


def _test_set(run: Mapping[str, Any]) -> tuple[str, str]:
    return str(run["settings"].get("data")), str(run["settings"].get("split"))


def aggregate(runs: Sequence[Mapping[str, Any]], metric: str = "hr@50",
              reference: str = REFERENCE) -> dict[str, Any]:
    """Summary of compare.json dicts. A run without the reference method is an error
    (its differences are undefined). A method missing from some runs (e.g. baselines
    scored in one seed only) is summarised over the runs that have it.

    Runs on the same test set (seeds of one split) are averaged first and the SE is
    taken across test sets: the test users of one set are one draw, however many seeds
    were trained on it. With a single test set the runs themselves are the units."""
    if not runs:
        raise ValueError("no compare runs to aggregate")
    for i, run in enumerate(runs):
        if reference not in run.get("methods", {}):
            raise ValueError(f"run {i} ({run.get('settings', {}).get('data')}) has no "
                             f"{reference!r} method to compare against")
    order = {m: i for i, m in enumerate((*BASELINE_ORDER, *VARIANT_ORDER))}  # compare's table order
    names = sorted(dict.fromkeys(m for r in runs for m in r["methods"]),
                   key=lambda m: order.get(m, len(order)))
    test_sets = sorted({_test_set(r) for r in runs})
    by_set = len(test_sets) > 1  # unit = test set, its value = mean over its runs

    methods: dict[str, dict[str, Any]] = {}
    for m in names:
        have = [r for r in runs if m in r["methods"]]
        groups = _units(have, test_sets, by_set)

        def per_unit(value) -> list[float]:
            return [sum(value(r) for r in g) / len(g) for g in groups]

        row: dict[str, Any] = {"n_runs": len(have),
                               "units": per_unit(lambda r: float(r["methods"][m][metric]))}
        for k in METRICS:
            row[f"mean_{k}"] = mean_se(per_unit(lambda r: float(r["methods"][m][k])))[0]
        diffs = per_unit(lambda r: float(r["methods"][m][metric])
                         - float(r["methods"][reference][metric]))
        row["mean_diff"], row["diff_se"] = mean_se(diffs)
        row["diffs"] = diffs
        row["units_at_least_reference"] = sum(d >= 0 for d in diffs)
        methods[m] = row
    n_units = len(test_sets) if by_set else len(runs)
    return {"metric": metric, "reference": reference, "n_runs": len(runs),
            "unit": "test set" if by_set else "run", "n_units": n_units,
            "test_sets": [{"data": d, "split": s} for d, s in test_sets],
            "users": [int(r["methods"][reference].get("users", 0)) for r in runs],
            "methods": methods,
            "breakdown": {key: aggregate_breakdown(runs, key, names, metric, reference,
                                                   test_sets, by_set)
                          for key in BREAKDOWNS
                          if any(key in r.get("breakdown", {}) for r in runs)}}


def _units(runs: Sequence[Mapping[str, Any]], test_sets: Sequence[tuple[str, str]],
           by_set: bool) -> list[list[Mapping[str, Any]]]:
    """The runs grouped into units: one group per test set, or one per run."""
    groups = ([[r for r in runs if _test_set(r) == ts] for ts in test_sets] if by_set
              else [[r] for r in runs])
    return [g for g in groups if g]


def aggregate_breakdown(runs: Sequence[Mapping[str, Any]], key: str, names: Sequence[str],
                        metric: str, reference: str, test_sets: Sequence[tuple[str, str]],
                        by_set: bool) -> dict[str, Any]:
    """compare's breakdown `key` (k_active, target) over the runs: per group and method the
    mean metric and the mean paired difference from the reference with its SE across
    units, computed like the overall table."""
    labels = list(dict.fromkeys(g for r in runs for g in r.get("breakdown", {}).get(key, {})))
    out: dict[str, Any] = {}
    for label in labels:
        def cell(r, m):
            return r.get("breakdown", {}).get(key, {}).get(label, {}).get("methods", {}).get(m)

        rows = {}
        for m in names:
            have = [r for r in runs if cell(r, m) is not None and cell(r, reference) is not None]
            if not have:
                continue
            units = _units(have, test_sets, by_set)
            values = [sum(cell(r, m)[metric] for r in g) / len(g) for g in units]
            diffs = [sum(cell(r, m)[metric] - cell(r, reference)[metric] for r in g) / len(g)
                     for g in units]
            mean_diff, se = mean_se(diffs)
            rows[m] = {f"mean_{metric}": mean_se(values)[0], "mean_diff": mean_diff,
                       "diff_se": se, "n_units": len(units)}
        users = sum(r["breakdown"][key][label]["users"] for r in runs
                    if label in r.get("breakdown", {}).get(key, {}))
        out[label] = {"users": users, "methods": rows}
    return out


def breakdown_markdown(table: Mapping[str, Any], title: str, metric: str, reference: str) -> str:
    """Rows = methods, columns = groups: mean metric (mean difference ± SE)."""
    labels = list(table)
    names = list(dict.fromkeys(m for g in labels for m in table[g]["methods"]))
    ref_name = METHOD_NAMES.get(reference, reference)
    lines = [f"{title}: mean {metric.upper()} (mean − {ref_name} ± SE across units)", "",
             "| Method | " + " | ".join(f"{g} ({table[g]['users']} user evaluations)"
                                        for g in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for m in names:
        cells = []
        for g in labels:
            row = table[g]["methods"].get(m)
            if row is None:
                cells.append("")
                continue
            cell = f"{row[f'mean_{metric}']:.4f}"
            if m != reference:
                se = "" if math.isnan(row["diff_se"]) else f" ± {row['diff_se']:.4f}"
                cell += f" ({row['mean_diff']:+.4f}{se})"
            cells.append(cell)
        lines.append(f"| {METHOD_NAMES.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: Mapping[str, Any]) -> str:
    metric, ref = summary["metric"], summary["reference"]
    ref_name = METHOD_NAMES.get(ref, ref)
    n, units, unit = summary["n_runs"], summary["n_units"], summary["unit"]
    head = (f"{n} compare runs on {len(summary['test_sets'])} distinct test set(s), "
            f"{sum(summary['users'])} user evaluations in all. ")
    if unit == "test set":
        head += (f"Runs on one test set are averaged first; SE = sd of the {units} test sets' "
                 f"differences / sqrt({units}).")
    else:
        head += f"SE = sd of the per-run differences / sqrt({units})"
        head += ("; all runs share one test set, so it measures the training seed only, not "
                 "the luck of the test users." if n > 1 else ".")
    lines = [head, "",
             f"| Method | {metric}, per {unit} | "
             + " | ".join(f"mean {k.upper()}" for k in METRICS)
             + f" | mean {metric.upper()} − {ref_name} (SE) | {unit}s ≥ {ref_name} |",
             "|---|---:|" + "---:|" * len(METRICS) + "---:|---:|"]
    for m, row in summary["methods"].items():
        per_unit = " / ".join(f"{v:.3f}" for v in row["units"])
        diff = "—" if m == ref else (f"{row['mean_diff']:+.4f} ({row['diff_se']:.4f})"
                                     if not math.isnan(row["diff_se"])
                                     else f"{row['mean_diff']:+.4f}")
        wins = "—" if m == ref else f"{row['units_at_least_reference']}/{len(row['diffs'])}"
        name = METHOD_NAMES.get(m, m) + ("" if row["n_runs"] == n
                                         else f" ({row['n_runs']} of {n} runs)")
        lines.append(f"| {name} | {per_unit} | "
                     + " | ".join(f"{row[f'mean_{k}']:.4f}" for k in METRICS)
                     + f" | {diff} | {wins} |")
    for key, table in summary.get("breakdown", {}).items():
        lines += ["", breakdown_markdown(table, BREAKDOWNS[key], metric, ref)]
    return "\n".join(lines) + "\n"


def load_run(path: Path) -> dict[str, Any]:
    """compare.json of a compare output folder (or the file itself)."""
    f = path / "compare.json" if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no compare.json (is {path} a finished compare output?)")
    return json.loads(f.read_text())


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="compare output folders (or compare.json files)")
    p.add_argument("--out", type=Path, default=None, help="write summary.json and summary.md here")
    p.add_argument("--metric", default="hr@50", choices=METRICS)
    p.add_argument("--reference", default=REFERENCE, choices=sorted(METHOD_NAMES),
                   help="the method the differences are taken from "
                        "(e.g. mind1 for MIND-K vs MIND-1)")
    args = p.parse_args(argv)
    try:
        runs = [load_run(r) for r in args.runs]
        summary = aggregate(runs, metric=args.metric, reference=args.reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"aggregate: {e}", file=sys.stderr)
        return 2
    summary["run_dirs"] = [str(r) for r in args.runs]
    with track.start_parent("aggregate", f"aggregate of {len(runs)} compare runs",
                            runs[0]["settings"].get("data") or args.runs[0],
                            {"metric": args.metric, "reference": args.reference,
                             "n_runs": len(runs), "unit": summary["unit"],
                             "run_dirs": ",".join(summary["run_dirs"])}) as parent:
        parent.set_tags({"mind.compare_runs": ",".join(
            (r.get("mlflow") or {}).get("run_id") or "-" for r in runs)})
        children: dict = {}
        track.log_rows(parent, {m: {k: v for k, v in row.items() if k not in ("units", "diffs")}
                                for m, row in summary["methods"].items()},
                       children, METHOD_NAMES)
        summary["mlflow"] = track.describe(parent, children)
        text = markdown(summary)
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "summary.json", summary, sort_keys=False)
            write_text(args.out / "summary.md", text)
            track.log_files(parent, [args.out / "summary.json", args.out / "summary.md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
