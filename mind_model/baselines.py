"""Non-neural baselines, each a `mind_model.evaluate.Recommender`.

All are fitted on the TRAINING samples only (`read_train`): the held-out users'
behaviours are used at query time, as a model's are, and their targets never.

- `Popularity`: the most frequent items among the training users' interactions.
- `ItemCF` (the paper's online baseline): cosine item-item similarity of items
  co-occurring within a short window of a training sequence (fitted with
  implicit's `CosineRecommender`, K neighbours per item); a user's score for an
  item is the sum of its similarities to the user's last R behaviours.
- `ALS` (the paper's WALS): implicit's `AlternatingLeastSquares` on training users x
  items; a held-out user is folded in from their behaviours (`recalculate_user`).

Every recommender scores the full candidate catalogue and ranks with
`top_n_by_score`: score descending, then a secondary key descending (ItemCF uses
training popularity, so items no behaviour points to are back-filled by
popularity), then item id ascending. Seen items are not excluded.

CLI (figures for the report): python -m mind_model.baselines --data SEQ_DIR --split test
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from artefacts.cli import run_main
from mind_model.evaluate import Batch, candidate_ids

log = logging.getLogger(__name__)


def top_n_by_score(scores: np.ndarray | Tensor, candidates: np.ndarray, n: int,
                   secondary: np.ndarray | None = None) -> Tensor:
    """Top-n candidate ids per row of `scores` (B, N), ordered by (score desc,
    secondary[id] desc, id asc); ids outside `candidates` are never returned; rows are
    padded with id 0 when there are fewer than n candidates. Returns LongTensor (B, n)."""
    candidates = candidate_ids(candidates, scores.shape[1])  # sorted, unique, no 0 / 1
    s = torch.as_tensor(scores)[:, torch.from_numpy(candidates)]  # (B, M), M candidates in id order
    order = np.arange(len(candidates))
    if secondary is not None:  # a fixed permutation sorted by secondary desc, id asc ...
        order = np.argsort(-np.asarray(secondary, dtype=np.float64)[candidates], kind="stable")
        s = s[:, torch.from_numpy(order)]
    # ... which a stable sort by score keeps among equal scores
    top = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :n]  # (B, min(n, M))
    ids = torch.from_numpy(candidates[order])[top]
    if ids.shape[1] < n:
        ids = torch.cat([ids, ids.new_zeros(ids.shape[0], n - ids.shape[1])], 1)
    return ids


def _np(x: np.ndarray | Tensor) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def recent_items_matrix(hist: np.ndarray | Tensor, hist_len: np.ndarray | Tensor, n_items: int,
                        last: int | None = None, binary: bool = False) -> sp.csr_matrix:
    """(B, n_items) CSR: row b counts the last `last` (all if None) real behaviours of
    user b (hist right-padded, oldest first). Ids >= n_items are dropped."""
    hist, hist_len = _np(hist).astype(np.int64), _np(hist_len).astype(np.int64)
    B, L = hist.shape
    pos = np.arange(L)[None, :]
    start = np.maximum(hist_len - (last if last is not None else L), 0)[:, None]
    keep = (pos >= start) & (pos < hist_len[:, None]) & (hist > 0) & (hist < n_items)  # (B, L)
    rows = np.broadcast_to(np.arange(B)[:, None], (B, L))[keep]
    m = sp.csr_matrix((np.ones(int(keep.sum())), (rows, hist[keep])), shape=(B, n_items))
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m


def training_interactions(train: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, item_idx) of every interaction of the training users, rebuilt from the
    training samples: one sample per position t >= 1 of a sequence gives its target
    (items 1..m-1), and the sample of t = 1 (hist_len 1) gives the first item."""
    first = np.asarray(train["hist_len"]) == 1
    users = np.concatenate([np.asarray(train["user_idx"]), np.asarray(train["user_idx"])[first]])
    items = np.concatenate([np.asarray(train["target"]), np.asarray(train["hist"])[first, 0]])
    return users.astype(np.int64), items.astype(np.int64)


def training_popularity(train: Mapping[str, np.ndarray], n_items: int) -> np.ndarray:
    """(n_items,) interaction counts of the training users (float64)."""
    _, items = training_interactions(train)
    return np.bincount(items, minlength=n_items)[:n_items].astype(np.float64)


