"""Settings chosen on the valid users, automatically: a small grid searched one setting at a
time, with the rule that rejects collapsed interests.

    python -m experiments.tune --data SEQ_DIR --out OUT [--variant mind] [--epochs 30]
        [--grid '{"routing_sigma": [0.3, 1.0]}'] [--set embed_dim=32] [--nproc 2]

Search (coordinate-wise, `GRID` below unless --grid): start from the defaults (and --set);
for each setting in turn, train one run per candidate value with every other setting at
its best so far, keep the value with the best valid HR@50, move on. Each run is a normal
`mind_model.train` run with the same budget (at most --epochs, early stopping on valid
HR@50 with the run's patience) and seed; its score is its best epoch's valid HR@50 over
the same fixed sample of valid users. Test users are never scored.

The collapse rule: a MIND run whose interests are nearly one vector (mean pairwise cosine
between a user's active interests, over valid users with K'_u >= 2, above
--max-interest-cosine, default 0.9) is rejected whatever its HR: it is a MIND-1 with noise,
the failure docs/MODEL.md warns about, and valid HR alone would pick it (Amazon Beauty:
sigma = 0.1 scored best on valid with cosine 0.96).

Writes OUT/settings.json: {"chosen": {field: value}, "fixed": {field: value} (the --set
values of the recipe, e.g. cosine_temperature; not the budget), "variant", "valid_hr@50",
"trials": [{"params", "valid_hr@50", "best_epoch", "interest_cosine", "rejected"}...],
"grid", "rule", "data", "budget", "common"} (and settings.md). `mind_model.train --settings
OUT/settings.json` trains with the fixed and the chosen values, and the daily DAG takes
them from MIND_TRAIN_SETTINGS (`mind_model.train.load_settings` reads it).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from artefacts.cli import run_main
from artefacts.storage import write_json, write_text
from experiments.overrides import parse_overrides

log = logging.getLogger(__name__)

SELECT = "valid_hr@50"
MAX_INTEREST_COSINE = 0.9
# Candidate values per setting, searched in this order (the first value of each list need
# not be the default: the default is always a candidate). Routing settings apply to the
# MIND variants only and are skipped for YouTube DNN.
GRID: dict[str, list[Any]] = {
    "lr": [3e-3, 1e-3],
    "embed_dim": [64, 128],
    "side_features": [True, False],
    # unit user / item vectors, softmax over cos / tau (0 = the paper's inner product) and
    # dropout on the behaviour embeddings: on Yelp (3 user splits, test HR@50) YouTube DNN
    # +0.009 with tau = 0.1, +0.022 with tau = 0.1 and dropout 0.2; MIND-K with both
    # +0.043 over its defaults on one split, level with a tuned ALS (README, Real data)
    "cosine_temperature": [0.0, 0.1],
    "hist_dropout": [0.0, 0.2],
    # interests from the last W behaviours only: MovieLens (users rate films in sessions)
    # valid HR@50 0.325 -> 0.383 for MIND-K with W = 20 (README, Real data)
    "history_window": [0, 20],
    "n_interests": [2, 4, 6],
    "routing_sigma": [0.3, 1.0],
    "routing_init_scale": [1.0, 4.0],
    "routing_iters": [3, 6],
    "pow_p": [math.inf, 1.0],
}
# The --set values that are the recipe (model and optimiser settings) go into the settings
# file next to the chosen ones; the budget and the machine's settings do not.
NOT_RECIPE = {"data_dir", "out_dir", "variant", "epochs", "steps_per_epoch", "max_steps", "seed",
              "eval_every_epoch", "eval_split", "eval_users", "patience", "min_samples",
              "test_at_end", "warm_start_from", "resume", "save_every_steps",
              "save_every_minutes", "log_every", "threads", "device", "reader_workers",
              "progress", "dist_timeout_min", "tracking"}
ROUTING_ONLY = {"n_interests", "routing_sigma", "routing_init_scale", "routing_iters", "pow_p"}


def _key(params: Mapping[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, default=str)


def run_trial(seq_dir: Path, out_dir: Path, variant: str, params: Mapping[str, Any],
              common: Mapping[str, Any], nproc: int, max_cosine: float) -> dict[str, Any]:
    """Train one setting, score it on the valid users: a trial record."""
    import torch

    from mind_model.checkpoint import load_model
    from mind_model.data import read_eval
    from mind_model.interpret import interest_report
    from mind_model.launch import run_training
    from mind_model.train import TrainConfig

    name = "-".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"
    kw = {"progress": False, "test_at_end": False, **common, **params,
          "data_dir": str(seq_dir), "out_dir": str(out_dir / "runs" / name), "variant": variant,
          "eval_split": "valid"}
    t0 = time.perf_counter()
    result = run_training(TrainConfig(**kw), nproc)
    best = result.get("best_valid") or {}
    trial: dict[str, Any] = {"params": dict(params), SELECT: best.get(SELECT),
                             "best_epoch": best.get("epoch"),
                             "epochs_run": len(result.get("history") or []),
                             "train_s": round(time.perf_counter() - t0, 1),
                             "interest_cosine": None, "rejected": None}
    if variant != "youtube":
        model = load_model(result["best"])
        with torch.no_grad():
            rep = interest_report(model, read_eval(seq_dir, "valid"))
        cos, sharp = rep.get("diversity"), rep.get("routing_sharpness")
        trial["interest_cosine"] = None if cos is None or math.isnan(cos) else float(cos)
        trial["routing_sharpness"] = None if sharp is None or math.isnan(sharp) else float(sharp)
        if trial["interest_cosine"] is not None and trial["interest_cosine"] > max_cosine:
            trial["rejected"] = (f"interests collapsed: mean pairwise cosine "
                                 f"{trial['interest_cosine']:.3f} > {max_cosine}")
    log.info("tune %s: %s valid HR@50 %s (best epoch %s, cosine %s)%s", variant, name,
             trial[SELECT], trial["best_epoch"], trial["interest_cosine"],
             f" REJECTED: {trial['rejected']}" if trial["rejected"] else "")
    return trial


def tune(seq_dir: Path | str, out_dir: Path | str, *, variant: str = "mind",
         grid: Mapping[str, Sequence[Any]] | None = None,
         common: Mapping[str, Any] | None = None, nproc: int = 1,
         max_cosine: float = MAX_INTEREST_COSINE) -> dict[str, Any]:
    """Coordinate-wise search of `grid` on the valid users; writes and returns settings.json."""
    from mind_model.train import TrainConfig

    seq_dir, out_dir = Path(seq_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # lists (from JSON) become tuples: values are compared and used as keys
    grid = {k: [tuple(v) if isinstance(v, list) else v for v in vs]
            for k, vs in (GRID if grid is None else grid).items()}
    common = dict(common or {})
    if variant == "youtube":
        grid = {k: v for k, v in grid.items() if k not in ROUTING_ONLY}
    if variant == "mind1":
        grid.pop("n_interests", None)
    defaults = TrainConfig(data_dir=".", out_dir=".", **common)
    best: dict[str, Any] = {}
    trials: dict[str, dict[str, Any]] = {}

    def score(params: Mapping[str, Any]) -> float:
        key = _key(params)
        if key not in trials:  # the same setting is never trained twice
            trials[key] = run_trial(seq_dir, out_dir, variant, params, common, nproc, max_cosine)
        t = trials[key]
        return -1.0 if t["rejected"] or t[SELECT] is None else t[SELECT]

    current = score(best)
    for field, values in grid.items():
        candidates = list(dict.fromkeys([getattr(defaults, field), *values]))
        scored = []
        for v in candidates:
            params = {**best, field: v}
            if v == getattr(defaults, field):
                params.pop(field)  # the default is the setting left unset
            scored.append((score(params), params))
        top, params = max(scored, key=lambda sp: sp[0])  # ties: the earlier (default) value
        if top > current:
            best, current = params, top
    if current < 0:  # every run rejected (or none scored): keep the defaults, say so
        log.warning("tune: no setting passed the collapse rule; keeping the defaults")
    chosen_trial = trials[_key(best)]
    result = {"variant": variant, "chosen": best, SELECT: chosen_trial[SELECT],
              "chosen_rejected": chosen_trial["rejected"],
              "trials": list(trials.values()), "grid": grid, "data": str(seq_dir),
              "budget": {k: getattr(defaults, k) for k in (
                  "epochs", "patience", "min_samples", "max_steps", "seed", "eval_users")},
              "common": common,
              # what every trial was trained with (--set): training with the file repeats
              # the chosen trial's recipe, not the defaults with the chosen values
              "fixed": {k: v for k, v in common.items() if k not in NOT_RECIPE},
              "rule": f"best valid HR@50 among runs whose interests are not collapsed (mean "
                      f"pairwise cosine <= {max_cosine})"}
    write_json(out_dir / "settings.json", result, sort_keys=False)
    write_text(out_dir / "settings.md", markdown(result))
    return result


def markdown(result: Mapping[str, Any]) -> str:
    lines = [f"# Settings chosen on the valid users ({result['variant']}, {result['data']})", "",
             f"Chosen: `{json.dumps(result['chosen'], default=str)}` (valid HR@50 "
             f"{result[SELECT]}); rule: {result['rule']}."
             + (" No setting passed the rule: the defaults are kept."
                if result["chosen_rejected"] else ""), "",
             "| settings (changed from the defaults) | valid HR@50 | best epoch | interests' "
             "mean cosine | rejected |", "|---|---:|---:|---:|---|"]
    for t in result["trials"]:
        cos = t["interest_cosine"]
        lines.append(f"| `{json.dumps(t['params'], default=str)}` | "
                     f"{t[SELECT] if t[SELECT] is None else format(t[SELECT], '.4f')} | "
                     f"{t['best_epoch']} | {'' if cos is None else format(cos, '.3f')} | "
                     f"{t['rejected'] or ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.tune",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="sequences/ds=<ds> folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variant", default="mind", choices=("mind", "mind1", "youtube"))
    p.add_argument("--grid", default=None, help=f"JSON {{field: [values]}}; default {GRID}")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=V",
                   help="TrainConfig values for every run (the budget: epochs=, patience=)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--max-interest-cosine", type=float, default=MAX_INTEREST_COSINE)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common, per = parse_overrides(a.sets)
    common.update(per.get(a.variant, {}))
    grid = None
    if a.grid:
        grid = {k: [math.inf if v == "inf" else v for v in vs]
                for k, vs in json.loads(a.grid).items()}
    try:
        res = tune(a.data, a.out, variant=a.variant, grid=grid, common=common, nproc=a.nproc,
                   max_cosine=a.max_interest_cosine)
    except (FileNotFoundError, ValueError) as e:
        print(f"tune: {e}", file=sys.stderr)
        return 2
    print(markdown(res))
    print(f"wrote {a.out / 'settings.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
