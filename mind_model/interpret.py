"""What the interests learnt: the paper's case study and interest-level diagnostics.

- `coupling_heatmap(model, samples, user_rows, path_png, item_names=None)`: for a
  few users, a PNG heat map of the coupling coefficients w_ij of the last routing
  iteration at inference (active interests x real behaviours; each column sums to
  1 over the active interests), as in the paper's Figure 5. Returns the matrices.
- `interest_report(model, samples, truth=None)`: distribution of K'_u, mean pairwise
  cosine between a user's active interests (1 = collapsed) and, with the ground
  truth of generated data (`load_truth`), how well the interests recover the
  users' planted interest clusters (`cluster_recovery`).

Recovery measure (computed twice, from two views of an interest)
----------------------------------------------------------------
Each active interest k of user u gets a *cluster mass* m_k(c) >= 0 over true clusters:
- "retrieval": m_k(c) = number of the interest's own top-n_top items (it alone
  queries the candidate catalogue, as at serving) that belong to cluster c;
- "routing":   m_k(c) = sum of the coupling weights w_ki of u's behaviours i in c.
Items of unknown cluster carry no mass. Then (`cluster_recovery`):
- label(k) = argmax_c m_k(c) (ties: smallest cluster id); an interest with no mass
  is unlabelled and left out of purity, precision and distinct;
- purity(k) = m_k(label(k)) / sum_c m_k(c)       — mean over labelled interests;
- coverage(u) = |{label(k)} ∩ T_u| / |T_u|, T_u = u's true clusters — mean over users;
- coverage_observed(u): the same with T_u ∩ O_u, O_u = clusters of u's behaviours
  in hist (what the model could see); users with T_u ∩ O_u empty are skipped;
- precision(u) = share of u's labelled interests whose label is in T_u;
- distinct(u) = number of distinct labels / number of labelled interests (1 = no two
  interests on the same cluster);
- *_ceiling: the best coverage reachable with K'_u interests, min(K'_u, |T|) / |T|.

Read the retrieval view first. The routing view labels interests with clusters of
the user's own behaviours, so it is high even for an untrained model (gen200k test
users, random init: routing coverage 0.52, precision 1.00; retrieval coverage 0.03,
precision 0.06): it says how routing splits the behaviours, not whether the interest
vectors point at the right part of the catalogue.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from artefacts.storage import atomic_path
from mind_model.evaluate import ModelRecommender
from mind_model.metrics import interest_diversity, routing_sharpness
from mind_model.model import behaviour_mask
from schemas import PROFILE_COLUMNS

log = logging.getLogger(__name__)


@dataclass
class GroundTruth:
    """Planted structure of generated data, in the dense ids of one prep output."""

    item_cluster: np.ndarray               # (n_items,) int64 cluster per item idx; -1 = unknown
    user_clusters: dict[int, np.ndarray]   # user_idx -> the user's true interest clusters


def load_truth(truth_dir: Path | str, seq_dir: Path | str) -> GroundTruth:
    """Read `truth/{items,user_interests}.parquet` (raw ids, from `ingest.sample_data`)
    and map them to dense ids through `seq_dir/vocab/{item,user}`."""
    truth_dir, seq_dir = Path(truth_dir), Path(seq_dir)

    def vocab(name: str) -> dict[str, int]:
        t = pq.read_table(seq_dir / "vocab" / name, columns=["value", "idx"])
        return dict(zip(t.column("value").to_pylist(), t.column("idx").to_pylist()))

    item_vocab, user_vocab = vocab("item"), vocab("user")
    items = pq.read_table(truth_dir / "items.parquet", columns=["item_id", "cluster_id"])
    item_cluster = np.full(max(item_vocab.values(), default=1) + 1, -1, dtype=np.int64)
    for raw, c in zip(items.column("item_id").to_pylist(), items.column("cluster_id").to_pylist()):
        idx = item_vocab.get(raw)
        if idx is not None and c is not None:
            item_cluster[idx] = c
    users = pq.read_table(truth_dir / "user_interests.parquet", columns=["user_id", "clusters"])
    user_clusters = {user_vocab[raw]: np.asarray(cl, dtype=np.int64)
                     for raw, cl in zip(users.column("user_id").to_pylist(),
                                        users.column("clusters").to_pylist())
                     if raw in user_vocab}
    return GroundTruth(item_cluster, user_clusters)


# --------------------------------------------------------------------- routing view


def _batch_tensors(samples: Mapping[str, Any], rows: np.ndarray, device) -> dict[str, Tensor]:
    out = {k: torch.as_tensor(np.asarray(samples[k])[rows], dtype=torch.long, device=device)
           for k in ("hist", "hist_len", *PROFILE_COLUMNS) if k in samples}
    return out


@torch.no_grad()
def coupling_matrices(model: torch.nn.Module, samples: Mapping[str, Any],
                      user_rows: Sequence[int]) -> list[np.ndarray]:
    """Coupling coefficients at inference for each row: (K'_u, hist_len_u) float arrays
    (active interests x real behaviours, oldest behaviour first; the last
    `history_window` behaviours when the model has one: those are what it routes)."""
    if getattr(model, "routing", None) is None:
        raise ValueError("the model has no routing (mean pooling): no coupling coefficients")
    model.eval()
    device = next(model.parameters()).device
    rows = np.asarray(user_rows, dtype=np.int64)
    b = _batch_tensors(samples, rows, device)
    hist, hist_len = model.recent(b["hist"], b["hist_len"])  # (B, W), (B,)
    out = model.interest_capsules(hist, hist_len)
    w, mask = out.coupling.cpu().numpy(), out.mask.cpu().numpy()  # (B, K, W), (B, K)
    lens = hist_len.cpu().numpy()
    return [w[i, :int(mask[i].sum()), :int(lens[i])] for i in range(len(rows))]


def _name_of(item_names: Mapping[int, str] | Sequence[str] | None, idx: int) -> str:
    if item_names is None:
        return str(idx)
    try:
        return str(item_names[idx])
    except (KeyError, IndexError):
        return str(idx)


def coupling_heatmap(model: torch.nn.Module, samples: Mapping[str, Any], user_rows: Sequence[int],
                     path_png: Path | str,
                     item_names: Mapping[int, str] | Sequence[str] | None = None,
                     max_labels: int = 60) -> list[np.ndarray]:
    """Write one heat map per user (interests x behaviours, coupling weight in [0, 1]) into
    one PNG; behaviours are labelled with `item_names[idx]` (else the idx) when there are at
    most `max_labels`. Returns the matrices drawn, as `coupling_matrices`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no global backend switch
    from matplotlib.figure import Figure

    mats = coupling_matrices(model, samples, user_rows)
    if not mats:
        raise ValueError("no users given")
    hist = np.asarray(samples["hist"])
    width = min(24.0, max(6.0, 0.3 * max(m.shape[1] for m in mats) + 2))
    heights = [max(1.0, 0.45 * m.shape[0]) + 0.9 for m in mats]
    fig = Figure(figsize=(width, sum(heights)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(mats), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, row, m in zip(axes, user_rows, mats):
        im = ax.imshow(m, aspect="auto", cmap="Reds", vmin=0.0, vmax=1.0, interpolation="nearest")
        user = samples["user_idx"][row] if "user_idx" in samples else row
        ax.set_title(f"user {user}: {m.shape[0]} interests x {m.shape[1]} behaviours", fontsize=9)
        ax.set_yticks(range(m.shape[0]), [f"interest {k + 1}" for k in range(m.shape[0])],
                      fontsize=8)
        if m.shape[1] <= max_labels:
            end = int(samples["hist_len"][row])  # m covers the last m.shape[1] behaviours
            names = [_name_of(item_names, int(i))[:14] for i in hist[row, end - m.shape[1]:end]]
            ax.set_xticks(range(m.shape[1]), names, rotation=90, fontsize=7)
        else:
            ax.set_xlabel("behaviour (oldest first)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    with atomic_path(path_png) as tmp:  # written aside, then renamed into place
        fig.savefig(tmp, dpi=100, format="png")
    return mats


# ----------------------------------------------------------------- recovery measure


def cluster_recovery(masses: Sequence[Sequence[Mapping[int, float]]],
                     true_clusters: Sequence[Iterable[int]],
                     observed: Sequence[Iterable[int]] | None = None) -> dict[str, float]:
    """The recovery measure of the module docstring. masses[u][k] = cluster mass of user
    u's k-th active interest; true_clusters[u] = T_u; observed[u] = O_u (optional).
    Returns means: coverage, coverage_ceiling, precision, purity, distinct, users, and
    with `observed` also coverage_observed, coverage_observed_ceiling."""
    if len(masses) != len(true_clusters) or (observed is not None and len(observed) != len(masses)):
        raise ValueError("one entry per user in masses, true_clusters and observed")
    cov, ceil, prec, pur, dist, cov_o, ceil_o = [], [], [], [], [], [], []
    for u, interests in enumerate(masses):
        T = {int(c) for c in true_clusters[u]}
        labels = []
        for m in interests:
            m = {int(c): float(v) for c, v in m.items() if v > 0}
            if not m:
                continue
            best = max(m.values())
            label = min(c for c, v in m.items() if v == best)
            labels.append(label)
            pur.append(best / sum(m.values()))
        L = set(labels)
        if labels:
            prec.append(sum(lb in T for lb in labels) / len(labels))
            dist.append(len(L) / len(labels))
        if T:
            cov.append(len(L & T) / len(T))
            ceil.append(min(len(interests), len(T)) / len(T))
        if observed is not None:
            TO = T & {int(c) for c in observed[u]}
            if TO:
                cov_o.append(len(L & TO) / len(TO))
                ceil_o.append(min(len(interests), len(TO)) / len(TO))

    def mean(x: list[float]) -> float:
        return float(np.mean(x)) if x else float("nan")

    out = {"coverage": mean(cov), "coverage_ceiling": mean(ceil), "precision": mean(prec),
           "purity": mean(pur), "distinct": mean(dist), "users": len(cov)}
    if observed is not None:
        out.update(coverage_observed=mean(cov_o), coverage_observed_ceiling=mean(ceil_o))
    return out


def _mass(clusters: np.ndarray, weights: np.ndarray | None = None) -> dict[int, float]:
    """Cluster -> summed weight (count when weights is None), unknown (-1) dropped."""
    keep = clusters >= 0
    w = np.ones(int(keep.sum())) if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    out: dict[int, float] = {}
    for c, v in zip(clusters[keep].tolist(), w.tolist()):
        out[c] = out.get(c, 0.0) + v
    return out


@torch.no_grad()
def interest_report(model: torch.nn.Module, samples: Mapping[str, Any],
                    truth: GroundTruth | None = None, candidates: np.ndarray | None = None,
                    n_top: int = 20, batch_size: int = 256) -> dict[str, Any]:
    """Interest diagnostics over the users of an eval table (`read_eval`):
    {"users", "k_active": {K': share}, "k_active_mean", "diversity", "routing_sharpness"
    (`metrics.routing_sharpness`; NaN without routing)} and, with `truth`,
    "recovery": {"retrieval": {...}, "routing": {...}} (`cluster_recovery`, only users
    with known true clusters). `candidates` restricts the retrieval view (default all)."""
    model.eval()
    device = next(model.parameters()).device
    rec = ModelRecommender(model, candidates, device=device) if truth is not None else None
    n = len(samples["hist_len"])
    k_counts: dict[int, int] = {}
    div_sum, div_users = 0.0, 0
    sharp_sum, sharp_n = 0.0, 0
    ret_mass, rout_mass, true_cl, observed = [], [], [], []
    has_routing = getattr(model, "routing", None) is not None
    for s in range(0, n, batch_size):
        rows = np.arange(s, min(s + batch_size, n))
        b = _batch_tensors(samples, rows, device)
        profile = {k: v for k, v in b.items() if k in PROFILE_COLUMNS}
        hist, hist_len = model.recent(b["hist"], b["hist_len"])  # what the model routes
        caps = model.interest_capsules(hist, hist_len)  # routing once per batch
        V, mask = model.interests_from_capsules(caps, profile)  # (B, K, D), (B, K)
        k_active = mask.sum(1).cpu().numpy()
        for k in k_active.tolist():
            k_counts[k] = k_counts.get(k, 0) + 1
        multi = int((k_active >= 2).sum())
        if multi:  # interest_diversity averages over users with >= 2 interests: re-weight
            div_sum += interest_diversity(V, mask) * multi
            div_users += multi
        if has_routing:
            s_sum, s_n = routing_sharpness(caps.coupling, caps.mask,
                                           behaviour_mask(hist, hist_len))
            sharp_sum, sharp_n = sharp_sum + s_sum, sharp_n + s_n
        if truth is None:
            continue
        keep = [i for i, r in enumerate(rows) if int(samples["user_idx"][r]) in truth.user_clusters]
        if not keep:
            continue
        tops = rec.interest_topn(V, n_top).numpy()  # (B, K, n_top)
        coupling = caps.coupling  # (B, K, W); None for mean pooling
        hist, lens = hist.cpu().numpy(), hist_len.cpu().numpy()  # the routed behaviours
        ic = truth.item_cluster

        def cluster_of(ids: np.ndarray) -> np.ndarray:
            ids = np.asarray(ids, dtype=np.int64)
            out = np.full(ids.shape, -1, dtype=np.int64)
            ok = (ids >= 0) & (ids < len(ic))
            out[ok] = ic[ids[ok]]
            return out

        for i in keep:
            r = rows[i]
            ka, hl = int(k_active[i]), int(lens[i])
            beh = cluster_of(hist[i, :hl])
            ret_mass.append([_mass(cluster_of(tops[i, k])) for k in range(ka)])
            if coupling is not None:
                w = coupling[i].cpu().numpy()  # (K, L)
                rout_mass.append([_mass(beh, w[k, :hl]) for k in range(ka)])
            true_cl.append(truth.user_clusters[int(samples["user_idx"][r])])
            observed.append(beh[beh >= 0])
    out: dict[str, Any] = {
        "users": n,
        "k_active": {int(k): c / n for k, c in sorted(k_counts.items())},
        "k_active_mean": sum(k * c for k, c in k_counts.items()) / n if n else float("nan"),
        "diversity": div_sum / div_users if div_users else float("nan"),
        "routing_sharpness": sharp_sum / sharp_n if sharp_n else float("nan"),
    }
    if truth is not None:
        rec_out = {"retrieval": cluster_recovery(ret_mass, true_cl, observed), "n_top": n_top}
        if has_routing:
            rec_out["routing"] = cluster_recovery(rout_mass, true_cl, observed)
        out["recovery"] = rec_out
    return out
