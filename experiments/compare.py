"""The paper's Table 2 on one prep output: YouTube DNN, MIND-1 and MIND-K trained with the
same data, budget and seed, next to popularity, item-based CF and ALS (WALS).

    python -m experiments.compare --data SEQ_DIR --out OUT [--epochs N] [--nproc 2] [--truth DIR]
        [--set embed_dim=32] [--set mind.n_interests=3] [--split valid]

`compare(seq_dir, out_dir, ...)` is the callable core. For each variant it calls
`train.train` (one process, or `nproc` processes through `mind_model.launch`) with the
SAME TrainConfig apart from `variant` — data, epochs / max_steps, batch, seed,
dimensions — and keeps each run's best.pt (best valid HR@50).
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
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from artefacts.cli import run_main
from artefacts.storage import write_json, write_text
from experiments import baseline_grid, track
from experiments import breakdown as bd
from experiments.overrides import parse_overrides
from experiments.stats import hr_se, paired_difference, relative
from mind_model.metrics import HR_NS

log = logging.getLogger(__name__)

VARIANT_ORDER = ("youtube", "mind1", "mind")  # training order; YouTube DNN is the reference
METHOD_NAMES = {"popularity": "Popularity", "itemcf": "ItemCF", "als": "ALS (WALS)",
                "youtube": "YouTube DNN", "mind1": "MIND-1", "mind": "MIND-K"}
BASELINE_ORDER = ("popularity", "itemcf", "als")
REFERENCE = "youtube"


# ------------------------------------------------------------------------- helpers


def _metrics_row(paper: Mapping[str, float], comirec: Mapping[str, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {f"hr@{n}": float(paper[f"hr@{n}"]) for n in HR_NS}
    row["users"] = int(paper["users"])
    row["hr@50_se"] = hr_se(row["hr@50"], row["users"])
    row["users_per_s"] = float(paper.get("users_per_s", float("nan")))
    if comirec is not None:
        row["comirec"] = {k: float(v) for k, v in comirec.items()
                          if k.startswith(("recall@", "hr@")) or k == "users"}
    return row


def _score(rec, samples: Mapping[str, Any]) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Both protocols for one recommender: its table row and each user's hits {N: (U,)}."""
    from mind_model.evaluate import evaluate, evaluate_comirec

    paper = evaluate(rec, samples, per_user=True)
    hits = paper.pop("hits")
    return _metrics_row(paper, evaluate_comirec(rec, samples)), hits


def add_relative(methods: dict[str, dict[str, Any]], reference: str = REFERENCE) -> None:
    """methods[m]["rel_hr@N"] = relative improvement of HR@N over the reference method."""
    if reference not in methods:
        return
    ref = methods[reference]
    for row in methods.values():
        for n in HR_NS:
            row[f"rel_hr@{n}"] = relative(row[f"hr@{n}"], ref[f"hr@{n}"])


def add_paired(methods: dict[str, dict[str, Any]], hits: Mapping[str, Mapping[int, np.ndarray]],
               reference: str = REFERENCE) -> None:
    """methods[m]["diff_hr@50"], ["diff_hr@50_se"]: HR@50 minus the reference's, paired.
    hits: method -> {N: (U,) bool}."""
    if reference not in hits:
        return
    for m, h in hits.items():
        if m in methods:
            methods[m]["diff_hr@50"], methods[m]["diff_hr@50_se"] = \
                paired_difference(h[50], hits[reference][50])


