"""Retrieval scoring and metrics against brute-force numpy / python references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mind_model.metrics import (
    hit_rate_at,
    interest_diversity,
    recall_hr_at,
    routing_sharpness,
    topn_multi_interest,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_case(seed: int = 0, B: int = 5, K: int = 3, D: int = 4, N: int = 50):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    mask = torch.rand(B, K, generator=g) < 0.6
    mask[:, 0] = True  # K'_u >= 1 always
    E = torch.randn(N, D, generator=g, dtype=torch.float64)
    return V, mask, E


def ref_topn(V, mask, E, n, exclude=None):
    """Brute force: full score matrix, max over active interests, sort by (-score, id)."""
    V, mask, E = V.numpy(), mask.numpy(), E.numpy()
    out_s, out_i = [], []
    for u in range(V.shape[0]):
        s = (V[u][mask[u]] @ E.T).max(0)  # (N,)
        s[:2] = -np.inf
        if exclude is not None:
            s[[x for x in exclude[u].tolist()]] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))[:n]  # last key is primary
        out_s.append(s[order])
        out_i.append(order)
    return np.stack(out_s), np.stack(out_i)


def ref_per_interest_merge(V, mask, E, n):
    """The serving protocol: each active interest's own top n, merged, best score per item."""
    out = []
    for u in range(V.shape[0]):
        best: dict[int, float] = {}
        for k in range(V.shape[1]):
            if not mask[u, k]:
                continue
            s = (E @ V[u, k]).tolist()
            for i in sorted(range(2, len(s)), key=lambda i: (-s[i], i))[:n]:
                best[i] = max(best.get(i, -math.inf), s[i])
        out.append([i for i, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]])
    return out


@pytest.mark.parametrize("chunk", [1, 3, 8, 49, 1000])
def test_chunked_topn_equals_full_sort(chunk):
    V, mask, E = random_case()
    scores, idx = topn_multi_interest(V, mask, E, n=7, chunk_size=chunk)
    ref_s, ref_i = ref_topn(V, mask, E, 7)
    assert scores.shape == idx.shape == (5, 7) and idx.dtype == torch.long
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-12)


def test_max_over_interests_equals_per_interest_topn_merge():
    V, mask, E = random_case(seed=1, B=6, K=4, N=40)
    _, idx = topn_multi_interest(V, mask, E, n=6, chunk_size=16)
    assert idx.tolist() == ref_per_interest_merge(V, mask, E, 6)


def test_ties_are_handled_within_tolerance():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 3, generator=g, dtype=torch.float64)
    E = base[torch.randint(0, 6, (40,), generator=g)]  # many exact duplicates -> exact ties
    V = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    ref_s, ref_i = ref_topn(V, mask, E, 10)
    for chunk in (4, 7, 100):
        scores, idx = topn_multi_interest(V, mask, E, n=10, chunk_size=chunk)
        np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-12)
        for u in range(4):
            ids = idx[u].tolist()
            assert len(set(ids)) == 10 and min(ids) >= 2
            true = (V[u][mask[u]] @ E[idx[u]].t()).amax(0)  # the ids really have those scores
            np.testing.assert_allclose(true.numpy(), scores[u].numpy(), rtol=1e-12)
            # items strictly above the n-th score are the same set; ties are in id order
            above = ref_s[u] > ref_s[u, -1]
            assert set(np.array(ids)[above]) == set(ref_i[u][above])
            for a, b in zip(range(9), range(1, 10)):
                if scores[u, a] == scores[u, b]:
                    assert ids[a] < ids[b]


def test_mistake7_masked_interests_never_retrieve_and_users_stay_separate():
    """Mistake 7: inactive interests left in the query; a (B, K, D) array flattened wrongly."""
    E = torch.eye(6, dtype=torch.float64)  # item i = unit vector i (items 2..5 are real)
    V = torch.zeros(2, 3, 6, dtype=torch.float64)
    V[0, 0, 2] = 1.0  # active: likes item 2
    V[0, 1, 5] = 10.0  # inactive, pointing exactly at item 5
    V[1, 0, 3] = 1.0
    V[1, 1, 4] = 0.5  # user 1 has 2 active interests
    mask = torch.tensor([[True, False, False], [True, True, False]])
    s, idx = topn_multi_interest(V, mask, E, n=2)
    assert idx[0, 0] == 2 and 5 not in idx[0].tolist()
    assert idx[1].tolist() == [3, 4] and s[1].tolist() == [1.0, 0.5]
    # the same user scored alone gives the same result: no mixing across users
    for u in range(2):
        s_u, idx_u = topn_multi_interest(V[u:u + 1], mask[u:u + 1], E, n=2)
        assert torch.equal(idx_u[0], idx[u]) and torch.equal(s_u[0], s[u])
    with pytest.raises(ValueError):
        topn_multi_interest(V.reshape(6, 6), mask, E, n=2)  # flattened V is refused
    with pytest.raises(ValueError):
        topn_multi_interest(V, mask.reshape(-1), E, n=2)