class _ScoringRecommender:
    """Shared recommend(): dense scores over all items, then `top_n_by_score`."""

    n_items: int
    candidates: np.ndarray
    secondary: np.ndarray | None = None

    def _set_candidates(self, candidates: np.ndarray | None) -> None:
        self.candidates = candidate_ids(candidates, self.n_items)

    def scores(self, batch: Batch) -> np.ndarray:  # (B, n_items)
        raise NotImplementedError

    def recommend(self, batch: Batch, n: int) -> Tensor:
        return top_n_by_score(self.scores(batch), self.candidates, n, self.secondary)


class Popularity(_ScoringRecommender):
    """The same list for everyone: candidates by training interaction count (ties: id asc).

    Counts come from the training users' interactions only (`training_interactions`),
    not from `meta.item_counts`, which also counts the held-out users' events,
    their targets included, and would leak the answer into the baseline."""

    def __init__(self, n_items: int, candidates: np.ndarray | None = None):
        self.n_items = n_items
        self._set_candidates(candidates)
        self.counts = np.zeros(n_items)

    def fit(self, train: Mapping[str, np.ndarray]) -> "Popularity":
        self.counts = training_popularity(train, self.n_items)
        return self

    def scores(self, batch: Batch) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(batch["hist_len"]), self.n_items))

    def recommend(self, batch: Batch, n: int) -> Tensor:
        one = top_n_by_score(self.counts[None, :], self.candidates, n)  # (1, n): same for all
        return one.expand(len(batch["hist_len"]), -1).clone()


def window_matrix(train: Mapping[str, np.ndarray], n_items: int, window: int) -> sp.csr_matrix:
    """(n_samples, n_items) binary CSR: row i holds training sample i's target and the
    last `window` items of its hist, i.e. items co-occurring within window + 1 steps."""
    rows = recent_items_matrix(train["hist"], train["hist_len"], n_items, last=window, binary=True)
    target = sp.csr_matrix((np.ones(len(train["target"])),
                            (np.arange(len(train["target"])), np.asarray(train["target"]))),
                           shape=rows.shape)
    m = (rows + target).tocsr()
    m.data[:] = 1.0
    return m


def keep_top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's k largest entries (ties: lower column first); others dropped."""
    m = m.tocsr()
    m.sort_indices()
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= k:
        return m
    data, indices, indptr = [], [], [0]
    for r in range(m.shape[0]):
        d = m.data[m.indptr[r]:m.indptr[r + 1]]
        c = m.indices[m.indptr[r]:m.indptr[r + 1]]
        if len(d) > k:
            sel = np.sort(np.argsort(-d, kind="stable")[:k])
            d, c = d[sel], c[sel]
        data.append(d)
        indices.append(c)
        indptr.append(indptr[-1] + len(d))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.asarray(indptr)),
                         shape=m.shape)


class ItemCF(_ScoringRecommender):
    """Item-based CF over short co-occurrence windows.

    sim(i, j) = cosine of the columns i, j of `window_matrix` (binary rows: one per
    training sample = its target + the last `window` behaviours), keeping each item's
    K most similar OTHER items (an item is not its own neighbour: implicit's
    neighbour list includes the item itself, so it is fitted with K + 1 and the
    diagonal removed). score(u, j) = sum over u's last R behaviours i (repeats count)
    of sim(i, j). Ties, including items no behaviour points to (score 0), are ranked
    by training popularity, then id. Defaults (window 5, K 200, R 5) were the best
    HR@50 on the Amazon Beauty validation users over window 1-50, K 20-1000, R 1-50;
    the plateau is flat (window 2-5, K >= 200, R 3-5 all within one standard error).
    """

    def __init__(self, n_items: int, candidates: np.ndarray | None = None, window: int = 5,
                 K: int = 200, recent: int = 5, num_threads: int = 1):
        if window < 1 or K < 1 or recent < 1:
            raise ValueError("window, K and recent must be >= 1")
        self.n_items, self.window, self.K, self.recent = n_items, window, K, recent
        self.num_threads = num_threads
        self._set_candidates(candidates)
        self.similarity = sp.csr_matrix((n_items, n_items))
        self.secondary = np.zeros(n_items)

    def fit(self, train: Mapping[str, np.ndarray]) -> "ItemCF":
        from implicit.nearest_neighbours import CosineRecommender
        from implicit.utils import ParameterWarning

        X = window_matrix(train, self.n_items, self.window)
        knn = CosineRecommender(K=self.K + 1, num_threads=self.num_threads)
        with warnings.catch_warnings():  # its normalize() hands a COO matrix to its own fit
            warnings.simplefilter("ignore", ParameterWarning)
            knn.fit(X, show_progress=False)
        sim = knn.similarity.tocsr().astype(np.float64)
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        # self was one of the K + 1 unless another item tied at cosine 1 pushed it out
        self.similarity = keep_top_k_per_row(sim, self.K)
        self.secondary = training_popularity(train, self.n_items)
        return self

    def scores(self, batch: Batch) -> np.ndarray:
        R = recent_items_matrix(batch["hist"], batch["hist_len"], self.n_items, last=self.recent)
        return (R @ self.similarity).toarray()  # (B, n_items)


