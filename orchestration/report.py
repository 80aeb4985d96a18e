"""The report of `make local-pipeline`: the compare run, two users' recommendations from
the published version, plots and the Markdown text (data, HitRate, gate, index, DAG run)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from experiments.breakdown import markdown as breakdown_markdown
from experiments.compare import METHOD_NAMES
from mind_model.metrics import HR_NS
from orchestration.airflow_local import DAG_TASKS
from orchestration.console import say

# Training flags of the daily model and of the compared variants (one budget for all).
TRAIN_FLAGS = dict(batch_size=256, n_neg=256, embed_dim=32, eval_users=2000)


def run_compare(seq_dir: Path, out: Path, args: argparse.Namespace, truth: Path | None) -> dict:
    from experiments import compare as cmp

    say(f"training YouTube DNN, MIND-1 and MIND-K on the same sequences ({args.epochs} epochs, "
        f"{args.nproc} processes each) for the HitRate table")
    logging.getLogger("experiments.compare").setLevel(logging.INFO)
    return cmp.compare(seq_dir, out / "compare", epochs=args.epochs, nproc=args.nproc,
                       overrides=dict(TRAIN_FLAGS), truth_dir=truth,
                       baselines=("popularity",), heatmap_users=4)


def sample_users(root: Path, n: int = 2) -> list[str]:
    """Users with the most interests (ties: smallest id), from the published vectors."""
    import pyarrow.dataset as pads

    from artefacts.pointer import read_current

    t = pads.dataset(str(read_current(root).path("user_vectors")), format="parquet").to_table(
        columns=["user_id", "n_interests"])
    rows = sorted(zip(t.column("n_interests").to_pylist(), t.column("user_id").to_pylist()),
                  key=lambda r: (-r[0], r[1]))
    return [u for _, u in rows[:n]]


def recommendations(root: Path, users: list[str], n: int = 12) -> list[dict[str, Any]]:
    import numpy as np
    import pyarrow.parquet as pq

    from serving.retrieval import Retriever

    r = Retriever(root, gpu=False)
    seq = r.pointer.path("sequences")
    items = pq.read_table(seq / "items", columns=["item_idx", "category_idx"]).to_pydict()
    cat_of = dict(zip(items["item_idx"], items["category_idx"]))
    _, cat_names = r.vocab("category")

    def label(idx: int) -> str:
        c = cat_of.get(int(idx))
        name = cat_names[c] if c is not None and c < len(cat_names) else None
        return f"{r.item_ids(np.array([idx]))[0]} ({name or 'cat ?'})"

    out = []
    for u in users:
        rec = r.recommend_user(u, n=n)
        seen = r.seen_items(u)
        groups: dict[int, list[str]] = {}
        for rec_row in rec.records():
            groups.setdefault(rec_row["interest"], []).append(label(rec_row["item_idx"]))
        out.append({"user": u, "n_interests": rec.n_interests,
                    "recent": [label(i) for i in seen[-10:][::-1]],
                    "by_interest": {k: groups[k] for k in sorted(groups)}})
    return out


def plots(out: Path, cmp: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    methods = cmp["methods"]
    names = METHOD_NAMES
    order = [m for m in ("popularity", "youtube", "mind1", "mind") if m in methods]
    ns = HR_NS
    fig, ax = plt.subplots(figsize=(7, 3.8))
    w = 0.8 / len(order)
    for i, m in enumerate(order):
        ax.bar([j + i * w for j in range(len(ns))], [methods[m][f"hr@{n}"] for n in ns], w,
               label=names[m])
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(ns))], [f"HR@{n}" for n in ns])
    ax.set_ylabel("hit rate (test users)")
    ax.legend()
    ax.set_title("HitRate@N: MIND-K vs MIND-1 vs YouTube DNN")
    fig.tight_layout()
    fig.savefig(out / "hitrate.png", dpi=110)
    plt.close(fig)
    files.append("hitrate.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for m in ("youtube", "mind1", "mind"):
        if m in methods:
            a1.plot(methods[m].get("loss_by_epoch") or [], marker="o", label=names[m])
            a2.plot(methods[m].get("valid_hr50_by_epoch") or [], marker="o", label=names[m])
    a1.set_title("training loss")
    a2.set_title("valid HR@50")
    from matplotlib.ticker import MaxNLocator

    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("epoch")
        a.legend()
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)
    files.append("training.png")
    heat = cmp.get("heatmap")
    if heat and Path(heat).is_file():
        files.append(str(Path(heat).relative_to(out)))
    return files


def build_report(root: Path, ds: str, source: str, dag: dict, cmp: dict,
                 recs: list[dict], pngs: list[str], wall_s: float) -> str:
    from artefacts.layout import DataLayout

    layout = DataLayout(root)
    stats = json.loads((layout.sequences(ds) / "stats.json").read_text())
    gate = json.loads((layout.models(ds) / "evaluation.json").read_text())
    idx = json.loads((layout.index(ds) / "manifest.json").read_text())
    c, u = stats["counts"], stats["users"]
    quar = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.get("quarantined_by_reason", {})
                                                       .items()))
    L = [f"# MIND local pipeline: ds={ds}", "",
         f"Input: {source}. Wall time {wall_s / 60:.1f} min.", "",
         "## Data", "",
         "| events in | quarantined | duplicates | filtered (rare) | kept | "
         "users (train/valid/test) | items |",
         "|---:|---:|---:|---:|---:|---|---:|",
         f"| {c['input']:,} | {c['quarantined']:,} | {c['duplicates']:,} | {c['filtered']:,} | "
         f"{c['kept']:,} | {u['total']:,} ({u['train']:,}/{u['valid']:,}/{u['test']:,}) | "
         f"{stats['items']:,} |", ""]
    if quar:
        L += [f"Quarantined by reason: {quar}.", ""]
    methods = cmp["methods"]
    names = METHOD_NAMES
    n_test = int(methods.get("mind", next(iter(methods.values()))).get("users", u["test"]))
    L += ["## HitRate (paper protocol, test users)", "",
          f"Same sequences, budget ({cmp['settings']['epochs']} epochs) and seed; "
          f"{n_test:,} held-out users.", "",
          "| method | HR@10 | HR@50 (± s.e.) | HR@100 | HR@50 vs YouTube DNN |",
          "|---|---:|---:|---:|---:|"]
    for m in ("popularity", "youtube", "mind1", "mind"):
        if m in methods:
            r = methods[m]
            rel = r.get("rel_hr@50")
            se = r.get("hr@50_se")
            L.append(f"| {names[m]} | {r['hr@10']:.4f} | {r['hr@50']:.4f}"
                     f"{'' if se is None else f' ± {se:.3f}'} | {r['hr@100']:.4f} "
                     f"| {'' if rel is None else f'{rel:+.1%}'} |")
    for key, what in (("k_active", "By number of interests K'_u (history length)"),
                      ("target", "By target item (rare or new vs frequent)")):
        table = cmp.get("breakdown", {}).get(key)
        if table:
            L += ["", breakdown_markdown(table, names, what, names["youtube"]).rstrip()]
    L += ["", f"Publish gate of the daily model: {gate['reason']} "
              f"(daily model test HR@50 {gate['new']['hr@50']:.4f}).", "",
          "## Index", "",
          f"{idx['factory']} ({'exact' if idx['exact'] else 'approximate'}) over "
          f"{idx['items']:,} items of dimension {idx['dim']}, {idx['n_shards']} shards, "
          f"{idx['bytes'] / 2**20:.2f} MiB; recall@{idx['recall']['n']} vs exact search "
          f"{idx['recall']['value']:.4f} (threshold {idx['recall']['threshold']}, "
          f"{idx['recall']['users']} users)"
          f"{', search ' + json.dumps(idx['search_params']) if idx['search_params'] else ''}.",
          "", "## Recommendations of two users (published model + index)", ""]
    for r in recs:
        L += [f"### user {r['user']}: {r['n_interests']} interests", "",
              "Recent behaviours (newest first): " + ", ".join(r["recent"]), ""]
        for k, items in r["by_interest"].items():
            L.append(f"- interest {k}: " + ", ".join(items))
        L.append("")
    L += ["## Daily DAG run", "", "| task | state | seconds |", "|---|---|---:|"]
    for t in DAG_TASKS:
        v = dag["tasks"].get(t, {})
        s = v.get("seconds")
        L.append(f"| {t} | {v.get('state', '?')} | {'' if s is None else f'{s:.0f}'} |")
    L += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in pngs), ""]
    L += mlflow_section(root, gate, cmp)
    return "\n".join(L)


def mlflow_section(root: Path, gate: dict[str, Any], cmp: dict[str, Any]) -> list[str]:
    """The MLflow runs this pipeline made (ids to paste into the UI's search), or why none."""
    from mind_model.tracking import enabled, tracking_uri

    daily, parent = gate.get("mlflow_run_id"), cmp.get("mlflow")
    L = ["## MLflow runs", ""]
    if not (daily or parent):
        why = "switched off (MIND_TRACKING)" if not enabled() else "not reachable or mlflow " \
            "not installed (see the warnings above)"
        return L + [f"No runs recorded: tracking {why}.", ""]
    L += [f"Store `{tracking_uri(root)}`; browse with `make mlflow-ui DATA_ROOT={root}`.", "",
          "| run | experiment | run id |", "|---|---|---|"]
    if daily:
        L.append(f"| daily training (ds, fingerprint, gate as tags) | mind-daily | `{daily}` |")
    if parent:
        L.append(f"| compare (parent) | mind-compare | `{parent['run_id']}` |")
        L += [f"| {METHOD_NAMES.get(m, m)} (child) | mind-compare | `{rid}` |"
              for m, rid in parent.get("children", {}).items()]
    return L + [""]
