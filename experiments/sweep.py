"""Hyper-parameter sweeps of MIND, like the paper's Figure 3 (σ of the routing logits'
initialisation, and p of label-aware attention).

    python -m experiments.sweep --data SEQ_DIR --out OUT --param sigma --values 0.1,1,5
    python -m experiments.sweep --data SEQ_DIR --out OUT --param pow_p --values 0,1,2,inf \
        [--epochs N] [--set embed_dim=32] [--split test]

`sweep(seq_dir, out_dir, param, values, ...)` trains one MIND-K run per value (same data,
budget and seed; every other TrainConfig field fixed) with `train.train`, scores each
best model on the held-out users of `split` (paper HR@{10,50,100}) and writes
out_dir/sweep_<param>.json and a line plot out_dir/sweep_<param>.png (HR@N against the
value; p = inf is drawn at the right end, labelled "inf"). Runs live in
out_dir/runs/<param>=<value>/ and resume when rerun.

`param` is a TrainConfig field; "sigma" and "p" are aliases of routing_sigma and pow_p.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from artefacts.cli import run_main
from artefacts.storage import atomic_path, write_json
from experiments import track
from experiments.overrides import parse_overrides
from experiments.stats import hr_se
from mind_model.metrics import HR_NS

log = logging.getLogger(__name__)

ALIASES = {"sigma": "routing_sigma", "p": "pow_p", "K": "n_interests", "k": "n_interests"}


def parse_values(text: str) -> list[float | int | str]:
    """"0.1,1,5" -> [0.1, 1, 5]; "inf" -> math.inf; non-numbers stay strings."""
    out: list[Any] = []
    for raw in (x.strip() for x in text.split(",") if x.strip()):
        if raw.lower() in ("inf", "infinity"):
            out.append(math.inf)
            continue
        try:
            v = float(raw)
            out.append(int(v) if v.is_integer() and "." not in raw and "e" not in raw.lower()
                       else v)
        except ValueError:
            out.append(raw)
    return out


def _label(v: Any) -> str:
    return "inf" if isinstance(v, float) and math.isinf(v) else str(v)


def plot(points: Sequence[Mapping[str, Any]], param: str, path: Path, title: str = "") -> None:
    """HR@N against the swept value; numeric axes when every value is finite and
    positive (log scale if they span > 20x), else evenly spaced categories."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vals = [p["value"] for p in points]
    numeric = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in vals)
    xs = vals if numeric else list(range(len(vals)))
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for n in HR_NS:
        ax.plot(xs, [p[f"hr@{n}"] for p in points], marker="o", label=f"HR@{n}")
    if numeric and max(vals) / min(vals) > 20:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [_label(v) for v in vals])
    ax.set_xlabel(param)
    ax.set_ylabel("hit rate")
    ax.set_title(title or f"MIND: HR@N vs {param}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def sweep(seq_dir: Path | str, out_dir: Path | str, param: str, values: Sequence[Any], *,
          epochs: int = 30, max_steps: int | None = None, seed: int = 0,
          overrides: Mapping[str, Any] | None = None, variant: str = "mind", nproc: int = 1,
          split: str = "test", device: str = "cpu") -> dict[str, Any]:
    """One training run per value of `param`; returns (and writes) the HR@N of each."""
    import dataclasses

    from mind_model.checkpoint import load_model
    from mind_model.data import load_meta, read_eval
    from mind_model.evaluate import ModelRecommender, evaluate
    from mind_model.launch import run_training
    from mind_model.train import TrainConfig

    field = ALIASES.get(param, param)
    if field not in {f.name for f in dataclasses.fields(TrainConfig)}:
        raise ValueError(f"unknown parameter {param!r}")
    if not values:
        raise ValueError("no values to sweep")
    t_start = time.time()
    seq_dir, out_dir = Path(seq_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = load_meta(seq_dir)
    samples = read_eval(seq_dir, split)
    settings = {"data": str(seq_dir), "split": split, "epochs": epochs, "max_steps": max_steps,
                "seed": seed, "variant": variant, "overrides": dict(overrides or {})}
    parent = track.start_parent("sweep", f"sweep {field} on {seq_dir.name}", seq_dir,
                                {**settings, "param": field,
                                 "values": ",".join(_label(v) for v in values)})
    children: dict[str, Any] = {}  # label -> its MLflow child run (the training logs into it)
    points = []
    with parent:  # ended FAILED if a run raises
        for i, v in enumerate(values):
            kw = dict(progress=False, test_at_end=False)
            kw.update(overrides or {})
            kw.update({field: v}, data_dir=str(seq_dir), variant=variant, epochs=epochs,
                      max_steps=max_steps, seed=seed,
                      out_dir=str(out_dir / "runs" / f"{field}={_label(v)}"))
            cfg = TrainConfig(**kw)
            log.info("sweep %s: %d/%d, %s = %s", field, i + 1, len(values), field, _label(v))
            children[_label(v)] = track.training_child(parent, f"{field}={_label(v)}",
                                                       cfg.out_dir, {"mind.sweep_value": _label(v)})
            t0 = time.perf_counter()
            res = run_training(cfg, nproc)
            model = load_model(res["best"], device)
            hr = evaluate(ModelRecommender(model, meta.active_items, device=device), samples,
                          ns=HR_NS)
            point = {"value": v, "label": _label(v),
                     **{f"hr@{n}": float(hr[f"hr@{n}"]) for n in HR_NS},
                     "hr@50_se": hr_se(float(hr["hr@50"]), int(hr["users"])),
                     "users": int(hr["users"]),
                     "best_epoch": (res.get("best_valid") or {}).get("epoch"),
                     "valid_hr@50": (res.get("best_valid") or {}).get("valid_hr@50"),
                     "train_s": time.perf_counter() - t0}
            points.append(point)
            children[_label(v)].log_metrics(track.row_metrics(point))
            parent.log_metrics(track.row_metrics(point), step=i)  # the curve, step = value's index
            log.info("sweep %s = %s: %s HR@50 %.4f ± %.4f", field, _label(v), split,
                     point["hr@50"], point["hr@50_se"])
        result = {"param": field, "values": [_label(v) for v in values], "points": points,
                  "settings": settings, "wall_s": time.time() - t_start,
                  "mlflow": track.describe(parent, children)}
        js, png = out_dir / f"sweep_{field}.json", out_dir / f"sweep_{field}.png"
        write_json(js, result, sort_keys=False)
        plot(points, field, png,
             f"MIND ({variant}) on {seq_dir.name}, {split} users: HR@N vs {field}")
        track.log_files(parent, [js, png])
    result["json"], result["png"] = str(js), str(png)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="sequences/ds=<ds> folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--param", required=True,
                   help="sigma (routing_sigma), p (pow_p), K (n_interests) or any "
                        "TrainConfig field")
    p.add_argument("--values", required=True, help="comma-separated, e.g. 0.1,1,5 or 0,1,inf")
    p.add_argument("--epochs", type=int, default=30, help="at most (early stopping: patience)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--variant", default="mind", choices=("mind", "mind1", "youtube"))
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=V",
                   help="TrainConfig override for every run, e.g. embed_dim=32")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common, per = parse_overrides(a.sets)
    common.update(per.get(a.variant, {}))
    res = sweep(a.data, a.out, a.param, parse_values(a.values), epochs=a.epochs,
                max_steps=a.max_steps, seed=a.seed, overrides=common, variant=a.variant,
                nproc=a.nproc, split=a.split)
    print(f"{res['param']:>14} | " + " | ".join(f"HR@{n:<4}" for n in HR_NS) + " | HR@50 SE")
    for pt in res["points"]:
        print(f"{pt['label']:>14} | " + " | ".join(f"{pt[f'hr@{n}']:.4f}" for n in HR_NS)
              + f" | {pt['hr@50_se']:.4f}")
    print(f"wrote {res['json']} and {res['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
