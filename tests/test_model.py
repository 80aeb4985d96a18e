"""MIND modules: shapes, Algorithm 1 against a hand-written reference, and one test
per mistake listed in docs/MISTAKES.md (mistakes public MIND implementations made)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mind_model.config import ModelConfig, mind_1, youtube_dnn
from mind_model.loss import SampledSoftmaxLoss
from mind_model.metrics import interest_diversity, topn_multi_interest
from mind_model.model import (
    MIND,
    B2IRouting,
    ItemEmbedding,
    LabelAwareAttention,
    n_active_interests,
    recent_behaviours,
    squash,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(n_items=30, n_categories=6, n_brands=5,
                profile_vocab={"gender": 4, "age_bucket": 6},
                profile_dim=4, embed_dim=8, max_len=8, tower_hidden=(16,), n_interests=4, n_neg=16)
    base.update(kw)
    return ModelConfig(**base)


def make_batch(B: int = 4, L: int = 8, n_items: int = 30, lens=None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens if lens is not None else [1, 3, 5, 8][:B] + [L] * max(0, B - 4))
    hist = torch.randint(2, n_items, (B, L), generator=g)
    hist[torch.arange(L)[None, :] >= lens[:, None]] = 0  # right padding
    return {"hist": hist, "hist_len": lens, "target": torch.randint(2, n_items, (B,), generator=g),
            "gender_idx": torch.randint(1, 4, (B,), generator=g),
            "age_bucket_idx": torch.randint(1, 6, (B,), generator=g)}


# ------------------------------------------------------------------ reference Algorithm 1


def ref_squash(z: torch.Tensor) -> torch.Tensor:
    n2 = float((z * z).sum())
    return z * 0 if n2 == 0 else n2 / (1 + n2) * z / math.sqrt(n2)


def ref_routing(e_hat: torch.Tensor, b0: torch.Tensor, iters: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for ONE user with only its real behaviours (n, D) and its K' active
    interests' initial logits (K', n), written with explicit loops."""
    Kp, n = b0.shape
    b = b0.clone()
    for _ in range(iters):
        w = torch.zeros(Kp, n, dtype=e_hat.dtype)
        for i in range(n):  # softmax over interests j, per behaviour i
            den = sum(math.exp(b[j, i]) for j in range(Kp))
            for j in range(Kp):
                w[j, i] = math.exp(b[j, i]) / den
        u = torch.stack([ref_squash(sum(w[j, i] * e_hat[i] for i in range(n))) for j in range(Kp)])
        for j in range(Kp):
            for i in range(n):
                b[j, i] = b[j, i] + float(u[j] @ e_hat[i])
    return u, w


def functional_routing(e, S, b0, iters, detach_early: bool):
    """Routing without masks, in plain ops, with or without detaching e_hat early."""
    e_hat = e @ S.t()
    b = b0.clone()
    for it in range(iters):
        src = e_hat if (it == iters - 1 or not detach_early) else e_hat.detach()
        w = torch.softmax(b, dim=1)
        u = squash(torch.einsum("bkl,bld->bkd", w, src))
        b = b + torch.einsum("bkd,bld->bkl", u, src)
    return u


# ------------------------------------------------------------------------------- config


def test_config_roundtrip_and_factories():
    cfg = tiny_cfg(pow_p=math.inf)
    d = json.loads(json.dumps(cfg.to_dict()))  # survives JSON (inf as Infinity)
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict({**d, "pow_p": "inf"}).pow_p == math.inf
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**d, "bogus": 1})
    yt, m1 = youtube_dnn(cfg), mind_1(cfg)
    assert (yt.pooling, yt.n_interests, m1.pooling, m1.n_interests) == ("mean", 1, "routing", 1)
    assert yt.n_items == cfg.n_items and m1.embed_dim == cfg.embed_dim
    for bad in (dict(pooling="max"), dict(sampler="uniform"), dict(pooling="mean"),
                dict(pow_p=-1.0)):
        with pytest.raises(ValueError):
            tiny_cfg(**bad)
    assert tiny_cfg(profile_vocab={"gender": 0}).profile_fields == ()  # 0 = absent


# ---------------------------------------------------------------------------- embeddings