def test_pad_unknown_and_excluded_items_are_never_returned():
    V, mask, E = random_case(seed=3, B=3, N=20)
    E[0] = E[1] = 100 * V[0, 0]  # padding/unknown rows that would win
    exclude = torch.tensor([[5, 6, 0], [7, 0, 0], [19, 2, 3]])
    for chunk in (3, 64):
        s, idx = topn_multi_interest(V, mask, E, n=8, exclude=exclude, chunk_size=chunk)
        ref_s, ref_i = ref_topn(V, mask, E, 8, exclude=exclude)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        for u in range(3):
            assert not set(idx[u].tolist()) & (set(exclude[u].tolist()) | {0, 1})
    # asking for more than the catalogue holds: the tail is id 0 at -inf
    s, idx = topn_multi_interest(V, mask, E, n=25)
    assert torch.isinf(s[:, 18:]).all() and (idx[:, 18:] == 0).all() and (idx[:, :18] >= 2).all()


def test_hit_rate_against_reference():
    rng = np.random.default_rng(4)
    top = torch.as_tensor(np.stack([rng.permutation(np.arange(2, 200))[:100] for _ in range(40)]))
    targets = torch.as_tensor(rng.integers(2, 200, 40))
    got = hit_rate_at(top, targets, ns=(10, 50, 100))
    for n in (10, 50, 100):
        want = sum(int(targets[u]) in top[u, :n].tolist() for u in range(40)) / 40
        assert got[f"hr@{n}"] == pytest.approx(want)
    assert hit_rate_at(top[:, :1], top[:, 0], ns=(1,)) == {"hr@1": 1.0}
    with pytest.raises(ValueError):
        hit_rate_at(top[:, :20], targets, ns=(50,))


def test_recall_and_hr_comirec_against_reference():
    rng = np.random.default_rng(5)
    top = torch.as_tensor(np.stack([rng.permutation(np.arange(2, 80))[:50] for _ in range(30)]))
    target_sets = [list(rng.integers(2, 80, rng.integers(1, 8))) for _ in range(29)] + [[]]
    target_sets[0] = target_sets[0] + target_sets[0]  # duplicates count once
    got = recall_hr_at(top, target_sets, ns=(20, 50))
    for n in (20, 50):
        recalls, hits = [], []
        for u, t in enumerate(target_sets):
            if not t:
                continue  # no targets: skipped, not a zero
            inter = [x for x in set(t) if x in top[u, :n].tolist()]
            recalls.append(len(inter) / len(set(t)))
            hits.append(len(inter) > 0)
        assert got[f"recall@{n}"] == pytest.approx(np.mean(recalls))
        assert got[f"hr@{n}"] == pytest.approx(np.mean(hits))
    assert 0 < got["recall@20"] < got["recall@50"]
    tiny = recall_hr_at(torch.tensor([[2, 3], [4, 5]]), [{3, 9}, {9}], ns=(2,))
    assert tiny == {"recall@2": pytest.approx(0.25), "hr@2": pytest.approx(0.5)}


def test_interest_diversity_against_reference():
    V, mask, _ = random_case(seed=6, B=8, K=4)
    V[2, 1] = 0  # a zero interest vector must not give NaN
    mask[2, 1] = True
    mask[3] = torch.tensor([True, False, False, False])  # one interest: excluded
    per_user = []
    for u in range(8):
        act = [V[u, k].numpy() for k in range(4) if mask[u, k]]
        if len(act) < 2:
            continue
        cos = [a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300)
               if np.linalg.norm(a) * np.linalg.norm(b) > 0
               else 0.0 for i, a in enumerate(act) for b in act[i + 1:]]
        per_user.append(np.mean(cos))
    got = interest_diversity(V, mask)
    assert not math.isnan(got) and got == pytest.approx(np.mean(per_user), abs=1e-9)
    same = torch.ones(2, 3, 4)
    assert interest_diversity(same, torch.ones(2, 3, dtype=torch.bool)) == pytest.approx(1.0)
    assert math.isnan(interest_diversity(same, torch.tensor([[True, False, False]] * 2)))


def test_routing_sharpness_against_hand_computed_values():
    # user 0: K'=2; behaviour 0 fully in interest 0 (sharpness 1), behaviour 1 split
    # (0.5, 0.5) (sharpness 0), position 2 is padding (ignored).
    # user 1: K'=3 of K=3, one behaviour (0.5, 0.25, 0.25): 1 - H / log 3.
    # user 2: K'=1 — no choice to make, left out.
    coupling = torch.tensor([
        [[1.0, 0.5, 0.3], [0.0, 0.5, 0.7], [0.0, 0.0, 0.0]],
        [[0.5, 0.0, 0.0], [0.25, 0.0, 0.0], [0.25, 0.0, 0.0]],
        [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ])  # (B=3, K=3, L=3)
    imask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    bmask = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    total, n = routing_sharpness(coupling, imask, bmask)
    h1 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert n == 3
    assert total == pytest.approx(1.0 + 0.0 + (1 - h1 / math.log(3)), abs=1e-6)
    assert routing_sharpness(coupling[2:], imask[2:], bmask[2:]) == (0.0, 0)
