"""Sampled softmax: exactness with the whole catalogue, log-Q correction, accidental hits,
and the samplers' distributions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mind_model.loss import SampledSoftmaxLoss

N_ITEMS = 22  # ids 2..21 are the 20 real items


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def setup_case(seed: int = 0, B: int = 6, D: int = 4, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(N_ITEMS, D, generator=g) * scale
    user = torch.randn(B, D, generator=g) * scale
    target = torch.randint(2, N_ITEMS, (B,), generator=g)
    return table, user, target


def full_softmax_loss(user, target, table, logit_scale=1.0):
    logits = logit_scale * user @ table[2:].t()  # real items only: 0 and 1 are never candidates
    return F.cross_entropy(logits, target - 2)


def uniform_counts() -> torch.Tensor:
    c = torch.ones(N_ITEMS)
    c[:2] = 0
    return c


def test_whole_catalogue_as_negatives_is_exactly_the_full_softmax():
    table, user, target = setup_case()
    n_real = N_ITEMS - 2
    # uniform sampler with n_neg = N: expected count 1 per item, so log-Q is 0
    loss_fn = SampledSoftmaxLoss(N_ITEMS, n_real, "popularity", counts=uniform_counts(),
                                 logit_scale=2.0)
    got = loss_fn(user, target, lambda i: table[i], neg_ids=torch.arange(2, N_ITEMS))
    torch.testing.assert_close(got, full_softmax_loss(user, target, table, logit_scale=2.0))


def test_full_sampler_is_the_exact_softmax_without_sampling():
    table, user, target = setup_case()
    loss_fn = SampledSoftmaxLoss(N_ITEMS, 7, "full", logit_scale=2.0)  # n_neg is ignored
    assert loss_fn.n_neg == N_ITEMS - 2
    assert torch.equal(loss_fn.sample(), torch.arange(2, N_ITEMS))
    got = loss_fn(user, target, lambda i: table[i])
    torch.testing.assert_close(got, full_softmax_loss(user, target, table, logit_scale=2.0))


def test_sampled_loss_with_catalogue_sized_uniform_sample_approximates_full_softmax():
    torch.manual_seed(0)
    table, user, target = setup_case(seed=1, B=64, scale=0.7)  # logits of std ~1
    n_real = N_ITEMS - 2
    # n_neg = N draws with replacement from a uniform sampler: each item's expected count is 1
    loss_fn = SampledSoftmaxLoss(N_ITEMS, n_real, "popularity", counts=uniform_counts())
    est = torch.stack([loss_fn(user, target, lambda i: table[i]) for _ in range(50)]).mean()
    assert est.item() == pytest.approx(full_softmax_loss(user, target, table).item(), rel=0.03)


def test_log_q_correction_matches_the_formula():
    table, user, target = setup_case(B=3)
    loss_fn = SampledSoftmaxLoss(N_ITEMS, 7, "log_uniform", logit_scale=3.0)
    neg = torch.tensor([2, 2, 3, 10, 21, 4, 6])
    log_q = torch.log(7 * loss_fn.probs)  # log expected count of each id among 7 draws
    logits = torch.cat([(3.0 * (user * table[target]).sum(1) - log_q[target])[:, None],
                        3.0 * user @ table[neg].t() - log_q[neg]], 1)
    logits[:, 1:] = logits[:, 1:].masked_fill(neg[None, :] == target[:, None], float("-inf"))
    want = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(loss_fn(user, target, lambda i: table[i], neg_ids=neg), want)


def _fit_free_logits(loss_fn: SampledSoftmaxLoss, p: torch.Tensor, steps: int = 400
                     ) -> torch.Tensor:
    """Learn one logit per item from targets drawn from p; return softmax over real items."""
    logits = torch.zeros(N_ITEMS, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ones = torch.ones(1024, 1)  # D = 1: the score of item i is logits[i]
    for _ in range(steps):
        t = torch.multinomial(p, 1024, replacement=True)
        loss = loss_fn(ones, t, lambda i: logits[i][..., None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.softmax(logits.detach()[2:], 0)


def test_log_q_correction_makes_a_skewed_sampler_consistent():
    """Trained with log-uniform negatives, the logits recover the true item distribution
    only with the log-Q correction; without it, items the sampler favours are underrated."""
    torch.manual_seed(0)
    p = torch.zeros(N_ITEMS)
    p[2:] = torch.rand(N_ITEMS - 2) ** 2 + 0.02
    p /= p.sum()
    corrected = SampledSoftmaxLoss(N_ITEMS, 50, "log_uniform")
    uncorrected = SampledSoftmaxLoss(N_ITEMS, 50, "log_uniform")
    uncorrected.log_expected.zero_()
    def tv(q):  # total variation distance
        return 0.5 * (q - p[2:]).abs().sum().item()
    assert tv(_fit_free_logits(corrected, p)) < 0.07
    assert tv(_fit_free_logits(uncorrected, p)) > 0.15


def test_accidental_hits_are_removed():
    table, user, target = setup_case(B=2)
    target = torch.tensor([5, 9])
    neg = torch.tensor([5, 7, 9, 9, 3])
    loss_fn = SampledSoftmaxLoss(N_ITEMS, len(neg), "popularity", counts=uniform_counts())
    got = loss_fn(user, target, lambda i: table[i], neg_ids=neg)
    lq = loss_fn.log_expected
    want = []
    for b in range(2):
        keep = neg[neg != target[b]]  # the row's own target is not a negative for it
        logits = torch.cat([(user[b] @ table[target[b]] - lq[target[b]])[None],
                            user[b] @ table[keep].t() - lq[keep]])
        want.append(F.cross_entropy(logits[None], torch.tensor([0])))
    torch.testing.assert_close(got, torch.stack(want).mean())
    # every negative an accidental hit: only the positive is left, the loss is 0
    only_hits = loss_fn(user[:1], target[:1], lambda i: table[i], neg_ids=torch.tensor([5, 5]))
    assert only_hits.item() == pytest.approx(0.0, abs=1e-6)
    kept = SampledSoftmaxLoss(N_ITEMS, 2, "popularity", counts=uniform_counts(),
                              remove_accidental_hits=False)
    assert kept(user[:1], target[:1], lambda i: table[i], neg_ids=torch.tensor([5, 5])).item() > 0.5


def test_gradients_are_finite_with_masked_hits():
    torch.manual_seed(0)
    table, user, target = setup_case()
    table.requires_grad_(True)
    user.requires_grad_(True)
    loss_fn = SampledSoftmaxLoss(N_ITEMS, 64, "log_uniform")
    neg = torch.cat([target, loss_fn.sample()])  # guaranteed accidental hits
    loss = loss_fn(user, target, lambda i: table[i], neg_ids=neg)
    loss.backward()
    assert (torch.isfinite(loss) and torch.isfinite(user.grad).all()
            and torch.isfinite(table.grad).all())
    assert torch.all(table.grad[:2] == 0)  # padding / unknown never take part


def test_log_uniform_sampler_distribution_and_popularity_order():
    torch.manual_seed(0)
    n_real = N_ITEMS - 2
    counts = torch.zeros(N_ITEMS)
    counts[2:] = torch.randperm(n_real).float() + 1  # popularity order unrelated to ids
    loss_fn = SampledSoftmaxLoss(N_ITEMS, 1000, "log_uniform", counts=counts)
    draws = torch.cat([loss_fn.sample() for _ in range(200)])  # 200k draws
    assert draws.min() >= 2 and draws.max() < N_ITEMS
    freq = torch.bincount(draws, minlength=N_ITEMS).float() / len(draws)
    rank = torch.argsort(torch.argsort(-counts[2:]))  # 0 = most popular
    want = torch.zeros(N_ITEMS)
    want[2:] = torch.log((rank + 2.0) / (rank + 1.0)) / math.log(n_real + 1)
    torch.testing.assert_close(loss_fn.probs, want)
    torch.testing.assert_close(freq, want, atol=0.005, rtol=0)
    assert loss_fn.probs.sum().item() == pytest.approx(1.0)
    assert freq[2 + counts[2:].argmax()] == freq.max()  # the most popular item is drawn most


def test_popularity_sampler_follows_counts_and_never_draws_pad_or_unknown():
    torch.manual_seed(0)
    counts = torch.tensor([1000.0, 1000.0, 0, 1, 2, 3, 4, 0, 10])  # pad/unk counts are ignored
    loss_fn = SampledSoftmaxLoss(len(counts), 5000, "popularity", counts=counts)
    draws = torch.cat([loss_fn.sample() for _ in range(20)])
    freq = torch.bincount(draws, minlength=len(counts)).float() / len(draws)
    want = torch.tensor([0, 0, 0, 1, 2, 3, 4, 0, 10]) / 20.0
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)
    assert freq[0] == freq[1] == freq[2] == freq[7] == 0
    # an item that can never be drawn can still be a target: finite loss
    table, user, _ = setup_case(B=1)
    loss = loss_fn(user, torch.tensor([7]), lambda i: table[i % len(counts)])
    assert torch.isfinite(loss)


def test_bad_arguments():
    with pytest.raises(ValueError):
        SampledSoftmaxLoss(N_ITEMS, 10, "popularity")  # needs counts
    with pytest.raises(ValueError):
        SampledSoftmaxLoss(N_ITEMS, 10, "uniform")
    with pytest.raises(ValueError):
        SampledSoftmaxLoss(2, 10)  # no real item
    with pytest.raises(ValueError):
        SampledSoftmaxLoss(N_ITEMS, 10, "popularity", counts=torch.ones(5))