def test_item_embedding_is_mean_of_id_and_side_embeddings():
    emb = ItemEmbedding(n_items=10, dim=4, n_categories=5, n_brands=3)
    cat = torch.tensor([0, 1, 2, 3, 4, 2, 2, 1, 3, 4])
    brand = torch.tensor([0, 1, 2, 1, 2, 2, 1, 1, 2, 2])
    emb.set_item_side(cat, brand)
    idx = torch.tensor([[3, 7], [9, 0]])
    want = (emb.item.weight[idx] + emb.sides["category"].weight[cat[idx]]
            + emb.sides["brand"].weight[brand[idx]]) / 3
    torch.testing.assert_close(emb(idx), want)
    assert emb(idx).shape == (2, 2, 4)
    assert torch.all(emb(torch.tensor([0])) == 0)  # padding -> zero vector
    # rows of the item_features table: only the listed items change
    emb.set_item_side(torch.tensor([4]), torch.tensor([1]), item_idx=torch.tensor([5]))
    assert emb.item_category[5] == 4 and emb.item_brand[5] == 1 and emb.item_category[6] == 2
    assert "item_category" in emb.state_dict()  # side maps travel with the checkpoint
    with pytest.raises(ValueError):
        emb.set_item_side(torch.full((10,), 7), None)  # category 7 outside the vocabulary


def test_rare_items_share_the_unknown_row_and_differ_by_side_features():
    emb = ItemEmbedding(n_items=8, dim=4, n_categories=5, n_brands=4)
    cat = torch.tensor([0, 1, 2, 3, 4, 2, 3, 1])
    brand = torch.tensor([0, 1, 1, 2, 3, 3, 2, 2])
    emb.set_item_side(cat, brand)
    own = torch.tensor([False, False, True, True, False, True, False, True])  # 4 and 6: rare
    emb.set_id_rows(own)
    assert emb.item_row.tolist() == [0, 1, 2, 3, 1, 5, 1, 7]  # padding keeps row 0
    E, C, Bd = emb.item.weight, emb.sides["category"].weight, emb.sides["brand"].weight
    idx = torch.tensor([4, 6, 5])
    want = torch.stack([(E[1] + C[4] + Bd[3]) / 3, (E[1] + C[3] + Bd[2]) / 3,
                        (E[5] + C[2] + Bd[3]) / 3])
    torch.testing.assert_close(emb(idx), want)
    assert not torch.allclose(emb(torch.tensor([4])), emb(torch.tensor([6])))
    # a rare item's gradient reaches the shared row and its side rows, never its own row
    emb(torch.tensor([4])).sum().backward()
    assert E.grad[1].abs().sum() > 0 and E.grad[4].abs().sum() == 0
    assert "item_row" in emb.state_dict()  # the choice travels with the checkpoint
    with pytest.raises(ValueError):
        emb.set_id_rows(torch.ones(3, dtype=torch.bool))


def test_extend_catalogue_scores_new_items_by_side_features():
    emb = ItemEmbedding(n_items=5, dim=4, n_categories=4, n_brands=3)
    emb.set_item_side(torch.tensor([0, 1, 2, 3, 2]), torch.tensor([0, 1, 2, 1, 2]))
    before = emb(torch.arange(5)).detach().clone()
    # today's vocabulary: 8 items; 5..7 are new, 7's category (9) is newer than the model
    cat = torch.tensor([0, 3, 3, 3, 3, 1, 2, 9])
    brand = torch.tensor([0, 2, 2, 2, 2, 2, 1, 1])
    assert emb.extend_catalogue(cat, brand) == 3 and emb.n_catalogue == 8
    torch.testing.assert_close(emb(torch.arange(5)), before)  # known items unchanged
    E, C, Bd = emb.item.weight, emb.sides["category"].weight, emb.sides["brand"].weight
    want = torch.stack([(E[1] + C[1] + Bd[2]) / 3, (E[1] + C[2] + Bd[1]) / 3,
                        (E[1] + C[1] + Bd[1]) / 3])  # 7: category 9 -> unknown (1)
    torch.testing.assert_close(emb(torch.tensor([5, 6, 7])), want)
    assert emb.extend_catalogue(cat, brand) == 0  # idempotent


def test_checkpoint_from_before_shared_rare_rows_loads_with_own_rows():
    model = MIND(tiny_cfg())
    state = model.state_dict()
    del state["items.item_row"]
    fresh = MIND(tiny_cfg())
    fresh.set_id_rows(torch.zeros(30, dtype=torch.bool))
    fresh.load_state_dict(state)
    assert fresh.items.item_row.tolist() == list(range(30))


def test_item_embedding_without_side_features():
    emb = ItemEmbedding(n_items=10, dim=4)
    idx = torch.tensor([2, 5])
    torch.testing.assert_close(emb(idx), emb.item.weight[idx])
    emb.set_item_side(None, None)  # a no-op, not an error


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("n,want", [(0, 1), (1, 1), (2, 1), (3, 1), (4, 2), (7, 2), (8, 3), (15, 3),
                                    (16, 4), (100, 4)])
def test_dynamic_interest_number(n, want):
    assert n_active_interests(torch.tensor([n]), k=4).item() == want
    assert n_active_interests(torch.tensor([n]), k=4, dynamic=False).item() == 4


def test_dynamic_interest_number_respects_k():
    got = n_active_interests(torch.tensor([1, 2, 3, 4, 8, 100]), k=3)
    assert got.tolist() == [1, 1, 1, 2, 3, 3]


