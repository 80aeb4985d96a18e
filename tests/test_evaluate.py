"""evaluate / evaluate_comirec / ModelRecommender against a brute-force numpy reference."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from mind_model.config import ModelConfig
from mind_model.evaluate import (
    ModelRecommender,
    Recommender,
    comirec_inputs,
    evaluate,
    evaluate_comirec,
    main,
)
from mind_model.model import MIND

N_ITEMS, L = 40, 6


def make_eval_samples(n_users: int, seed: int = 0, max_seq: int = 16) -> dict:
    """Eval rows in the EVAL_SAMPLES layout, built as the prep job does."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("user_idx", "hist", "hist_len", "target", "target_pos", "full_seq",
                            "gender_idx", "age_bucket_idx", "city_tier_idx")}
    for u in range(n_users):
        seq = rng.integers(2, N_ITEMS, size=int(rng.integers(2, max_seq)))
        pos = int(rng.integers(1, len(seq)))
        h = seq[:pos][-L:]
        rows["user_idx"].append(100 + u)
        rows["hist"].append(np.pad(h, (0, L - len(h))))
        rows["hist_len"].append(len(h))
        rows["target"].append(seq[pos])
        rows["target_pos"].append(pos)
        rows["full_seq"].append(seq.astype(np.int64))
        rows["gender_idx"].append(rng.integers(1, 4))
        rows["age_bucket_idx"].append(1)
        rows["city_tier_idx"].append(1)
    return {k: (v if k == "full_seq" else np.asarray(v, dtype=np.int64)) for k, v in rows.items()}


@pytest.fixture(scope="module")
def model() -> MIND:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=N_ITEMS, embed_dim=8, n_interests=3, max_len=L, tower_hidden=(16,),
                      profile_vocab={"gender": 4}, profile_dim=4)
    return MIND(cfg).eval()


@pytest.fixture(scope="module")
def samples() -> dict:
    return make_eval_samples(29)


@pytest.fixture(scope="module")
def candidates() -> np.ndarray:
    # a catalogue without some items (ids 0 and 1 included on purpose: never recommendable)
    rng = np.random.default_rng(1)
    return np.sort(np.concatenate([[0, 1], rng.choice(np.arange(2, N_ITEMS), 30, replace=False)]))


def reference_topn(model: MIND, hist, hist_len, gender, candidates, n: int) -> np.ndarray:
    """Full numpy sort over ALL items of max over active interests, (score desc, id asc)."""
    with torch.no_grad():
        V, mask = model.user_interests(torch.as_tensor(hist), torch.as_tensor(hist_len),
                                       {"gender_idx": torch.as_tensor(gender)})
        E = model.all_item_embeddings().double().numpy()  # (N, D)
    V, mask = V.double().numpy(), mask.numpy()
    s = np.einsum("bkd,nd->bkn", V, E)
    s = np.where(mask[:, :, None], s, -np.inf).max(1)  # (B, N)
    allowed = np.zeros(N_ITEMS, bool)
    allowed[candidates] = True
    allowed[:2] = False
    out = np.zeros((len(hist), n), dtype=np.int64)
    ids = np.arange(N_ITEMS)
    for b in range(len(hist)):
        order = [i for i in np.lexsort((ids, -s[b])) if allowed[i]][:n]
        out[b, :len(order)] = order  # fewer candidates than n: padded with 0
    return out


def test_model_recommender_matches_brute_force(model, samples, candidates):
    rec = ModelRecommender(model, candidates)
    assert isinstance(rec, Recommender)
    n = 35  # more than the 30 real candidates: the tail is padding
    got = rec.recommend({k: samples[k] for k in ("hist", "hist_len", "gender_idx")}, n)
    ref = reference_topn(model, samples["hist"], samples["hist_len"], samples["gender_idx"],
                         candidates, n)
    assert got.dtype == torch.long and got.shape == (len(ref), n)
    np.testing.assert_array_equal(got.numpy(), ref)
    real = got[:, :30].numpy()
    assert np.isin(real, candidates[candidates >= 2]).all()
    assert (got[:, 30:] == 0).all()


def test_evaluate_matches_brute_force_and_ignores_batching(model, samples, candidates):
    ns = (1, 5, 20)
    rec = ModelRecommender(model, candidates)
    ref = reference_topn(model, samples["hist"], samples["hist_len"], samples["gender_idx"],
                         candidates, max(ns))
    expected = {f"hr@{n}": float(np.mean([t in row[:n] for t, row in zip(samples["target"], ref)]))
                for n in ns}
    for bs in (4, 1000):
        got = evaluate(rec, samples, ns=ns, batch_size=bs)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-6)
        assert got["users"] == len(samples["target"])
        assert got["seconds"] > 0 and got["users_per_s"] > 0
    # targets outside the catalogue are misses, so some users must be unreachable here
    assert not np.isin(samples["target"], candidates).all()
    per_user = evaluate(rec, samples, ns=ns, batch_size=4, per_user=True)["hits"]
    for n in ns:
        brute = np.array([t in row[:n] for t, row in zip(samples["target"], ref)])
        np.testing.assert_array_equal(per_user[n], brute)


