"""FAISS helpers: index choice, shards, multi-interest merge, recall tuning, vs brute force."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from artefacts import index as ix
from mind_model.metrics import topn_multi_interest

D = 16


def clustered(n: int, seed: int = 0, clusters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors around `clusters` centres; ids 2..n+1 (0 and 1 are reserved)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, D)) * 2
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, D)) * 0.5
    return x.astype(np.float32), np.arange(2, n + 2, dtype=np.int64)


def users(n: int, seed: int = 1, k_max: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((k, D)).astype(np.float32) for k in rng.integers(1, k_max + 1, n)]


def same_ids(a: list[ix.Hits], b: list[ix.Hits]) -> bool:
    return all(np.array_equal(x.ids, y.ids) for x, y in zip(a, b))


def test_choose_factory_by_catalogue_size():
    assert ix.choose_factory(99_999) == "Flat"
    assert ix.choose_factory(1_000_000) == "IVF4096,PQ64x4fs,RFlat"
    assert ix.choose_factory(1_000_000, dim=32) == "IVF4096,PQ32x4fs,RFlat"
    assert ix.choose_factory(1_000_000, gpu=True) == "IVF4096_HNSW32,Flat"
    assert ix.choose_factory(10**8) == "IVF32768_HNSW32,PQ64x4fs,RFlat"  # graph quantiser
    assert ix.choose_factory(5000, exact_below=1000) == "IVF256,PQ64x4fs,RFlat"
    assert ix.default_nlist(10) == 64 and ix.default_nlist(10**12) == 1 << 18


def brute_topk(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int):
    """Every score computed, sorted by (score desc, item order): the reference."""
    scores = q.astype(np.float64) @ x.astype(np.float64).T  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def integer_vectors(rng: np.random.Generator, n: int, scale: int = 9) -> np.ndarray:
    """Small integers: float32 sums of products are exact whatever the GEMM's order, so
    the reference is bit-exact, and equal scores (ties) are common."""
    return rng.integers(-scale, scale + 1, (n, 8)).astype(np.float32)


@pytest.mark.parametrize("n, q, k", [(60_000, 300, 300), (20_000, 300, 1000), (5_000, 300, 256),
                                     (50_000, 40, 1000)])
def test_exact_topk_equals_brute_force_ties_in_item_order(n, q, k):
    """The threshold path (the first two) and faiss.knn (small inputs: the last two)."""
    rng = np.random.default_rng(n)
    x, queries = integer_vectors(rng, n), integer_vectors(rng, q)
    ids = rng.permutation(n).astype(np.int64) + 2
    ref_D, ref_I = brute_topk(x, ids, queries, k)
    D, I = ix.exact_topk(x, ids, queries, k, item_block=1000, query_block=128)
    assert D.shape == I.shape == (q, k)
    np.testing.assert_array_equal(D, ref_D)
    if q * n >= 1 << 22:  # the threshold path orders equal scores by item
        np.testing.assert_array_equal(I, ref_I)
    for d, i, rd, ri in zip(D, I, ref_D, ref_I):  # either way: the same items above the k-th
        above = d > d[-1]
        assert set(i[above]) == set(ri[rd > rd[-1]])


def test_exact_topk_stays_exact_when_the_sample_holds_the_best_items(monkeypatch):
    """The threshold comes from every (n // m)-th item: put the best items exactly there,
    so it lands above the k-th best score, and those queries must be answered anyway."""
    n, k = 40_000, 300
    rng = np.random.default_rng(3)
    x, q = integer_vectors(rng, n), integer_vectors(rng, 200)
    step = n // min(n, 1 << 16, max(4096, int(np.ceil(64 * n / (1.5 * k)))))
    x[::step] *= 5  # the sample: every item it holds scores high
    ids = np.arange(2, n + 2, dtype=np.int64)
    answered_again = []
    knn = ix._knn
    monkeypatch.setattr(ix, "_knn", lambda q, *a: answered_again.append(len(q)) or knn(q, *a))
    D, I = ix.exact_topk(x, ids, q, k)
    assert sum(answered_again) > 100  # most queries' thresholds were too high
    ref_D, ref_I = brute_topk(x, ids, q, k)
    np.testing.assert_array_equal(D, ref_D)
    for d, i, rd, ri in zip(D, I, ref_D, ref_I):
        assert set(i[d > d[-1]]) == set(ri[rd > rd[-1]])


def test_exact_index_equals_torch_brute_force():
    x, ids = clustered(3000)
    qs = users(50)
    index = ix.combine(ix.build_shards(x, ids, "Flat", 1))
    got = ix.multi_interest_search(index, qs, 25)
    # metrics.topn_multi_interest over an embedding table whose row = item id
    table = torch.zeros(ids.max() + 1, D)
    table[ids] = torch.from_numpy(x)
    V = torch.zeros(len(qs), 4, D)
    mask = torch.zeros(len(qs), 4, dtype=torch.bool)
    for u, q in enumerate(qs):
        V[u, :len(q)] = torch.from_numpy(q)
        mask[u, :len(q)] = True
    scores, ref = topn_multi_interest(V, mask, table, 25)
    for h, s, r in zip(got, scores.numpy(), ref.numpy()):
        np.testing.assert_array_equal(h.ids, r)
        np.testing.assert_allclose(h.scores, s, rtol=1e-5, atol=1e-5)
    assert same_ids(got, ix.exact_multi_interest(x, ids, qs, 25))


@pytest.mark.parametrize("factory,params", [
    ("Flat", {}), ("IVF32,Flat", {"nprobe": 4}), ("IVF32_HNSW32,Flat", {"nprobe": 4}),
    ("IVF32,PQ8x4fs,RFlat", {"nprobe": 4, "k_factor": 2})])
def test_sharded_search_equals_unsharded(factory, params, tmp_path):
    x, ids = clustered(4000)
    qs = users(40)
    seen = [np.random.default_rng(u).choice(ids, 30) for u in range(len(qs))]
    one = ix.combine(ix.build_shards(x, ids, factory, 1))
    shards = ix.build_shards(x, ids, factory, 4)
    files = ix.write_shards(shards, tmp_path)
    assert [f["file"] for f in files] == [f"shard-00{i}.faiss" for i in range(4)]
    assert sum(f["items"] for f in files) == len(ids)
    many = ix.combine(ix.read_shards(tmp_path, [f["file"] for f in files]))
    assert isinstance(many, faiss.IndexShards) and many.ntotal == len(ids)
    ix.set_search_params(one, params)
    ix.set_search_params(many, params)
    merged = ix.combine(ix.read_shards(tmp_path, [f["file"] for f in files]), merge=True)
    assert not isinstance(merged, faiss.IndexShards) and merged.ntotal == len(ids)
    ix.set_search_params(merged, params)
    for n in (10, 100):
        want = ix.multi_interest_search(one, qs, n, seen)
        if "RFlat" not in factory:
            assert same_ids(want, ix.multi_interest_search(many, qs, n, seen))
            assert same_ids(want, ix.multi_interest_search(merged, qs, n, seen))
            continue
        # a refined index: each shard re-ranks its own k x k_factor candidates, so shards
        # differ from one index; merged, the candidates are one index's again, up to ties of
        # the 4-bit codes at the pool's edge; every score is the exact one of its id
        got = ix.multi_interest_search(merged, qs, n, seen)
        assert ix.recall(got, want) >= 0.99
        vec = dict(zip(ids.tolist(), x))
        for q, h in zip(qs, got):
            exact = np.array([(q @ vec[i]).max() for i in h.ids.tolist()])
            np.testing.assert_allclose(h.scores, exact, rtol=1e-5, atol=1e-4)


def test_default_ann_factory_passes_a_gate_with_exact_scores():
    x, ids = clustered(6000)
    qs = users(40)
    factory = ix.choose_factory(len(ids), dim=D, exact_below=1000)
    assert factory == "IVF256,PQ16x4fs,RFlat"
    shards = ix.build_shards(x, ids, factory, 2)
    index = ix.combine(shards, merge=True)
    assert not isinstance(index, faiss.IndexShards) and index.ntotal == len(ids)
    exact = ix.exact_multi_interest(x, ids, qs, 100)
    params, r, _ = ix.tune(index, shards[0], qs, exact, 100, 0.95)
    assert r >= 0.95 and params["k_factor"] == ix.REFINE_K_FACTOR
    got = ix.multi_interest_search(index, qs, 100)
    assert ix.recall(got, exact) == r
    for q, h in zip(qs, got):  # re-ranked: every score is the item's exact best inner product
        np.testing.assert_allclose(h.scores, (x[h.ids - 2] @ q.T).max(1), rtol=1e-5, atol=1e-4)


def test_unmergeable_shards_are_searched_together():
    x, ids = clustered(600)
    shards = ix.build_shards(x, ids, "HNSW16,Flat", 2)
    index = ix.combine(shards, merge=True)
    assert isinstance(index, faiss.IndexShards) and index.ntotal == len(ids)


def test_merge_keeps_best_score_and_its_interest():
    # 4 items on the axes; interest 0 likes item 2, interest 1 likes items 3 and 2 (less)
    x = np.zeros((4, D), np.float32)
    for j in range(4):
        x[j, j] = 1.0
    ids = np.array([2, 3, 4, 5])
    index = ix.combine(ix.build_shards(x, ids, "Flat", 2))
    q = np.zeros((2, D), np.float32)
    q[0, :4] = [2.0, 0.0, 0.2, 0.1]  # scores of items 2, 3, 4, 5 for interest 0
    q[1, :4] = [1.0, 3.0, 0.0, 0.0]  # ... and for interest 1
    (h,) = ix.multi_interest_search(index, [q], 3)
    assert h.ids.tolist() == [3, 2, 4] and h.interest.tolist() == [1, 0, 0]
    np.testing.assert_allclose(h.scores, [3.0, 2.0, 0.2], rtol=1e-6)
    (h,) = ix.multi_interest_search(index, [q], 10, exclude=[[3]])
    assert h.ids.tolist() == [2, 4, 5]  # excluded item gone; fewer than n items exist


def reference_merge(D: np.ndarray, I: np.ndarray, n: int, exclude) -> list[tuple]:
    """Plain Python: each item's best score (first interest on ties), score desc, id asc."""
    best: dict[int, tuple[float, int]] = {}
    for j in range(len(I)):
        for i, s in zip(I[j].tolist(), D[j].tolist()):
            if i < 2 or i in exclude:
                continue
            if i not in best or s > best[i][0]:
                best[i] = (s, j)
    return sorted(((i, s, j) for i, (s, j) in best.items()), key=lambda t: (-t[1], t[0]))[:n]


def test_merge_equals_plain_python_with_ties_and_padding():
    rng = np.random.default_rng(5)
    levels = np.array([-2.5, -0.0, 0.0, 0.75, 1.5, 3.0, -np.inf], np.float32)  # many ties
    for case in range(300):
        k_active, k, n = rng.integers(1, 6), rng.integers(1, 40), rng.integers(1, 60)
        I = rng.integers(-1, rng.integers(3, 120), (k_active, k))  # -1: faiss's padding
        D = (rng.choice(levels, (k_active, k)) if case % 2 else
             rng.standard_normal((k_active, k)).astype(np.float32))
        exclude = rng.integers(2, 40, rng.integers(0, 6))
        h = ix._merge_user(D, I, n, exclude)
        want = reference_merge(D, I, n, set(exclude.tolist()))
        assert h.ids.tolist() == [i for i, _, _ in want]
        assert h.scores.tolist() == [s for _, s, _ in want]
        assert h.interest.tolist() == [j for _, _, j in want]


def test_users_without_vectors_are_rejected():
    x, ids = clustered(100)
    index = ix.combine(ix.build_shards(x, ids, "Flat", 1))
    with pytest.raises(ValueError, match="at least one active interest"):
        ix.multi_interest_search(index, [np.zeros((0, D), np.float32)], 5)


def test_build_rejects_reserved_ids():
    x, ids = clustered(10)
    with pytest.raises(ValueError, match=">= 2"):
        ix.build_shards(x, ids - 2, "Flat", 1)


def test_tune_finds_the_smallest_nprobe_reaching_the_threshold():
    x, ids = clustered(5000)
    qs = users(60)
    exact = ix.exact_multi_interest(x, ids, qs, 50)
    shards = ix.build_shards(x, ids, "IVF64,Flat", 2)
    index = ix.combine(shards)
    params, recall, tried = ix.tune(index, shards[0], qs, exact, 50, 0.95)
    assert recall >= 0.95 and (params["nprobe"], recall) in tried and len(tried) > 1
    assert all(r < 0.95 for v, r in tried if v < params["nprobe"])
    # the index is left at the chosen value, not at the last one tried
    assert ix.recall(ix.multi_interest_search(index, qs, 50), exact) == recall
    params, bad, _ = ix.tune(index, shards[0], qs, exact, 50, 0.99, value=1)
    assert params == {"nprobe": 1} and bad < 0.95
    flat = ix.build_shards(x, ids, "Flat", 1)
    assert ix.tune(ix.combine(flat), flat[0], qs, exact, 50, 0.99) == ({}, 1.0, [])


def test_finer_ladder_between_powers_of_two():
    assert ix.finer(128, 256) == [152, 181, 215]  # 128 * 2^(i/4)
    assert ix.finer(1, 2) == [] and ix.finer(2, 4) == [3]
    x, ids = clustered(8000, clusters=20)
    qs = users(60)
    exact = ix.exact_multi_interest(x, ids, qs, 100)
    (shard,) = ix.build_shards(x, ids, "IVF64,Flat", 1)

    def recall_at(v: int) -> float:  # measured here, independently of tune
        ix.set_search_params(shard, {"nprobe": v})
        return ix.recall(ix.multi_interest_search(shard, qs, 100), exact)

    # a threshold that nprobe 11 reaches and the power of two below (8) does not
    threshold = recall_at(11)
    assert recall_at(8) < threshold <= recall_at(16)
    grid = [1, 2, 4, 8, *ix.finer(8, 16), 16]
    want = min(v for v in grid if recall_at(v) >= threshold)
    assert want in (10, 11)
    params, r, tried = ix.tune(shard, shard, qs, exact, 100, threshold)
    assert params == {"nprobe": want} and r == recall_at(want) >= threshold
    assert [v for v, _ in tried] == [1, 2, 4, 8, 16, *[v for v in (10, 11) if v <= want]]


def test_gpu_cloning_falls_back_to_cpu_without_gpus():
    if faiss.get_num_gpus() > 0:
        pytest.skip("GPUs present")
    x, ids = clustered(500)
    shards = ix.build_shards(x, ids, "Flat", 2)
    index, on_gpu = ix.to_gpus(shards)
    assert not on_gpu and index.ntotal == 500


@pytest.mark.gpu
def test_gpu_search_equals_cpu():
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss sees no GPU (faiss-cpu installed?)")
    x, ids = clustered(20_000)
    qs = users(30)
    shards = ix.build_shards(x, ids, "Flat", 2)
    gpu, on_gpu = ix.to_gpus(shards)
    assert on_gpu
    assert same_ids(ix.multi_interest_search(gpu, qs, 50),
                    ix.multi_interest_search(ix.combine(shards), qs, 50))