def test_extra_interests_shift_the_dynamic_interest_number():
    """K'_u = max(1, min(K, floor(log2 n) + extra)), by hand for K = 4, extra = 1."""
    n = torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 100])
    assert n_active_interests(n, k=4, extra=1).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert n_active_interests(n, k=4, extra=2).tolist() == [2, 2, 3, 3, 4, 4, 4, 4, 4]
    # the model masks what the rule says, in routing and at serving
    cfg = tiny_cfg(extra_interests=1)
    model = MIND(cfg).eval()
    batch = make_batch(lens=[1, 2, 4, 8])
    _, mask = model.user_interests(batch["hist"], batch["hist_len"],
                                   {k: batch[k] for k in ("gender_idx", "age_bucket_idx")})
    assert mask.sum(1).tolist() == [1, 2, 3, 4]
    assert ModelConfig.from_dict(cfg.to_dict()).extra_interests == 1  # saved in checkpoints
    with pytest.raises(ValueError, match="extra_interests"):
        tiny_cfg(extra_interests=-1)


def test_mistake1_routing_logits_are_fresh_per_forward_and_per_user():
    """Mistake 1: logits kept as a variable across batches and shared by all users."""
    torch.manual_seed(0)
    r = B2IRouting(dim=6, n_interests=3).train()
    assert [n for n, _ in r.named_parameters()] == ["S.weight"]
    assert list(r.buffers()) == []
    assert not any("logit" in k or "noise" in k for k in MIND(tiny_cfg()).state_dict())
    e = torch.randn(1, 8, 6).expand(2, -1, -1)  # two identical users in one batch
    hist_len = torch.tensor([8, 8])
    out1, out2 = r(e, hist_len), r(e, hist_len)
    assert not torch.allclose(out1.coupling, out2.coupling)  # fresh draw per forward
    assert not torch.allclose(out1.coupling[0], out1.coupling[1])  # and per user
    assert r.initial_logits(2, 8, torch.device("cpu")).requires_grad is False


def test_mistake2_softmax_over_interests_matches_reference_algorithm():
    """Mistake 2: softmax over behaviours. Compare to a loop implementation of Algorithm 1."""
    torch.manual_seed(1)
    D, K, L, iters = 5, 4, 8, 3
    r = B2IRouting(dim=D, n_interests=K, iters=iters).double()
    lens = torch.tensor([8, 5, 2])  # K' = 3, 2, 1
    e = torch.randn(3, L, D, dtype=torch.float64)
    bmask = torch.arange(L)[None, :] < lens[:, None]
    e = e * bmask[:, :, None]
    b0 = torch.randn(3, K, L, dtype=torch.float64)
    out = r(e, lens, bmask, init_logits=b0)
    assert out.capsules.shape == (3, K, D) and out.coupling.shape == (3, K, L)
    assert out.mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    with torch.no_grad():
        e_hat = r.S(e)
    for u in range(3):
        n, kp = int(lens[u]), int(out.mask[u].sum())
        ref_u, ref_w = ref_routing(e_hat[u, :n], b0[u, :kp, :n], iters)
        torch.testing.assert_close(out.capsules[u, :kp], ref_u)
        torch.testing.assert_close(out.coupling[u, :kp, :n], ref_w)
        # each real behaviour distributes exactly 1 over the active interests
        torch.testing.assert_close(out.coupling[u, :kp, :n].sum(0),
                                   torch.ones(n, dtype=torch.float64))
    # rows (interests) do not sum to 1: it is not a softmax over behaviours
    assert not torch.allclose(out.coupling[0].sum(1), torch.ones(K, dtype=torch.float64))


def test_mistake3_padding_has_no_weight_and_does_not_change_the_result():
    """Mistake 3: padding keeping routing weight; weights not renormalised after masking."""
    torch.manual_seed(2)
    D, K = 6, 4
    r = B2IRouting(dim=D, n_interests=K).double()
    e5 = torch.randn(1, 5, D, dtype=torch.float64)
    b5 = torch.randn(1, K, 5, dtype=torch.float64)
    e8 = torch.cat([e5, torch.randn(1, 3, D, dtype=torch.float64)], 1)  # junk in the padding
    b8 = torch.cat([b5, 100 * torch.randn(1, K, 3, dtype=torch.float64)], 2)
    lens = torch.tensor([5])
    out5 = r(e5, lens, init_logits=b5)
    out8 = r(e8, lens, init_logits=b8)
    torch.testing.assert_close(out8.capsules, out5.capsules)
    torch.testing.assert_close(out8.coupling[..., :5], out5.coupling)
    assert torch.all(out8.coupling[..., 5:] == 0)
    # K' = 2: the two masked interests take no weight; the active ones sum to 1 per behaviour
    assert torch.all(out5.coupling[0, 2:] == 0) and torch.all(out5.capsules[0, 2:] == 0)
    torch.testing.assert_close(out5.coupling[0].sum(0), torch.ones(5, dtype=torch.float64))