def markdown_table(methods: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """The paper's Table 2 layout: one row per method, HR@10/50/100 and the relative
    improvement of HR@50 over YouTube DNN; then the ComiRec metrics when present."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| Method | HR@10 | HR@50 | HR@100 | HR@50 SE | HR@50 vs YouTube DNN "
              "| HR@50 − YouTube DNN (paired SE) | best epoch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, row in methods.items():
        rel = row.get("rel_hr@50", float("nan"))
        rel_s = "—" if math.isnan(rel) else f"{rel * 100:+.1f}%"
        diff, diff_se = row.get("diff_hr@50", float("nan")), row.get("diff_hr@50_se", float("nan"))
        diff_s = "—" if math.isnan(diff) else f"{diff:+.4f} ({diff_se:.4f})"
        best = row.get("best_epoch")
        best_s = "—" if best is None else f"{best} of {len(row.get('loss_by_epoch') or [])}"
        lines.append(f"| {METHOD_NAMES.get(key, key)} | {row['hr@10']:.4f} | {row['hr@50']:.4f} | "
                     f"{row['hr@100']:.4f} | {row['hr@50_se']:.4f} | {rel_s} | {diff_s} "
                     f"| {best_s} |")
    if any("comirec" in r for r in methods.values()):
        lines += ["",
                  "ComiRec protocol (first 80 % of a held-out user's sequence predicts the rest):",
                  "", "| Method | Recall@20 | Recall@50 | HR@20 | HR@50 |",
                  "|---|---:|---:|---:|---:|"]
        for key, row in methods.items():
            c = row.get("comirec")
            if c:
                lines.append(f"| {METHOD_NAMES.get(key, key)} | {c['recall@20']:.4f} | "
                             f"{c['recall@50']:.4f} | {c['hr@20']:.4f} | {c['hr@50']:.4f} |")
    tuned = {k: r for k, r in methods.items() if r.get("tuning")}
    if tuned:
        def edge_note(r: Mapping[str, Any]) -> str:
            edge = baseline_grid.at_edge(r["tuning"], r["params"])
            return f" (on the grid's edge at {edge}: a wider grid may score higher)" if edge else ""

        lines += ["", "Baselines tuned on the valid users (HR@50; best of the grid): " + "; ".join(
            f"{METHOD_NAMES.get(k, k)} {r['params']} of {len(r['tuning'])} points, valid "
            f"{max(t['hr@50'] for t in r['tuning']):.4f}{edge_note(r)}" for k, r in tuned.items())]
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
                    f"{r['coverage']:.3f} of true clusters (ceiling {r['coverage_ceiling']:.3f}), "
                    f"of observed clusters {r.get('coverage_observed', float('nan')):.3f} (ceiling "
                    f"{r.get('coverage_observed_ceiling', float('nan')):.3f}), precision "
                    f"{r['precision']:.3f}, purity {r['purity']:.3f}, "
                    f"distinct {r['distinct']:.3f}, users {r['users']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- compare


def compare(seq_dir: Path | str, out_dir: Path | str, *, epochs: int = 30,
            max_steps: int | None = None, seed: int = 0,
            overrides: Mapping[str, Any] | None = None,
            variant_overrides: Mapping[str, Mapping[str, Any]] | None = None,
            nproc: int = 1, truth_dir: Path | str | None = None, split: str = "test",
            variants: Sequence[str] = VARIANT_ORDER, baselines: Sequence[str] = BASELINE_ORDER,
            baseline_params: Mapping[str, Mapping[str, Any]] | None = None,
            baseline_grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
            heatmap_users: int = 4, device: str = "cpu") -> dict[str, Any]:
    """Train `variants` with one budget and seed, score them and `baselines` on `split`;
    write compare.json, compare.md, coupling_heatmap.png into out_dir; return the JSON."""
    from mind_model.data import load_meta, read_eval

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
    settings: dict[str, Any] = {"data": str(seq_dir), "split": split, "epochs": epochs,
                                "max_steps": max_steps, "seed": seed, "nproc": nproc,
                                "overrides": common, "variant_overrides": per_variant,
                                "train_configs": {}}
    children: dict[str, Any] = {}  # method -> its MLflow child run
    parent = track.start_parent("compare", f"compare {seq_dir.name} ({split})", seq_dir,
                                {k: v for k, v in settings.items() if k != "train_configs"})
    with parent:  # ended FAILED if anything below raises
        methods: dict[str, dict[str, Any]] = {}
        hits: dict[str, dict[int, np.ndarray]] = {}  # method -> {N: (U,) hit of each user}
        if baselines:
            score_baselines(seq_dir, meta, samples, baselines, baseline_params or {}, methods, hits,
                            baseline_grids)
        budget = dict(epochs=epochs, max_steps=max_steps, seed=seed)
        models = {}
        for variant in variants:
            cfg = variant_config(seq_dir, out_dir, variant, budget, common,
                                 per_variant.get(variant, {}))
            settings["train_configs"][variant] = cfg.to_dict()
            # the child run the training logs into: Table 2 next to its training curves
            children[variant] = track.training_child(parent, METHOD_NAMES[variant], cfg.out_dir,
                                                     {"mind.method": variant})
            methods[variant], hits[variant], models[variant] = train_and_score(
                cfg, nproc, meta, samples, device)

        add_relative(methods)
        add_paired(methods, hits)
        methods = {m: methods[m] for m in (*BASELINE_ORDER, *VARIANT_ORDER) if m in methods}
        interests, heatmap_path = {}, None
        if "mind" in models:
            interests, heatmap_path = interpret_mind(models["mind"], seq_dir, out_dir, samples,
                                                     meta.active_items, truth_dir, heatmap_users,
                                                     seed)
        result = {"settings": settings, "methods": methods,
                  "breakdown": breakdowns({m: hits[m] for m in methods}, samples, meta),
                  "interests": interests, "reference": REFERENCE,
                  "heatmap": str(heatmap_path) if heatmap_path else None,
                  "wall_s": time.time() - t_start}
        track.log_rows(parent, methods, children, METHOD_NAMES,
                       {m: r.get("params") for m, r in methods.items()})
        result["mlflow"] = track.describe(parent, children)
        md = report_markdown(result, seq_dir, len(samples["target"]))
        write_json(out_dir / "compare.json", result, sort_keys=False)
        write_text(out_dir / "compare.md", md)
        track.log_files(parent, [out_dir / "compare.json", out_dir / "compare.md", heatmap_path])
        result["markdown"] = md
        log.info("wrote %s and %s in %.0fs", out_dir / "compare.json", out_dir / "compare.md",
                 time.time() - t_start)
    return result


def breakdowns(hits: Mapping[str, Mapping[int, np.ndarray]], samples: Mapping[str, Any],
               meta) -> dict[str, Any]:
    """HR by the users' K'_u and by whether the target is a rare or new item."""
    return {
        "k_active": bd.breakdown(hits, bd.k_active_groups(samples["hist_len"]), REFERENCE,
                                 bd.K_ACTIVE_LABELS),
        "target": bd.breakdown(hits, bd.target_groups(samples["target"], meta.item_own),
                               REFERENCE, bd.TARGET_LABELS),
    }


def score_baselines(seq_dir: Path, meta, samples: Mapping[str, Any], names: Sequence[str],
                    params: Mapping[str, Mapping[str, Any]], methods: dict[str, dict[str, Any]],
                    hits: dict[str, dict[int, np.ndarray]],
                    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> None:
    """Fit each baseline on the training samples only and score it on `samples`. With
    `grids`, a baseline that has one is first tuned on the valid users
    (`experiments.baseline_grid`); `params` are then fixed values for every point."""
    from experiments import baseline_grid
    from mind_model.baselines import build
    from mind_model.data import read_eval, read_train

    train_samples = read_train(seq_dir)
    valid = read_eval(seq_dir, "valid") if grids else None
    for name in names:
        t0 = time.perf_counter()
        chosen, evidence = dict(params.get(name, {})), []
        if grids and grids.get(name) and len(valid["target"]):
            log.info("baseline %s: tuning on %d valid users", name, len(valid["target"]))
            chosen, evidence = baseline_grid.tune(name, train_samples, valid, meta.n_items,
                                                  meta.active_items, grids[name], chosen)
        log.info("baseline %s: fitting %s", name, chosen or "(defaults)")
        rec = build(name, meta.n_items, meta.active_items, **chosen).fit(train_samples)
        fit_s = time.perf_counter() - t0
        row, hits[name] = _score(rec, samples)
        row.update(fit_s=fit_s, params=chosen)
        if evidence:
            row["tuning"] = evidence
        methods[name] = row
        log.info("baseline %s: HR@50 %.4f (fit %.0fs)", name, row["hr@50"], fit_s)


def variant_config(seq_dir: Path, out_dir: Path, variant: str, budget: Mapping[str, Any],
                   common: Mapping[str, Any], own: Mapping[str, Any]):
    """The TrainConfig of one variant: the SAME for all apart from `variant` and its own
    overrides; its run lives in out_dir/runs/<variant>/ (a rerun resumes it)."""
    from mind_model.train import TrainConfig

    kw: dict[str, Any] = dict(progress=False, test_at_end=False)
    kw.update(common)
    kw.update(own)
    kw.update(data_dir=str(seq_dir), out_dir=str(out_dir / "runs" / variant), variant=variant,
              **budget)
    return TrainConfig(**kw)


def train_and_score(cfg, nproc: int, meta, samples: Mapping[str, Any],
                    device: str) -> tuple[dict[str, Any], dict[int, np.ndarray], Any]:
    """Train one variant, score its best.pt; (table row, per-user hits {N: (U,)}, model)."""
    from mind_model.checkpoint import load_model
    from mind_model.evaluate import ModelRecommender
    from mind_model.launch import run_training

    t0 = time.perf_counter()
    log.info("training %s (%s) for %d epochs%s on %d process(es)", METHOD_NAMES[cfg.variant],
             cfg.variant, cfg.epochs, f" / {cfg.max_steps} steps" if cfg.max_steps else "", nproc)
    result = run_training(cfg, nproc)
    train_s = time.perf_counter() - t0
    model = load_model(result["best"], device)
    row, hits = _score(ModelRecommender(model, meta.active_items, device=device), samples)
    hist = result.get("history") or []
    row.update(train_s=train_s, best_epoch=(result.get("best_valid") or {}).get("epoch"),
               valid_hr50_by_epoch=[h.get("valid_hr@50") for h in hist],
               loss_by_epoch=[h.get("loss") for h in hist],
               samples_per_s=float(np.mean([h["samples_per_s"] for h in hist])) if hist else None)
    log.info("%s: HR@50 %.4f (best epoch %s, %.0fs)", METHOD_NAMES[cfg.variant], row["hr@50"],
             row["best_epoch"], train_s)
    return row, hits, model


def interpret_mind(model, seq_dir: Path, out_dir: Path, samples: Mapping[str, Any],
                   candidates: np.ndarray, truth_dir: Path | str | None, heatmap_users: int,
                   seed: int) -> tuple[dict[str, Any], Path | None]:
    """MIND-K's interest report and coupling heat map (the paper's case study)."""
    import torch

    from mind_model.interpret import coupling_heatmap, interest_report, load_truth

    truth = load_truth(truth_dir, seq_dir) if truth_dir else None
    log.info("interest report of MIND-K%s", " with the true clusters" if truth else "")
    with torch.no_grad():
        interests = interest_report(model, samples, truth, candidates=candidates)
    if not heatmap_users:
        return interests, None
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
    return interests, heatmap_path


def report_markdown(result: Mapping[str, Any], seq_dir: Path, n_users: int) -> str:
    """compare.md: the settings line, the table and MIND-K's interests."""
    s, interests = result["settings"], result["interests"]
    title = f"HR@N on the {s['split']} users of {seq_dir.name} ({n_users} users)"
    md = [f"# Compare: {seq_dir}", "",
          f"Same data, budget (at most {s['epochs']} epochs"
          + (f", max {s['max_steps']} steps" if s["max_steps"] else "")
          + f"), seed {s['seed']}, {s['nproc']} process(es); each model = best valid HR@50 "
          f"epoch. Overrides: {json.dumps(s['overrides'], default=str)}; per variant: "
          f"{json.dumps(s['variant_overrides'], default=str)}.", "",
          markdown_table(result["methods"], title)]
    ref_name = METHOD_NAMES[result["reference"]]
    for key, what in (("k_active", "By the user's number of interests K'_u (history length)"),
                      ("target", "By the target item (rare or new: fewer than min_item_count "
                                 "events of training users, no id embedding of its own)")):
        table = result.get("breakdown", {}).get(key)
        if table:
            md += ["", bd.markdown(table, METHOD_NAMES, what, ref_name)]
    if interests:
        md.append(_fmt_interest_report(interests))
    if result["heatmap"]:
        md.append(f"\nCoupling coefficients of MIND-K for users {interests['heatmap_users']}: "
                  f"`{Path(result['heatmap']).name}`\n")
    return "\n".join(md)


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.compare",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="sequences/ds=<ds> folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=30,
                   help="at most; each model stops after --set patience=N (default 3) epochs "
                        "without a better valid HR@50, once --set min_samples=M (default 1M) "
                        "training samples were seen, and keeps its best epoch")
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
    p.add_argument("--tune-baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="pick ALS's and item-CF's parameters on the valid users first (the "
                        "grids of experiments.baseline_grid); --baseline-params stay fixed")
    p.add_argument("--heatmap-users", type=int, default=4)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common, per = parse_overrides(a.sets)
    res = compare(a.data, a.out, epochs=a.epochs, max_steps=a.max_steps, seed=a.seed,
                  overrides=common, variant_overrides=per, nproc=a.nproc, truth_dir=a.truth,
                  split=a.split, variants=[v for v in a.variants.split(",") if v],
                  baselines=[b for b in a.baselines.split(",") if b],
                  baseline_params=json.loads(a.baseline_params),
                  baseline_grids=baseline_grid.GRIDS if a.tune_baselines else None,
                  heatmap_users=a.heatmap_users,
                  device=a.device)
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