def test_comirec_inputs_split():
    s = {"full_seq": [np.arange(2, 12), np.array([5, 6]), np.array([7]), np.arange(2, 22)],
         "hist": np.zeros((4, 4), dtype=np.int64), "gender_idx": np.array([1, 2, 3, 2])}
    batch, targets = comirec_inputs(s)
    # m=10: k=8, last L=4 of the first 8; m=2: k=1; m=1: dropped; m=20: k=16
    np.testing.assert_array_equal(batch["hist"], [[6, 7, 8, 9], [5, 0, 0, 0], [14, 15, 16, 17]])
    np.testing.assert_array_equal(batch["hist_len"], [4, 1, 4])
    np.testing.assert_array_equal(batch["gender_idx"], [1, 2, 2])
    assert [t.tolist() for t in targets] == [[10, 11], [6], [18, 19, 20, 21]]


def test_evaluate_comirec_matches_brute_force(model, samples, candidates):
    ns = (3, 10)
    rec = ModelRecommender(model, candidates)
    hists, lens, tsets = [], [], []
    for seq in samples["full_seq"]:
        k = int(len(seq) * 0.8)  # ComiRec's split point
        h = list(seq[:k])[-L:]
        hists.append(h + [0] * (L - len(h)))
        lens.append(len(h))
        tsets.append(set(seq[k:].tolist()))
    ref = reference_topn(model, np.array(hists), np.array(lens), samples["gender_idx"],
                         candidates, max(ns))
    for bs in (5, 1000):
        got = evaluate_comirec(rec, samples, ns=ns, batch_size=bs)
        for n in ns:
            hits = [len(t & set(row[:n].tolist())) for t, row in zip(tsets, ref)]
            recall = np.mean([h / len(t) for h, t in zip(hits, tsets)])
            assert got[f"recall@{n}"] == pytest.approx(recall)
            assert got[f"hr@{n}"] == pytest.approx(np.mean([h > 0 for h in hits]))
        assert got["users"] == len(samples["full_seq"])


def test_inactive_interests_are_ignored(model, samples):
    """A user with one behaviour has K'_u = 1: garbage in the masked interests must not matter."""
    rec = ModelRecommender(model)
    batch = {"hist": samples["hist"][:3].copy(), "hist_len": np.ones(3, dtype=np.int64),
             "gender_idx": samples["gender_idx"][:3]}
    V, mask = rec.interests(batch)
    assert mask.sum(1).tolist() == [1, 1, 1]
    top = rec.recommend(batch, 10)
    with torch.no_grad():
        e = model.all_item_embeddings()
    s = V[:, 0] @ e.T  # (B, N): the single active interest
    s[:, :2] = float("-inf")
    expected = torch.stack([
        torch.tensor(sorted(range(N_ITEMS), key=lambda i: (-s[b, i].item(), i))[:10])
        for b in range(3)])
    assert torch.equal(top, expected)


class _BadShape:
    def recommend(self, batch, n):
        return torch.zeros((len(batch["hist_len"]), n - 1), dtype=torch.long)


def test_wrong_shape_is_an_error(samples):
    with pytest.raises(ValueError, match="recommend returned"):
        evaluate(_BadShape(), samples, ns=(5,))


def test_cli_with_lazy_checkpoint_loader(model, samples, candidates, tmp_path, monkeypatch, capsys):
    import mind_model.data as data

    fake = types.ModuleType("mind_model.checkpoint")
    fake.load_model = lambda path, device="cpu": model.to(device)
    monkeypatch.setitem(sys.modules, "mind_model.checkpoint", fake)
    monkeypatch.setattr(data, "load_meta", lambda d: types.SimpleNamespace(active_items=candidates))
    monkeypatch.setattr(data, "read_eval", lambda d, split: samples)
    out = tmp_path / "res.json"
    assert main(["--model", "ck.pt", "--data", str(tmp_path), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == res
    direct = evaluate(ModelRecommender(model, candidates), samples)
    assert {k: res["paper"][k] for k in ("hr@10", "hr@50", "hr@100")} == \
        pytest.approx({k: direct[k] for k in ("hr@10", "hr@50", "hr@100")})
    assert set(res["comirec"]) >= {"recall@20", "hr@20", "recall@50", "hr@50", "users_per_s"}


def test_ids_unknown_to_the_model_are_oov(model, samples):
    """Today's data may hold items newer than the model: they count as the unknown id 1."""
    rec = ModelRecommender(model, candidates=np.arange(N_ITEMS + 5))  # extra ids: skipped
    assert rec.n_candidates == N_ITEMS - 2
    batch = {k: samples[k][:4].copy() for k in ("hist", "hist_len", "gender_idx")}
    newer, unk = dict(batch), dict(batch)
    newer["hist"] = batch["hist"].copy()
    newer["hist"][:, 0] = N_ITEMS + 3
    unk["hist"] = batch["hist"].copy()
    unk["hist"][:, 0] = 1
    assert torch.equal(rec.recommend(newer, 10), rec.recommend(unk, 10))


def test_interest_topn_is_each_interest_alone(model, samples, candidates):
    rec = ModelRecommender(model, candidates)
    batch = {k: samples[k][:5] for k in ("hist", "hist_len", "gender_idx")}
    V, mask = rec.interests(batch)
    per = rec.interest_topn(V, 7)  # (B, K, 7)
    assert per.shape == (5, V.shape[1], 7)
    with torch.no_grad():
        E = model.all_item_embeddings().double().numpy()
    allowed = set(candidates[candidates >= 2].tolist())
    for b in range(5):
        for k in range(int(mask[b].sum())):
            s = E @ V[b, k].double().numpy()
            ref = [i for i in np.lexsort((np.arange(N_ITEMS), -s)) if i in allowed][:7]
            assert per[b, k].tolist() == ref