def test_mistake3_padding_invariance_through_the_whole_model_in_eval():
    torch.manual_seed(3)
    model = MIND(tiny_cfg()).eval()
    b = make_batch(B=4, L=8)
    V8, m8 = model.user_interests(b["hist"], b["hist_len"], b)
    V5, m5 = model.user_interests(b["hist"][:, :5], b["hist_len"].clamp(max=5), b)
    for u in range(3):  # users with hist_len <= 5 are unchanged by 3 extra pad columns
        torch.testing.assert_close(V5[u], V8[u], rtol=1e-5, atol=1e-6)
        assert torch.equal(m5[u], m8[u])


def test_mistake4_random_init_keeps_interests_apart_zero_init_collapses():
    """Mistake 4: zero-initialised logits with a shared S make all interests identical."""
    torch.manual_seed(4)
    r = B2IRouting(dim=16, n_interests=4, dynamic=False).train()
    e = torch.randn(8, 20, 16)
    lens = torch.full((8,), 20)
    rand = r(e, lens)
    zero = r(e, lens, init_logits=torch.zeros(8, 4, 20))
    assert interest_diversity(rand.capsules, rand.mask) < 0.99
    assert interest_diversity(zero.capsules, zero.mask) == pytest.approx(1.0, abs=1e-5)


def test_mistake5_squash_of_zero_and_pow_on_negative_scores_are_nan_free():
    z = torch.zeros(2, 3, requires_grad=True)
    s = squash(z)
    s.sum().backward()
    assert torch.all(s == 0) and torch.isfinite(z.grad).all()
    z = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(squash(z), 25 / 26 * z / 5)
    for p in (0.5, 2.0, 1.0, 0.0, math.inf):
        att = LabelAwareAttention(p)
        V = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]],
                          [[-2.0, 1.0], [0.5, -3.0], [0.0, 1.0]]],
                         requires_grad=True)
        e = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)  # scores < 0, = 0 and > 0
        mask = torch.tensor([[True, True, True], [True, True, False]])
        w = att.weights(V, mask, e)
        out = att(V, mask, e)
        out.pow(2).sum().backward()
        assert torch.isfinite(w).all() and torch.isfinite(out).all(), p
        assert torch.isfinite(V.grad).all(), p
        # p = 0 and p = inf weights are piecewise constant: no gradient reaches e at all
        assert (e.grad is None) if p in (0.0, math.inf) else torch.isfinite(e.grad).all(), p
        torch.testing.assert_close(w.sum(1), torch.ones(2))
        assert w[1, 2] == 0  # masked interest: no weight


def test_label_aware_attention_variants():
    V = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 9.0], [-3.0, 0.0]]])  # (1, 4, 2)
    mask = torch.tensor([[True, True, False, True]])  # interest 2 has the best score but is masked
    e = torch.tensor([[1.0, 1.0]])
    scores = torch.tensor([1.0, 2.0, 9.0, -3.0])
    hard = LabelAwareAttention(math.inf)
    assert hard.weights(V, mask, e).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    torch.testing.assert_close(hard(V, mask, e), V[:, 1])
    torch.testing.assert_close(LabelAwareAttention(0)(V, mask, e),
                               (V[0, 0] + V[0, 1] + V[0, 3])[None] / 3)
    for p in (0.5, 1.0, 2.0):
        powed = torch.sign(scores) * scores.abs() ** p
        want = torch.softmax(powed.masked_fill(~mask[0], float("-inf")), 0)
        torch.testing.assert_close(LabelAwareAttention(p).weights(V, mask, e)[0], want)


def test_gradient_reaches_S_through_the_last_iteration_only():
    torch.manual_seed(5)
    D, K, L = 5, 3, 6
    r = B2IRouting(dim=D, n_interests=K, iters=3, dynamic=False).double()
    e = torch.randn(2, L, D, dtype=torch.float64)
    b0 = torch.randn(2, K, L, dtype=torch.float64)
    probe = torch.randn(2, K, D, dtype=torch.float64)
    (r(e, torch.full((2,), L), init_logits=b0).capsules * probe).sum().backward()
    got = r.S.weight.grad.clone()

    def grad_of(detach_early: bool) -> torch.Tensor:
        S = r.S.weight.detach().clone().requires_grad_(True)
        (functional_routing(e, S, b0, 3, detach_early) * probe).sum().backward()
        return S.grad

    torch.testing.assert_close(got, grad_of(detach_early=True))
    assert not torch.allclose(got, grad_of(detach_early=False))  # the detach is not a no-op


