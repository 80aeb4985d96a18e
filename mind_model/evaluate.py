"""Offline evaluation of any recommender on the held-out users of a prep output.

Two protocols on the same held-out users (`read_eval(seq_dir, "test" | "valid")`):

- `evaluate(rec, samples, ns=(10, 50, 100))` — the paper's (MIND, Section 4.1):
  each user's `hist` (the last L items before one interacted item drawn at random)
  predicts that item, `target`; HitRate@N = share of users whose target is in the
  top N over the whole candidate catalogue.
- `evaluate_comirec(rec, samples, ns=(20, 50))` — ComiRec (KDD 2020): the first
  80 % of `full_seq` (its last L items) predicts the remaining 20 %; Recall@N
  (targets de-duplicated) and HR@N (share of users with at least one hit).

Both return plain floats plus `users`, `seconds` and `users_per_s`, the
throughput of `rec.recommend` alone (batch building and metrics excluded).
Seen items are never excluded: every recommender is treated the same way.

A recommender is anything with `recommend(batch, n) -> LongTensor (B, n)` of item
ids, best first (`Recommender`); `batch` holds "hist" (B, L) right-padded with 0,
"hist_len" (B,) and the profile columns "<field>_idx" when the data has them.
`ModelRecommender` wraps a MIND model (max over the user's ACTIVE interests,
restricted to a candidate catalogue); `mind_model.baselines` holds the others.
`HeldOutSample` scores a model on a fixed seeded sample of one split's users: the
validation HR of training (model selection) and the publish gate use it, and
`experiments.compare` calls `evaluate` directly, so all three share one HR.

CLI: python -m mind_model.evaluate --model CKPT --data SEQ_DIR --split test
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from artefacts.cli import run_main
from mind_model.data import DatasetMeta, read_eval
from mind_model.inference import fit_catalogue, model_inputs
from mind_model.metrics import COMIREC_NS, HR_NS, hits_at, recall_hr_at, topn_multi_interest
from schemas import FIRST_IDX, PROFILE_COLUMNS

log = logging.getLogger(__name__)

Batch = Mapping[str, "np.ndarray | Tensor"]
BATCH_KEYS = ("hist", "hist_len", *PROFILE_COLUMNS)  # what a recommender may read


@runtime_checkable
class Recommender(Protocol):
    def recommend(self, batch: Batch, n: int) -> Tensor:
        """Top-n item ids per user, best first: LongTensor (B, n). Never ids 0 or 1,
        except id 0 as padding when fewer than n candidates exist."""
        ...


def candidate_ids(candidates: np.ndarray | Tensor | Sequence[int] | None,
                  n_items: int) -> np.ndarray:
    """Sorted unique candidate ids within [FIRST_IDX, n_items); all real ids if None."""
    if candidates is None:
        return np.arange(FIRST_IDX, n_items, dtype=np.int64)
    c = np.unique(np.asarray(candidates, dtype=np.int64))
    out = c[(c >= FIRST_IDX) & (c < n_items)]
    dropped = int(((c >= n_items)).sum())
    if dropped:  # e.g. items added to the vocabulary after the model was trained
        log.warning("%d candidate ids >= n_items=%d are unknown to the recommender: skipped",
                    dropped, n_items)
    return out


def _tensor(x: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.long)


class ModelRecommender:
    """A MIND (or YouTube DNN / MIND-1) model as a `Recommender`.

    An item's score for a user is the max over the user's ACTIVE interests of
    v_uk . e_item (`metrics.topn_multi_interest`, the serving merge), over the
    candidate catalogue only (default: every real id; pass `meta.active_items`
    so items absent from today's data are never recommended). Item embeddings are
    computed once here: build a new recommender after the model changes.
    """

    def __init__(self, model: torch.nn.Module, candidates: np.ndarray | Tensor | None = None,
                 device: torch.device | str | None = None, chunk_size: int = 32768):
        self.model = model
        self.device = (torch.device(device) if device is not None
                       else next(model.parameters()).device)
        self.chunk_size = chunk_size
        model.eval()
        with torch.no_grad():
            emb = model.all_item_embeddings().to(self.device)  # (n_catalogue, D)
        cands = torch.from_numpy(candidate_ids(candidates, emb.shape[0])).to(self.device)  # (M,)
        # topn_multi_interest never returns rows 0 and 1, so two zero rows in front keep
        # local id j <-> item cands[j - 2]; local 0 (padding when n > M) maps back to 0.
        self._emb = torch.cat([emb.new_zeros(FIRST_IDX, emb.shape[1]), emb[cands]])  # (M + 2, D)
        self._ids = torch.cat([cands.new_zeros(FIRST_IDX), cands])  # (M + 2,)
        self.n_candidates = int(cands.numel())

    @torch.no_grad()
    def interests(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(V (B, K, D), mask (B, K)) of the users in `batch`, in eval mode."""
        self.model.eval()
        # ids newer than the model's vocabulary (data of a later day) are unknown to it
        hist, profile = model_inputs(self.model, _tensor(batch["hist"]),
                                     {k: _tensor(batch[k]) for k in PROFILE_COLUMNS if k in batch})
        if profile is not None:
            profile = {k: v.to(self.device) for k, v in profile.items()}
        return self.model.user_interests(hist.to(self.device),
                                         _tensor(batch["hist_len"], self.device), profile)

    @torch.no_grad()
    def recommend(self, batch: Batch, n: int) -> Tensor:
        V, mask = self.interests(batch)  # (B, K, D), (B, K)
        _, local = topn_multi_interest(V, mask, self._emb, n, chunk_size=self.chunk_size)  # (B, n)
        return self._ids[local].cpu()

    @torch.no_grad()
    def interest_topn(self, V: Tensor, n: int) -> Tensor:
        """Each interest's own top-n candidates (the per-interest ANN query before the
        merge): LongTensor (B, K, n). Rows of inactive interests are meaningless."""
        B, K, D = V.shape
        one = torch.ones(B * K, 1, dtype=torch.bool, device=self.device)
        _, local = topn_multi_interest(V.reshape(B * K, 1, D).to(self.device), one, self._emb, n,
                                       chunk_size=self.chunk_size)  # (B*K, n)
        return self._ids[local].reshape(B, K, n).cpu()


# ------------------------------------------------------------------------ protocols


def iter_batches(batch: Mapping[str, Any], batch_size: int) -> Iterator[dict[str, Any]]:
    """Slices of the recommender inputs (hist, hist_len, profile ids) of `batch`."""
    keys = [k for k in BATCH_KEYS if k in batch]
    n = len(batch["hist_len"])
    for s in range(0, n, batch_size):
        yield {k: batch[k][s:s + batch_size] for k in keys}


def _recommend_all(rec: Recommender, batch: Mapping[str, Any], n: int,
                   batch_size: int) -> tuple[Tensor, float]:
    """Top-n of every user, (U, n), and the seconds spent inside rec.recommend."""
    tops, spent = [], 0.0
    for b in iter_batches(batch, batch_size):
        t0 = time.perf_counter()
        top = rec.recommend(b, n)
        spent += time.perf_counter() - t0
        if top.shape != (len(b["hist_len"]), n):
            raise ValueError(f"recommend returned {tuple(top.shape)}, "
                             f"expected {(len(b['hist_len']), n)}")
        tops.append(top.long().cpu())
    if not tops:
        return torch.zeros((0, n), dtype=torch.long), spent
    return torch.cat(tops), spent


def _timing(users: int, seconds: float) -> dict[str, float]:
    return {"users": users, "seconds": seconds,
            "users_per_s": users / seconds if seconds > 0 else float("nan")}


def evaluate(rec: Recommender, samples: Mapping[str, Any], ns: Sequence[int] = HR_NS,
             batch_size: int = 1024, per_user: bool = False) -> dict[str, Any]:
    """The paper's HitRate@N on an eval table (`read_eval`): {"hr@10": ..., "users", ...}.
    With `per_user`, also "hits": {N: (U,) bool array, True where the user's target is in
    the top N} (for paired comparisons of two recommenders on the same users)."""
    if len(samples["target"]) == 0:
        raise ValueError("no evaluation users")
    top, spent = _recommend_all(rec, samples, max(ns), batch_size)  # (U, max ns)
    hits = hits_at(top, torch.as_tensor(np.asarray(samples["target"])), ns)  # {N: (U,) bool}
    out: dict[str, Any] = {f"hr@{n}": h.float().mean().item() for n, h in hits.items()}
    out.update(_timing(len(top), spent))
    if per_user:
        out["hits"] = {n: h.numpy() for n, h in hits.items()}
    return out


def comirec_inputs(samples: Mapping[str, Any], ratio: float = 0.8,
                   max_len: int | None = None) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """ComiRec split of each held-out user's `full_seq` (length m): the first
    k = max(1, floor(ratio * m)) items are the behaviours (the last L of them, right-padded
    with 0), the remaining m - k the targets. Users left without a target (m < 2) are dropped.
    Returns (batch with hist, hist_len, profile ids and user_idx, target arrays)."""
    L = int(max_len or np.asarray(samples["hist"]).shape[1])
    keep, hists, lens, targets = [], [], [], []
    for row, seq in enumerate(samples["full_seq"]):
        seq = np.asarray(seq, dtype=np.int64)
        k = max(1, int(np.floor(ratio * len(seq))))
        if k >= len(seq):
            continue
        h = seq[:k][-L:]
        hists.append(np.pad(h, (0, L - len(h))))
        lens.append(len(h))
        targets.append(seq[k:])
        keep.append(row)
    idx = np.asarray(keep, dtype=np.int64)
    batch = {"hist": np.asarray(hists, dtype=np.int64).reshape(len(keep), L),
             "hist_len": np.asarray(lens, dtype=np.int64)}
    for k in (*PROFILE_COLUMNS, "user_idx"):
        if k in samples:
            batch[k] = np.asarray(samples[k])[idx]
    return batch, targets


def evaluate_comirec(rec: Recommender, samples: Mapping[str, Any], ns: Sequence[int] = COMIREC_NS,
                     batch_size: int = 1024, ratio: float = 0.8) -> dict[str, float]:
    """ComiRec protocol on the same held-out users: {"recall@20", "hr@20", ..., "users", ...}."""
    batch, targets = comirec_inputs(samples, ratio)
    if not targets:
        raise ValueError("no held-out user has a sequence long enough for the ComiRec split")
    top, spent = _recommend_all(rec, batch, max(ns), batch_size)
    out: dict[str, float] = dict(recall_hr_at(top, targets, ns))
    out.update(_timing(len(top), spent))
    return out


class HeldOutSample:
    """HR@{10,50,100} of a model on a fixed seeded sample of one split's held-out users,
    over today's catalogue (`meta.active_items`, as the ANN index would hold it).

    The validation score of training (best.pt), its test score at the end and the
    publish gate are this, so model selection and the gate share `evaluate`'s HR."""

    def __init__(self, meta: DatasetMeta, split: str, max_users: int | None = None,
                 seed: int = 0, device: torch.device | str = "cpu", batch_users: int = 1024):
        data = read_eval(meta.seq_dir, split)
        n = len(data["target"])
        pick = (np.sort(np.random.default_rng(seed).permutation(n)[:max_users])
                if max_users is not None and n > max_users else np.arange(n))
        self.samples = {k: np.asarray(data[k])[pick] for k in (*BATCH_KEYS, "target")
                        if k in data}
        self.meta = meta
        self.candidates = meta.active_items
        self.split, self.n_users, self.device = split, len(pick), device
        self.batch_users = batch_users

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, ns: Sequence[int] = HR_NS) -> dict[str, float]:
        """{"hr@10": ..., "users": U}; the model's train/eval mode is restored."""
        if self.n_users == 0:
            return {}
        was_training = model.training
        try:
            # a model older than the data scores today's new items by their side features
            fit_catalogue(model, self.meta.item_category, self.meta.item_brand)
            rec = ModelRecommender(model, self.candidates, device=self.device)
            out = evaluate(rec, self.samples, ns=ns, batch_size=self.batch_users)
        finally:
            model.train(was_training)
        return {**{f"hr@{n}": out[f"hr@{n}"] for n in ns}, "users": self.n_users}


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description="HitRate@N (paper) and Recall/HR@N (ComiRec) of a checkpoint")
    p.add_argument("--model", type=Path, required=True, help="checkpoint written by training")
    p.add_argument("--data", type=Path, required=True, help="sequences/ds=<ds> folder")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--protocol", default="both", choices=("paper", "comirec", "both"))
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from artefacts.storage import write_text
    from mind_model.checkpoint import load_model
    from mind_model.data import load_meta, read_eval

    model = load_model(a.model, device=a.device)
    meta = load_meta(a.data)
    samples = read_eval(a.data, a.split)
    rec = ModelRecommender(model, meta.active_items, device=a.device)
    res: dict[str, Any] = {"model": str(a.model), "data": str(a.data), "split": a.split}
    if a.protocol in ("paper", "both"):
        res["paper"] = evaluate(rec, samples, batch_size=a.batch_size)
    if a.protocol in ("comirec", "both"):
        res["comirec"] = evaluate_comirec(rec, samples, batch_size=a.batch_size)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out is not None:
        write_text(a.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
