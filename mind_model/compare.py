"""The paper's Table 2 on one prep output: YouTube DNN, MIND-1 and MIND-K trained with the
same data, budget and seed, next to popularity, item-based CF and ALS (WALS).

    python -m mind_model.compare --data SEQ_DIR --out OUT [--epochs N] [--nproc 2] [--truth DIR]
        [--set embed_dim=32] [--set mind.n_interests=3] [--split valid]

`compare(seq_dir, out_dir, ...)` is the callable core. For each variant it calls
`train.train` (one process, or `nproc` processes through torch's `elastic_launch`,
the in-process torchrun) with the SAME TrainConfig apart from `variant` — data, epochs /
max_steps, batch, seed, dimensions — and keeps each run's best.pt (best valid HR@50).
Each best model, and each baseline fitted on the training samples only, is then scored
on the held-out users of `split` (default test) with both protocols of
`mind_model.evaluate`: the paper's HR@{10,50,100} and ComiRec's Recall/HR@{20,50}.

Writes into out_dir (each file written aside and renamed into place):
- runs/<variant>/: the training runs (a rerun with the same settings resumes them, so
  finished variants are not trained again);
- compare.json: settings, per-method metrics, relative improvements, interest report;
- compare.md: the table (rows = methods; HR@10/50/100, the standard error of HR@50,
  HR@50's relative improvement over YouTube DNN and its difference from YouTube DNN
  with the paired standard error — same users, so far tighter than the HRs' own
  errors: a difference of two paired SEs is unlikely to be luck of the test users),
  then the ComiRec table;
- coupling_heatmap.png: MIND-K's coupling coefficients for a few held-out users
  (the paper's case study, Figure 5);
- the interest report of MIND-K (`interpret.interest_report`): K'_u distribution,
  diversity = mean pairwise cosine between a user's interests (1 = collapsed) and,
  with `truth_dir` (generated data), how often the interests recover the users'
  true interest clusters.

Overrides (`overrides` / `--set`) are TrainConfig fields; `mind.<field>=v`,
`mind1.<field>=v` or `youtube.<field>=v` applies to that variant only (e.g. K).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

VARIANT_ORDER = ("youtube", "mind1", "mind")  # training order; YouTube DNN is the reference
METHOD_NAMES = {"popularity": "Popularity", "itemcf": "ItemCF", "als": "ALS (WALS)",
                "youtube": "YouTube DNN", "mind1": "MIND-1", "mind": "MIND-K"}
BASELINE_ORDER = ("popularity", "itemcf", "als")
REFERENCE = "youtube"
PAPER_NS = (10, 50, 100)
COMIREC_NS = (20, 50)


# ------------------------------------------------------------------------- helpers


def hr_se(hr: float, users: int) -> float:
    """Binomial standard error of a hit rate over `users` independent users."""
    return math.sqrt(max(hr * (1.0 - hr), 0.0) / users) if users else float("nan")


def relative(value: float, reference: float) -> float:
    """(value - reference) / reference; nan when the reference is 0."""
    return (value - reference) / reference if reference else float("nan")


def atomic_write_text(path: Path, text: str) -> None:
    """Write text aside, then rename it into place: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_overrides(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """["embed_dim=32", "mind.n_interests=3", "tower_hidden=256,128"] ->
    (common overrides, {variant: overrides}). Values are JSON when they parse, tuples for
    comma lists, else strings ("inf" -> float inf)."""
    common: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {}
    types = {f.name: str(f.type) for f in dataclasses.fields(_train_config_cls())}
    fields = set(types)
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        variant, dot, name = key.partition(".")
        if not dot:
            variant, name = "", key
        elif variant not in VARIANT_ORDER:
            raise ValueError(f"unknown variant {variant!r} in {item!r} (one of {VARIANT_ORDER})")
        if name not in fields:
            raise ValueError(f"unknown TrainConfig field {name!r} in {item!r}")
        value: Any
        if raw.lower() in ("inf", "infinity"):
            value = math.inf
        elif "," in raw:
            value = tuple(json.loads(x) for x in raw.split(",") if x)
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        if types[name].startswith("tuple") and not isinstance(value, tuple):
            value = (value,)  # "tower_hidden=256": one layer
        (per.setdefault(variant, {}) if variant else common)[name] = value
    return common, per


def _train_config_cls():
    from mind_model.train import TrainConfig
    return TrainConfig


def _train_worker(cfg) -> dict:
    """Entry point of each elastic_launch process (module level, so spawn can import it)."""
    import mind_model.train as train_mod
    return train_mod.train(cfg)


def run_training(cfg, nproc: int = 1) -> dict[str, Any]:
    """train(cfg) in this process, or on `nproc` local processes (gloo/nccl) via
    elastic_launch; returns rank 0's result."""
    from mind_model.train import train

    if nproc <= 1:
        return train(cfg)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    # torchrun's convention: one intra-op thread per process unless told otherwise
    old = os.environ.get("OMP_NUM_THREADS")
    if old is None and cfg.threads is None:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        results = elastic_launch(launch, _train_worker)(cfg)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return results[0]


def _metrics_row(paper: Mapping[str, float], comirec: Mapping[str, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {f"hr@{n}": float(paper[f"hr@{n}"]) for n in PAPER_NS}
    row["users"] = int(paper["users"])
    row["hr@50_se"] = hr_se(row["hr@50"], row["users"])
    row["users_per_s"] = float(paper.get("users_per_s", float("nan")))
    if comirec is not None:
        row["comirec"] = {k: float(v) for k, v in comirec.items()
                          if k.startswith(("recall@", "hr@")) or k == "users"}
    return row


def _score(rec, samples: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """Both protocols for one recommender: its table row and each user's HR@50 hit (U,)."""
    from mind_model.evaluate import evaluate, evaluate_comirec

    paper = evaluate(rec, samples, per_user=True)
    hit50 = paper.pop("hits")[50]
    return _metrics_row(paper, evaluate_comirec(rec, samples)), hit50


def add_relative(methods: dict[str, dict[str, Any]], reference: str = REFERENCE) -> None:
    """methods[m]["rel_hr@N"] = relative improvement of HR@N over the reference method."""
    if reference not in methods:
        return
    ref = methods[reference]
    for row in methods.values():
        for n in PAPER_NS:
            row[f"rel_hr@{n}"] = relative(row[f"hr@{n}"], ref[f"hr@{n}"])


def paired_difference(hits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-user difference of two hit vectors on the SAME
    users: much tighter than the two HRs' own errors when the methods agree on most users."""
    d = np.asarray(hits, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def add_paired(methods: dict[str, dict[str, Any]], hits: Mapping[str, np.ndarray],
               reference: str = REFERENCE) -> None:
    """methods[m]["diff_hr@50"], ["diff_hr@50_se"]: HR@50 minus the reference's, paired."""
    if reference not in hits:
        return
    for m, h in hits.items():
        if m in methods:
            methods[m]["diff_hr@50"], methods[m]["diff_hr@50_se"] = \
                paired_difference(h, hits[reference])


def markdown_table(methods: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """The paper's Table 2 layout: one row per method, HR@10/50/100 and the relative
    improvement of HR@50 over YouTube DNN; then the ComiRec metrics when present."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| Method | HR@10 | HR@50 | HR@100 | HR@50 SE | HR@50 vs YouTube DNN "
              "| HR@50 − YouTube DNN (paired SE) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for key, row in methods.items():
        rel = row.get("rel_hr@50", float("nan"))
        rel_s = "—" if math.isnan(rel) else f"{rel * 100:+.1f}%"
        diff, diff_se = row.get("diff_hr@50", float("nan")), row.get("diff_hr@50_se", float("nan"))
        diff_s = "—" if math.isnan(diff) else f"{diff:+.4f} ({diff_se:.4f})"
        lines.append(f"| {METHOD_NAMES.get(key, key)} | {row['hr@10']:.4f} | {row['hr@50']:.4f} | "
                     f"{row['hr@100']:.4f} | {row['hr@50_se']:.4f} | {rel_s} | {diff_s} |")
    if any("comirec" in r for r in methods.values()):
        lines += ["", "ComiRec protocol (first 80 % of a held-out user's sequence predicts the rest):",
                  "", "| Method | Recall@20 | Recall@50 | HR@20 | HR@50 |", "|---|---:|---:|---:|---:|"]
        for key, row in methods.items():
            c = row.get("comirec")
            if c:
                lines.append(f"| {METHOD_NAMES.get(key, key)} | {c['recall@20']:.4f} | "
                             f"{c['recall@50']:.4f} | {c['hr@20']:.4f} | {c['hr@50']:.4f} |")
    return "\n".join(lines) + "\n"


def pick_heatmap_users(samples: Mapping[str, Any], n: int, seed: int,
                       min_len: int = 6, max_len: int = 40) -> list[int]:
    """A few held-out rows with enough behaviours to show several interests (seeded)."""
    lens = np.asarray(samples["hist_len"])
    ok = np.flatnonzero((lens >= min_len) & (lens <= max_len))
    if len(ok) == 0:
        ok = np.argsort(-lens)[:n]
    rng = np.random.default_rng(seed)
    return sorted(int(r) for r in rng.choice(ok, size=min(n, len(ok)), replace=False))


def _fmt_interest_report(rep: Mapping[str, Any]) -> str:
    lines = ["", "### MIND-K interests", "",
             f"- users: {rep['users']}, mean K'_u {rep['k_active_mean']:.2f}, "
             f"K'_u shares {json.dumps({str(k): round(v, 3) for k, v in rep['k_active'].items()})}",
             f"- diversity (mean pairwise cosine between a user's active interests, users with "
             f"K'_u >= 2; 1 = collapsed): {rep['diversity']:.3f}",
             f"- routing sharpness (1 - normalised entropy of a behaviour's coupling "
             f"coefficients; 1 = hard clustering, 0 = no routing signal): "
             f"{rep.get('routing_sharpness', float('nan')):.3f}"]
    rec = rep.get("recovery")
    if rec:
        for view in ("retrieval", "routing"):
            r = rec.get(view)
            if r:
                lines.append(
                    f"- cluster recovery ({view} view, top-{rec['n_top']} per interest): coverage "
                    f"{r['coverage']:.3f} of true clusters (ceiling {r['coverage_ceiling']:.3f}), of "
                    f"observed clusters {r.get('coverage_observed', float('nan')):.3f} (ceiling "
                    f"{r.get('coverage_observed_ceiling', float('nan')):.3f}), precision "
                    f"{r['precision']:.3f}, purity {r['purity']:.3f}, distinct {r['distinct']:.3f}, "
                    f"users {r['users']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- compare


def compare(seq_dir: Path | str, out_dir: Path | str, *, epochs: int = 10,
            max_steps: int | None = None, seed: int = 0,
            overrides: Mapping[str, Any] | None = None,
            variant_overrides: Mapping[str, Mapping[str, Any]] | None = None,
            nproc: int = 1, truth_dir: Path | str | None = None, split: str = "test",
            variants: Sequence[str] = VARIANT_ORDER, baselines: Sequence[str] = BASELINE_ORDER,
            baseline_params: Mapping[str, Mapping[str, Any]] | None = None,
            heatmap_users: int = 4, device: str = "cpu") -> dict[str, Any]:
    """Train `variants` with one budget and seed, score them and `baselines` on `split`;
    write compare.json, compare.md, coupling_heatmap.png into out_dir; return the JSON."""
    import torch

    from mind_model.baselines import build
    from mind_model.checkpoint import load_model
    from mind_model.data import load_meta, read_eval, read_train
    from mind_model.evaluate import ModelRecommender
    from mind_model.train import TrainConfig

    t_start = time.time()
    seq_dir, out_dir = Path(seq_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if split not in ("test", "valid"):
        raise ValueError("split must be 'test' or 'valid'")
    meta = load_meta(seq_dir)
    samples = read_eval(seq_dir, split)
    if len(samples["target"]) == 0:
        raise ValueError(f"no {split} users in {seq_dir}")
    log.info("compare on %s (%s split: %d users, %d items); variants %s, baselines %s",
             seq_dir, split, len(samples["target"]), len(meta.active_items), list(variants),
             list(baselines))

    common = dict(overrides or {})
    per_variant = {k: dict(v) for k, v in (variant_overrides or {}).items()}
    methods: dict[str, dict[str, Any]] = {}
    hits: dict[str, np.ndarray] = {}  # method -> (U,) HR@50 hit of each held-out user
    settings: dict[str, Any] = {"data": str(seq_dir), "split": split, "epochs": epochs,
                                "max_steps": max_steps, "seed": seed, "nproc": nproc,
                                "overrides": common, "variant_overrides": per_variant,
                                "train_configs": {}}

    # --- baselines (fitted on training samples only)
    if baselines:
        train_samples = read_train(seq_dir)
        for name in baselines:
            t0 = time.perf_counter()
            log.info("baseline %s: fitting", name)
            rec = build(name, meta.n_items, meta.active_items,
                        **dict((baseline_params or {}).get(name, {}))).fit(train_samples)
            fit_s = time.perf_counter() - t0
            row, hits[name] = _score(rec, samples)
            row["fit_s"] = fit_s
            methods[name] = row
            log.info("baseline %s: HR@50 %.4f (fit %.0fs)", name, row["hr@50"], fit_s)
        del train_samples

    # --- the three neural variants, same data / budget / seed
    models: dict[str, Any] = {}
    for variant in variants:
        kw = dict(progress=False, test_at_end=False)
        kw.update(common)
        kw.update(per_variant.get(variant, {}))
        kw.update(data_dir=str(seq_dir), out_dir=str(out_dir / "runs" / variant), variant=variant,
                  epochs=epochs, max_steps=max_steps, seed=seed)
        cfg = TrainConfig(**kw)
        settings["train_configs"][variant] = cfg.to_dict()
        t0 = time.perf_counter()
        log.info("training %s (%s) for %d epochs%s on %d process(es)", METHOD_NAMES[variant],
                 variant, epochs, f" / {max_steps} steps" if max_steps else "", nproc)
        result = run_training(cfg, nproc)
        train_s = time.perf_counter() - t0
        model = load_model(result["best"], device)
        rec = ModelRecommender(model, meta.active_items, device=device)
        row, hits[variant] = _score(rec, samples)
        hist = result.get("history") or []
        row.update(train_s=train_s, best_epoch=(result.get("best_valid") or {}).get("epoch"),
                   valid_hr50_by_epoch=[h.get("valid_hr@50") for h in hist],
                   loss_by_epoch=[h.get("loss") for h in hist],
                   samples_per_s=float(np.mean([h["samples_per_s"] for h in hist])) if hist else None)
        methods[variant] = row
        models[variant] = model
        log.info("%s: %s HR@50 %.4f (best epoch %s, %.0fs)", METHOD_NAMES[variant], split,
                 row["hr@50"], row["best_epoch"], train_s)

    add_relative(methods)
    add_paired(methods, hits)
    order = [m for m in (*BASELINE_ORDER, *VARIANT_ORDER) if m in methods]
    methods = {m: methods[m] for m in order}

    # --- interpretation of MIND-K: heat map and interest report
    interests: dict[str, Any] = {}
    heatmap_path = None
    if "mind" in models:
        from mind_model.interpret import coupling_heatmap, interest_report, load_truth

        model = models["mind"]
        truth = load_truth(truth_dir, seq_dir) if truth_dir else None
        log.info("interest report of MIND-K%s", " with the true clusters" if truth else "")
        with torch.no_grad():
            interests = interest_report(model, samples, truth, candidates=meta.active_items)
        if heatmap_users:
            rows = pick_heatmap_users(samples, heatmap_users, seed)
            heatmap_path = out_dir / "coupling_heatmap.png"
            names = None
            if truth is not None:  # label behaviours with their true cluster: c<cluster>:<idx>
                ic = truth.item_cluster
                names = {int(i): f"c{ic[i]}:{i}" for i in np.unique(samples["hist"][rows])
                         if 0 <= i < len(ic)}
            coupling_heatmap(model, samples, rows, heatmap_path, item_names=names)
            interests["heatmap_users"] = [int(samples["user_idx"][r]) for r in rows] \
                if "user_idx" in samples else rows

    result = {"settings": settings, "methods": methods, "interests": interests,
              "reference": REFERENCE, "heatmap": str(heatmap_path) if heatmap_path else None,
              "wall_s": time.time() - t_start}
    title = f"HR@N on the {split} users of {seq_dir.name} ({len(samples['target'])} users)"
    md = [f"# Compare: {seq_dir}", "",
          f"Same data, budget ({epochs} epochs" + (f", max {max_steps} steps" if max_steps else "")
          + f"), seed {seed}, {nproc} process(es); each model = best valid HR@50 epoch. "
          f"Overrides: {json.dumps(common, default=str)}; per variant: "
          f"{json.dumps(per_variant, default=str)}.", "", markdown_table(methods, title)]
    if interests:
        md.append(_fmt_interest_report(interests))
    if heatmap_path:
        md.append(f"\nCoupling coefficients of MIND-K for users {interests['heatmap_users']}: "
                  f"`{heatmap_path.name}`\n")
    atomic_write_text(out_dir / "compare.json",
                  json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    atomic_write_text(out_dir / "compare.md", "\n".join(md))
    result["markdown"] = "\n".join(md)
    log.info("wrote %s and %s in %.0fs", out_dir / "compare.json", out_dir / "compare.md",
             time.time() - t_start)
    return result


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mind_model.compare",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="sequences/ds=<ds> folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=1, help="training processes per variant")
    p.add_argument("--truth", type=Path, default=None, help="truth/ of generated data")
    p.add_argument("--split", default="test", choices=("test", "valid"),
                   help="held-out users to score (pick settings on valid)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="[VARIANT.]FIELD=V",
                   help="TrainConfig override, e.g. embed_dim=32 or mind.n_interests=3")
    p.add_argument("--variants", default=",".join(VARIANT_ORDER))
    p.add_argument("--baselines", default=",".join(BASELINE_ORDER), help="'' for none")
    p.add_argument("--baseline-params", default="{}",
                   help='JSON, e.g. {"itemcf": {"window": 3}, "als": {"factors": 64}}')
    p.add_argument("--heatmap-users", type=int, default=4)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common, per = parse_overrides(a.sets)
    res = compare(a.data, a.out, epochs=a.epochs, max_steps=a.max_steps, seed=a.seed,
                  overrides=common, variant_overrides=per, nproc=a.nproc, truth_dir=a.truth,
                  split=a.split, variants=[v for v in a.variants.split(",") if v],
                  baselines=[b for b in a.baselines.split(",") if b],
                  baseline_params=json.loads(a.baseline_params), heatmap_users=a.heatmap_users,
                  device=a.device)
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