def test_mistake6_eval_vectors_are_deterministic_and_batch_independent():
    """Mistake 6: random routing init at inference."""
    torch.manual_seed(6)
    model = MIND(tiny_cfg()).eval()
    b = make_batch(B=4, L=8)
    user = {k: v[3:4] for k, v in b.items()}  # hist_len 8: all 4 interests active
    alone1, m1 = model.user_interests(user["hist"], user["hist_len"], user)
    alone2, _ = model.user_interests(user["hist"], user["hist_len"], user)
    assert torch.equal(alone1, alone2)
    perm = torch.tensor([3, 0, 2, 1])
    in_batch, mb = model.user_interests(b["hist"][perm], b["hist_len"][perm],
                                        {k: v[perm] for k, v in b.items()})
    torch.testing.assert_close(in_batch[0], alone1[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(mb[0], m1[0])
    # wider padding in the batch (L = 12) does not change the user's vectors either
    wide = {**user, "hist": torch.cat([user["hist"], torch.zeros(1, 4, dtype=torch.long)], 1)}
    torch.testing.assert_close(model.user_interests(wide["hist"], wide["hist_len"], wide)[0],
                               alone1, rtol=1e-5, atol=1e-6)
    # a second model with the same seed and weights (e.g. reloaded checkpoint) agrees
    twin = MIND(tiny_cfg()).eval()
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.user_interests(user["hist"], user["hist_len"], user)[0], alone1)
    # ... whereas training mode draws new logits each time
    model.train()
    t1, _ = model.user_interests(user["hist"], user["hist_len"], user)
    t2, _ = model.user_interests(user["hist"], user["hist_len"], user)
    assert not torch.allclose(t1, t2)


# ------------------------------------------------------------------------------ the model


def test_mind_shapes_masks_and_forward():
    torch.manual_seed(7)
    cfg = tiny_cfg()
    model = MIND(cfg)
    b = make_batch(B=4, L=8)
    V, mask = model.user_interests(b["hist"], b["hist_len"], b)
    assert V.shape == (4, 4, 8) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1, 1, 2, 3]  # hist_len 1, 3, 5, 8
    assert torch.all(V[~mask] == 0)  # inactive interests are zeroed
    out = model(b)
    assert out.shape == (4, 8)
    out.sum().backward()
    assert (model.routing.S.weight.grad is not None
            and model.profile.emb["gender"].weight.grad is not None)
    assert model.all_item_embeddings().shape == (30, 8)
    assert torch.all(model.all_item_embeddings()[0] == 0)
    assert model.item_embeddings(torch.tensor([[2, 3]])).shape == (1, 2, 8)
    caps = model.interest_capsules(b["hist"], b["hist_len"])
    assert caps.coupling.shape == (4, 4, 8)  # the heat map of behaviour -> interest
    with pytest.raises(ValueError):
        model.user_interests(b["hist"], b["hist_len"], None)  # profile configured but missing


def test_forward_equals_attention_over_user_interests():
    torch.manual_seed(8)
    model = MIND(tiny_cfg(pow_p=2.0)).eval()
    b = make_batch()
    V, mask = model.user_interests(b["hist"], b["hist_len"], b)
    want = model.attention(V, mask, model.item_embeddings(b["target"]))
    torch.testing.assert_close(model(b), want)


def test_model_without_profile_or_side_features():
    cfg = ModelConfig(n_items=30, embed_dim=8, max_len=8, tower_hidden=(), n_interests=2)
    model = MIND(cfg)
    b = make_batch()
    V, mask = model.user_interests(b["hist"], b["hist_len"])
    assert V.shape == (4, 2, 8) and model.profile.out_dim == 0
    assert model({"hist": b["hist"], "hist_len": b["hist_len"],
                  "target": b["target"]}).shape == (4, 8)


def test_youtube_dnn_is_masked_mean_before_the_tower():
    torch.manual_seed(9)
    model = MIND(youtube_dnn(tiny_cfg()))
    assert model.routing is None
    b = make_batch()
    caps = model.interest_capsules(b["hist"], b["hist_len"])
    e = model.item_embeddings(b["hist"])
    for u, n in enumerate(b["hist_len"].tolist()):
        torch.testing.assert_close(caps.capsules[u, 0], e[u, :n].mean(0))
    V, mask = model.user_interests(b["hist"], b["hist_len"], b)
    assert V.shape == (4, 1, 8) and mask.all()
    torch.testing.assert_close(V, model.tower(caps.capsules, model.profile(b)))


def test_mind_1_interest_puts_every_behaviour_in_one_capsule():
    torch.manual_seed(10)
    model = MIND(mind_1(tiny_cfg()))
    b = make_batch()
    caps = model.interest_capsules(b["hist"], b["hist_len"])
    assert caps.capsules.shape == (4, 1, 8) and caps.mask.all()
    real = (torch.arange(8)[None, :] < b["hist_len"][:, None]).float()
    torch.testing.assert_close(caps.coupling[:, 0], real)
    e_hat = model.routing.S(model.item_embeddings(b["hist"]))
    torch.testing.assert_close(caps.capsules[:, 0], squash((e_hat * real[:, :, None]).sum(1)))


