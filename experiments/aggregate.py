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

from artefacts.storage import write_json, write_text
from experiments.compare import BASELINE_ORDER, METHOD_NAMES, REFERENCE, VARIANT_ORDER
from experiments.stats import mean_se
from mind_model.metrics import HR_NS

METRICS = tuple(f"hr@{n}" for n in HR_NS)


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
        groups = ([[r for r in have if _test_set(r) == ts] for ts in test_sets] if by_set
                  else [[r] for r in have])
        groups = [g for g in groups if g]

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
            "methods": methods}


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
    return "\n".join(lines) + "\n"


def load_run(path: Path) -> dict[str, Any]:
    """compare.json of a compare output folder (or the file itself)."""
    f = path / "compare.json" if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no compare.json (is {path} a finished compare output?)")
    return json.loads(f.read_text())


def main(argv: list[str] | None = None) -> int:
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
        summary = aggregate([load_run(r) for r in args.runs], metric=args.metric,
                            reference=args.reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"aggregate: {e}", file=sys.stderr)
        return 2
    summary["run_dirs"] = [str(r) for r in args.runs]
    text = markdown(summary)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "summary.json", summary, sort_keys=False)
        write_text(args.out / "summary.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
