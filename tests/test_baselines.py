"""Baselines against brute-force numpy references on tiny sequences built in the test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mind_model.baselines import (
    ALS,
    ItemCF,
    Popularity,
    recent_items_matrix,
    top_n_by_score,
    training_interactions,
    window_matrix,
)
from mind_model.evaluate import Recommender, evaluate

N_ITEMS, L = 30, 5
LEAKY = N_ITEMS - 1  # an item only the held-out users touch


def train_samples(seqs: list[np.ndarray], first_user: int = 0) -> dict:
    """TRAIN_SAMPLES rows as the prep job writes them: one per position t >= 1."""
    rows = {k: [] for k in ("user_idx", "hist", "hist_len", "target")}
    for u, seq in enumerate(seqs):
        for t in range(1, len(seq)):
            h = seq[:t][-L:]
            rows["user_idx"].append(first_user + u)
            rows["hist"].append(np.pad(h, (0, L - len(h))))
            rows["hist_len"].append(len(h))
            rows["target"].append(seq[t])
    return {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # a little structure (two halves of the catalogue) so the similarities are not all alike
    seqs = []
    for _ in range(25):
        half = rng.integers(0, 2)
        lo, hi = (2, 16) if half == 0 else (16, LEAKY)
        seqs.append(rng.integers(lo, hi, size=int(rng.integers(2, 14))))
    train = train_samples(seqs)
    # held-out users: their sequences hammer LEAKY, which must not leak into any fit
    held = [np.concatenate([rng.integers(2, LEAKY, size=int(rng.integers(1, 8))), [LEAKY] * 3])
            for _ in range(9)]
    hist = np.zeros((len(held), L), dtype=np.int64)
    hist_len = np.zeros(len(held), dtype=np.int64)
    for b, s in enumerate(held):
        h = s[:-1][-L:]
        hist[b, :len(h)] = h
        hist_len[b] = len(h)
    samples = {"hist": hist, "hist_len": hist_len, "target": np.array([s[-1] for s in held])}
    candidates = np.setdiff1d(np.arange(N_ITEMS), [3, 17])  # 3 and 17 left today's catalogue
    return seqs, train, samples, candidates


def ranked(scores: np.ndarray, candidates: np.ndarray, n: int, secondary=None) -> np.ndarray:
    """Python sort of one row per user by (score desc, secondary desc, id asc), candidates only."""
    sec = np.zeros(scores.shape[1]) if secondary is None else secondary
    allowed = [i for i in candidates if i >= 2]
    out = np.zeros((len(scores), n), dtype=np.int64)
    for b, row in enumerate(scores):
        best = sorted(allowed, key=lambda i: (-row[i], -sec[i], i))[:n]
        out[b, :len(best)] = best
    return out


def test_top_n_by_score_matches_sort():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(7, 25)).astype(float)  # many ties
    secondary = rng.integers(0, 3, size=25).astype(float)
    cands = np.sort(rng.choice(25, 15, replace=False))
    for sec in (None, secondary):
        for n in (1, 6, 20):  # 20 > candidates >= 2: padded with 0
            got = top_n_by_score(scores, cands, n, sec)
            assert got.dtype == torch.long
            np.testing.assert_array_equal(got.numpy(), ranked(scores, cands[cands >= 2], n, sec))


def test_training_interactions_are_the_training_sequences(data):
    seqs, train, _, _ = data
    users, items = training_interactions(train)
    for u, s in enumerate(seqs):
        assert sorted(items[users == u].tolist()) == sorted(s.tolist())


def test_popularity(data):
    seqs, train, samples, cands = data
    rec = Popularity(N_ITEMS, cands).fit(train)
    assert isinstance(rec, Recommender)
    counts = np.bincount(np.concatenate(seqs), minlength=N_ITEMS).astype(float)
    assert counts[LEAKY] == 0
    top = rec.recommend(samples, 12)
    np.testing.assert_array_equal(top.numpy(), ranked(np.tile(counts, (len(top), 1)), cands, 12))
    assert not np.isin(top.numpy(), [0, 1, 3, 17]).any()


def test_window_matrix_rows():
    train = train_samples([np.array([2, 3, 4, 5, 6])])
    X = window_matrix(train, 8, window=2).toarray()
    expected = [[2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]]  # target + last 2 behaviours
    assert [np.flatnonzero(r).tolist() for r in X] == expected
    assert set(np.unique(X)) == {0.0, 1.0}


def brute_force_similarity(seqs: list[np.ndarray], window: int) -> np.ndarray:
    """Cosine between items over windows (seq[t] and the `window` items before it), no self."""
    rows = []
    for s in seqs:
        for t in range(1, len(s)):
            r = np.zeros(N_ITEMS)
            r[s[max(0, t - window):t + 1]] = 1.0
            rows.append(r)
    X = np.array(rows)
    norm = np.sqrt((X ** 2).sum(0))
    norm[norm == 0] = 1.0
    sim = (X.T @ X) / np.outer(norm, norm)
    np.fill_diagonal(sim, 0.0)
    return sim


@pytest.mark.parametrize("window,recent", [(1, 2), (3, 5)])
def test_itemcf_matches_brute_force(data, window, recent):
    seqs, train, samples, cands = data
    rec = ItemCF(N_ITEMS, cands, window=window, K=N_ITEMS, recent=recent).fit(train)
    sim = brute_force_similarity(seqs, window)
    np.testing.assert_allclose(rec.similarity.toarray(), sim, atol=1e-12)
    assert (rec.similarity.diagonal() == 0).all() and rec.similarity[LEAKY].nnz == 0
    # score = sum of similarities over the last R behaviours, repeats counted
    ref = np.zeros((len(samples["hist"]), N_ITEMS))
    for b, (h, n) in enumerate(zip(samples["hist"], samples["hist_len"])):
        for i in h[:n][-recent:]:
            ref[b] += sim[i]
    got_scores = rec.scores(samples)
    np.testing.assert_allclose(got_scores, ref, atol=1e-12)
    # ranking: CF score, then training popularity (back-fill), then id
    pop = np.bincount(np.concatenate(seqs), minlength=N_ITEMS).astype(float)
    np.testing.assert_array_equal(rec.recommend(samples, 20).numpy(),
                                  ranked(got_scores, cands, 20, pop))
    res = evaluate(rec, samples, ns=(5, 20))
    ref_top = ranked(got_scores, cands, 20, pop)
    for n in (5, 20):
        assert res[f"hr@{n}"] == pytest.approx(
            np.mean([t in r[:n] for t, r in zip(samples["target"], ref_top)]))


def test_itemcf_keeps_k_nearest_other_items(data):
    seqs, train, _, cands = data
    K = 4
    rec = ItemCF(N_ITEMS, cands, window=2, K=K).fit(train)
    full = brute_force_similarity(seqs, 2)
    for i in range(N_ITEMS):
        row = rec.similarity[i]
        assert row.nnz <= K and i not in row.indices
        # the kept values are the K largest of the full row (which neighbour wins a tie is free)
        top = np.sort(full[i][full[i] > 0])[::-1][:K]
        np.testing.assert_allclose(np.sort(row.data)[::-1], top, atol=1e-12)


def test_recent_items_matrix():
    hist = np.array([[5, 6, 5, 7, 0], [2, 0, 0, 0, 0]])
    m = recent_items_matrix(hist, np.array([4, 1]), 8, last=3).toarray()
    assert m[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]  # last 3 of [5, 6, 5, 7]
    assert m[1].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    m = recent_items_matrix(hist, np.array([4, 1]), 8).toarray()
    assert m[0, 5] == 2  # repeats count


def test_als_fold_in_matches_normal_equations(data):
    seqs, train, samples, cands = data
    rec = ALS(N_ITEMS, cands, factors=6, regularization=0.1, alpha=5.0, iterations=5).fit(train)
    Y = np.asarray(rec.model.item_factors, dtype=np.float64)  # (N, F)
    assert Y.shape == (N_ITEMS, 6)
    assert rec.model.user_factors.shape[0] == len(seqs)  # training users only
    np.testing.assert_allclose(Y[LEAKY], 0.0, atol=1e-6)  # never seen in training
    # implicit ALS: confidence c = alpha * r, p = 1 where r > 0;
    # x_u = (Y'Y + sum_i (c_i - 1) y_i y_i' + reg I)^-1 sum_i c_i y_i
    ref = np.zeros((len(samples["hist"]), N_ITEMS))
    for b, (h, n) in enumerate(zip(samples["hist"], samples["hist_len"])):
        items, r = np.unique(h[:n], return_counts=True)
        c = 5.0 * r
        A = Y.T @ Y + 0.1 * np.eye(6) + (Y[items].T * (c - 1)) @ Y[items]
        x = np.linalg.solve(A, (Y[items] * c[:, None]).sum(0))
        ref[b] = Y @ x
    got = rec.scores(samples)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(rec.recommend(samples, 10).numpy(), ranked(got, cands, 10))