def _overfit(cfg: ModelConfig, seed: int = 11, steps: int = 300):
    torch.manual_seed(seed)
    model = MIND(cfg)
    b = make_batch(B=20, L=cfg.max_len, n_items=cfg.n_items, lens=[2 + i % 7 for i in range(20)],
                   seed=seed)
    loss_fn = SampledSoftmaxLoss(cfg.n_items, cfg.n_neg, cfg.sampler)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(b), b["target"], model.item_embeddings)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), b, losses


@pytest.mark.parametrize("k", [3, 1])
def test_tiny_end_to_end_overfit_ranks_target_first(k):
    """MIND (K=3) and MIND-1 + sampled softmax memorise 20 toy sequences."""
    cfg = ModelConfig(n_items=42, embed_dim=16, max_len=8, tower_hidden=(32,), n_interests=k,
                      n_neg=40)
    model, b, losses = _overfit(cfg)
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        scores = model(b) @ model.all_item_embeddings().t()  # training scorer: label-aware v_u
        scores[:, :2] = float("-inf")
        V, mask = model.user_interests(b["hist"], b["hist_len"])
        _, top = topn_multi_interest(V, mask, model.all_item_embeddings(), n=5)
    assert (scores.argmax(1) == b["target"]).float().mean() >= 0.95
    hit = top == b["target"][:, None]
    assert hit.any(1).all()  # serving retrieval: every target in the top 5
    # Hard attention trains only the interest nearest the target; with one target per
    # toy user another interest may still point at some other item, so top-1 by max
    # over interests is a little below the label-aware top-1 for K > 1.
    assert hit[:, 0].float().mean() >= (1.0 if k == 1 else 0.8)


def test_routing_map_starts_as_the_identity():
    # capsules start in the item-embedding space (the label space): S e = e at init
    r = B2IRouting(dim=8, n_interests=3)
    assert torch.equal(r.S.weight, torch.eye(8))
    assert r.S.weight.requires_grad  # S is still learnt
    # a larger start scales every e_hat, sharpening routing (agreement u . Se vs sigma)
    cfg = ModelConfig(n_items=30, embed_dim=8, max_len=8, n_interests=2, routing_init_scale=3.0)
    assert torch.equal(MIND(cfg).routing.S.weight, 3.0 * torch.eye(8))
    assert ModelConfig.from_dict(cfg.to_dict()).routing_init_scale == 3.0  # saved in checkpoints


def test_embedding_init_std():
    torch.manual_seed(0)
    default = MIND(ModelConfig(n_items=5000, n_categories=2000, embed_dim=16, max_len=8))
    wide = MIND(ModelConfig(n_items=5000, n_categories=2000, embed_dim=16, max_len=8,
                            embed_init_std=0.5))
    for model, std in ((default, 16 ** -0.5), (wide, 0.5)):
        for emb in (model.items.item, model.items.sides["category"]):
            w = emb.weight.detach()
            assert torch.equal(w[0], torch.zeros(16))  # padding row stays zero
            assert w[1:].std().item() == pytest.approx(std, rel=0.05)
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        ModelConfig(n_items=10, embed_init_std=-1.0)


@pytest.mark.parametrize("variant", ["mind", "youtube", "mind-cosine"])
def test_behaviour_table_gives_the_vectors_of_the_full_forward(variant):
    """Bulk inference gathers S e_i from `behaviour_table()`: the same (V, mask) as the
    forward that embeds and maps every behaviour, for items with side ids, items newer
    than the model, and padding; S random (not the identity init), so the map is tested."""
    cfg = {"mind": tiny_cfg(), "youtube": youtube_dnn(tiny_cfg()),  # cosine: unit vectors
           "mind-cosine": tiny_cfg(cosine_temperature=0.1, hist_dropout=0.2)}[variant]
    torch.manual_seed(3)
    model = MIND(cfg).eval()
    model.set_item_side(torch.randint(1, 6, (30,)), torch.randint(1, 5, (30,)))
    model.extend_catalogue(torch.randint(1, 6, (34,)), torch.randint(1, 5, (34,)))
    if model.routing is not None:
        with torch.no_grad():
            model.routing.S.weight.normal_()
    batch = make_batch(B=6, n_items=34, lens=[1, 2, 3, 5, 8, 8])  # ids up to 33: 4 new items
    profile = {"gender": batch["gender_idx"], "age_bucket": batch["age_bucket_idx"]}
    table = model.behaviour_table(chunk=7)  # chunks that do not divide the catalogue
    assert table.shape == (34, 8) and not table[0].any()  # padding stays zero
    with torch.no_grad():
        ref = model.user_interests(batch["hist"], batch["hist_len"], profile)
        got = model.user_interests(batch["hist"], batch["hist_len"], profile, table=table)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1], ref[1])