class ALS(_ScoringRecommender):
    """Implicit-feedback matrix factorisation (WALS; implicit's AlternatingLeastSquares).

    Fitted on training users x items (interaction counts as confidence, times
    `alpha`); a held-out user's factors are solved from the items of their hist
    (`recalculate_user`, the fold-in), and score(u, j) = x_u . y_j. Defaults: the best
    HR@50 on the Amazon Beauty validation users over factors 32-128, regularization
    0.01-1 and alpha 1-40 (alpha matters most; 1 is far worse than 10-40)."""

    def __init__(self, n_items: int, candidates: np.ndarray | None = None, factors: int = 128,
                 regularization: float = 0.1, alpha: float = 40.0, iterations: int = 15,
                 num_threads: int = 1, random_state: int = 0):
        self.n_items = n_items
        self._set_candidates(candidates)
        self.params = dict(factors=factors, regularization=regularization, alpha=alpha,
                           iterations=iterations, num_threads=num_threads,
                           random_state=random_state)
        self.model = None

    def fit(self, train: Mapping[str, np.ndarray]) -> "ALS":
        from implicit.cpu.als import AlternatingLeastSquares  # CPU always: same results on any host

        users, items = training_interactions(train)
        _, rows = np.unique(users, return_inverse=True)
        ui = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (rows, items)),
                           shape=(int(rows.max(initial=-1)) + 1, self.n_items))
        ui.sum_duplicates()
        self.model = AlternatingLeastSquares(**self.params)
        self.model.fit(ui, show_progress=False)
        return self

    def scores(self, batch: Batch) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit() first")
        R = recent_items_matrix(batch["hist"], batch["hist_len"], self.n_items).astype(np.float32)
        U = self.model.recalculate_user(np.arange(R.shape[0]), R)  # (B, F)
        Y = np.asarray(self.model.item_factors, dtype=np.float64)  # (n_items, F)
        return np.asarray(U, dtype=np.float64) @ Y.T


# ------------------------------------------------------------------------------ CLI

BASELINES = ("popularity", "itemcf", "als")


def build(name: str, n_items: int, candidates: np.ndarray | None,
          **params: Any) -> _ScoringRecommender:
    cls = {"popularity": Popularity, "itemcf": ItemCF, "als": ALS}[name]
    return cls(n_items, candidates, **params)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: Sequence[str]) -> int:
    from mind_model.data import load_meta, read_eval, read_train
    from mind_model.evaluate import evaluate, evaluate_comirec

    p = argparse.ArgumentParser(description="HitRate@N of the non-neural baselines")
    p.add_argument("--data", type=Path, required=True, help="sequences/ds=<ds> folder")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--baselines", default=",".join(BASELINES))
    p.add_argument("--params", default="{}",
                   help='JSON {"itemcf": {"window": 3, "K": 100, "recent": 20}, "als": {...}}')
    p.add_argument("--comirec", action="store_true", help="also the ComiRec protocol")
    p.add_argument("--batch-size", type=int, default=512)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    params = json.loads(a.params)
    meta = load_meta(a.data)
    train, samples = read_train(a.data), read_eval(a.data, a.split)
    res: dict[str, Any] = {}
    for name in a.baselines.split(","):
        t0 = time.perf_counter()
        rec = build(name, meta.n_items, meta.active_items, **params.get(name, {})).fit(train)
        res[name] = {"fit_seconds": time.perf_counter() - t0,
                     "paper": evaluate(rec, samples, batch_size=a.batch_size)}
        if a.comirec:
            res[name]["comirec"] = evaluate_comirec(rec, samples, batch_size=a.batch_size)
        log.info("%s: %s", name, res[name])
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