# ------------------------------------------------- cosine scores, history dropout (issue 14)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row over its own length, one at a time (the reference for F.normalize)."""
    rows = [r / math.sqrt(float((r * r).sum())) if float((r * r).sum()) > 0 else r
            for r in x.reshape(-1, x.shape[-1])]
    return torch.stack(rows).reshape(x.shape)


@pytest.mark.parametrize("variant", ["youtube", "mind"])
def test_cosine_scores_are_cos_over_temperature(variant):
    """With cosine_temperature = tau the training logits are logit_scale * cos(v_u, e) / tau,
    computed here by hand from the unnormalised tower output and item embeddings."""
    tau, scale = 0.1, 2.0
    cfg = tiny_cfg(cosine_temperature=tau, logit_scale=scale, n_interests=3)
    cfg = youtube_dnn(cfg) if variant == "youtube" else cfg
    torch.manual_seed(12)
    model = MIND(cfg).eval()
    b = make_batch()
    with torch.no_grad():
        raw_v = model.tower(model.interest_capsules(b["hist"], b["hist_len"]).capsules,
                            model.profile(b))  # (B, K, D), not normalised
        mask = model.interest_capsules(b["hist"], b["hist_len"]).mask
        raw_e = model.items(torch.arange(cfg.n_items))  # (N, D), not normalised
        cos = _unit_rows(raw_v) @ _unit_rows(raw_e).t()  # (B, K, N)
        # hard attention picks the active interest closest to the target
        cos_t = cos[torch.arange(4), :, b["target"]].masked_fill(~mask, float("-inf"))
        want = (cos[torch.arange(4), cos_t.argmax(1)] * scale / tau)[:, 2:]  # (B, N - 2)
        loss_fn = SampledSoftmaxLoss(cfg.n_items, 1, "full", logit_scale=cfg.softmax_scale)
        got = loss_fn(model(b), b["target"], model.item_embeddings)
    assert cfg.softmax_scale == pytest.approx(scale / tau)
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(want, b["target"] - 2))


def test_cosine_scores_export_unit_vectors_that_rank_by_cosine():
    """Every vector retrieval sees (interest vectors, item embeddings) has unit length,
    so the inner-product index ranks by cosine; zero rows stay zero."""
    from mind_model.inference import interest_vectors

    torch.manual_seed(13)
    plain = MIND(tiny_cfg()).eval()
    cos = MIND(tiny_cfg(cosine_temperature=0.05)).eval()
    cos.load_state_dict(plain.state_dict())  # same parameters, other geometry
    b = make_batch()
    with torch.no_grad():
        E_plain, E = plain.all_item_embeddings(), cos.all_item_embeddings()  # (30, D)
        Vp, _ = plain.user_interests(b["hist"], b["hist_len"], b)
        V, mask = cos.user_interests(b["hist"], b["hist_len"], b)
    assert torch.all(E[0] == 0)  # padding
    torch.testing.assert_close(E[1:].norm(dim=1), torch.ones(29))
    torch.testing.assert_close(E, _unit_rows(E_plain))
    vecs, k = interest_vectors(cos, b["hist"].numpy(), b["hist_len"].numpy(), b)
    vecs_plain, k_plain = interest_vectors(plain, b["hist"].numpy(), b["hist_len"].numpy(), b)
    assert k.tolist() == k_plain.tolist() and len(vecs) == 4
    for v, vp in zip(vecs, vecs_plain):
        np_v = torch.from_numpy(v)
        torch.testing.assert_close(np_v.norm(dim=1), torch.ones(len(v)))
        torch.testing.assert_close(np_v, _unit_rows(torch.from_numpy(vp)))
    assert torch.all(V[~mask] == 0)  # inactive interests stay zero
    # the serving merge over unit vectors = max over interests of the cosine
    _, top = topn_multi_interest(V, mask, E, n=5)
    c = (_unit_rows(Vp) @ _unit_rows(E_plain)[2:].t()).masked_fill(~mask[:, :, None], -2)
    want = c.max(1).values.topk(5, dim=1).indices + 2
    assert torch.equal(top, want)


def test_cosine_off_gives_the_inner_product_model_exactly():
    """The default (cosine_temperature = 0, hist_dropout = 0) is the paper's inner product,
    bit for bit, and its training forward draws nothing extra from the RNG."""
    cfg = tiny_cfg(pow_p=2.0)
    assert cfg.cosine_temperature == 0 and cfg.hist_dropout == 0 and cfg.softmax_scale == 1.0
    torch.manual_seed(14)
    model = MIND(cfg)
    b = make_batch()
    ids = torch.arange(cfg.n_items)
    assert torch.equal(model.item_embeddings(ids), model.items(ids))
    init = torch.randn(4, cfg.n_interests, 8)
    caps = model.interest_capsules(b["hist"], b["hist_len"], init)
    V = model.tower(caps.capsules, model.profile(b)) * caps.mask[:, :, None]
    got_V, _ = model.user_interests(b["hist"], b["hist_len"], b, init)
    assert torch.equal(got_V, V)
    yt = MIND(youtube_dnn(cfg)).train()
    state = torch.get_rng_state()
    out = yt(b)
    assert torch.equal(torch.get_rng_state(), state)  # mean pooling: no noise, no dropout draw
    V1, m1 = yt.user_interests(b["hist"], b["hist_len"], b)
    torch.testing.assert_close(out, yt.attention(V1, m1, yt.items(b["target"])), rtol=0, atol=0)


def test_history_dropout_acts_in_training_only():
    torch.manual_seed(15)
    cfg = youtube_dnn(tiny_cfg(hist_dropout=0.5))
    model = MIND(cfg)
    twin = MIND(youtube_dnn(tiny_cfg()))
    twin.load_state_dict(model.state_dict())
    b = make_batch()
    model.train()
    torch.manual_seed(0)
    caps = model.interest_capsules(b["hist"], b["hist_len"]).capsules  # (B, 1, D)
    e = model.items(b["hist"])  # (B, L, D)
    torch.manual_seed(0)
    kept = torch.nn.functional.dropout(e, 0.5, training=True)  # the same draw
    assert not torch.equal(kept, e)
    for u, n in enumerate(b["hist_len"].tolist()):
        torch.testing.assert_close(caps[u, 0], kept[u, :n].mean(0))
    model.eval(), twin.eval()  # no dropout at evaluation and serving
    torch.testing.assert_close(model.user_interests(b["hist"], b["hist_len"], b)[0],
                               twin.user_interests(b["hist"], b["hist_len"], b)[0],
                               rtol=0, atol=0)


def test_recent_behaviours_keeps_the_last_window_of_each_row():
    b = make_batch(B=6, lens=[0, 1, 3, 5, 8, 8])
    for w in (1, 3, 5):
        hist, lens = recent_behaviours(b["hist"], b["hist_len"], w)
        assert hist.shape == (6, w)
        for u, n in enumerate(b["hist_len"].tolist()):  # python slicing as the reference
            want = b["hist"][u, :n].tolist()[-w:] if n else []
            assert lens[u].item() == len(want)
            assert hist[u].tolist() == want + [0] * (w - len(want))
    for w in (0, 8, 50):  # off, or at least L: unchanged
        hist, lens = recent_behaviours(b["hist"], b["hist_len"], w)
        assert hist is b["hist"] and lens is b["hist_len"]


@pytest.mark.parametrize("variant", ["mind", "youtube"])
def test_history_window_is_the_model_on_the_last_behaviours(variant):
    """A windowed model scores a user exactly as the unwindowed one scores the user's last W
    behaviours (eval mode, same weights): K'_u follows the window too."""
    torch.manual_seed(16)
    cfg = tiny_cfg(history_window=4)
    cfg = youtube_dnn(cfg) if variant == "youtube" else cfg
    model, plain = MIND(cfg).eval(), MIND(cfg.replace(history_window=0)).eval()
    plain.load_state_dict(model.state_dict())
    b = make_batch()
    V, mask = model.user_interests(b["hist"], b["hist_len"], b)
    with torch.no_grad():  # bulk inference (the embedding job) windows the same way
        V_bulk, _ = model.user_interests(b["hist"], b["hist_len"], b,
                                         table=model.behaviour_table())
    torch.testing.assert_close(V_bulk, V)
    for u, n in enumerate(b["hist_len"].tolist()):
        last = b["hist"][u, :n][-4:]
        h = torch.zeros(1, 8, dtype=torch.long)
        h[0, :len(last)] = last
        Vp, mp = plain.user_interests(h, torch.tensor([len(last)]),
                                      {k: v[u:u + 1] for k, v in b.items()})
        assert torch.equal(mask[u], mp[0])
        torch.testing.assert_close(V[u], Vp[0])
    # lengths 1, 3, 5, 8 -> 1, 3, 4, 4 behaviours routed: K'_u = 1, 1, 2, 2 (not 2 and 3)
    assert mask.sum(1).tolist() == ([1, 1, 1, 1] if variant == "youtube" else [1, 1, 2, 2])


@pytest.mark.parametrize("bad", [dict(cosine_temperature=-0.1),
                                 dict(cosine_temperature=float("nan")),
                                 dict(hist_dropout=1.0), dict(hist_dropout=-0.1),
                                 dict(history_window=-1)])
def test_cosine_and_dropout_settings_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        tiny_cfg(**bad)
