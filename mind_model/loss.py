"""Sampled softmax with shared negatives and log-Q correction.

`SampledSoftmaxLoss(n_items, n_neg, sampler, counts=None, logit_scale=1.0)`
  `(user_vec (B,D), target (B,), item_embed: ids -> (..., D)) -> scalar mean CE`

Per step, n_neg negatives are drawn once (with replacement) and shared by the
whole batch, so the softmax sees many items for the price of one (S, D) gather
and one (B, S) matmul. Logits are `logit_scale * u.e - log(n_neg * q(item))`
for the positive and every negative (log-Q correction: sampled softmax then
estimates the full softmax, whatever the sampler); a negative equal to the row's
target (an accidental hit) gets logit -inf. Padding (0) and unknown (1) are
never sampled.

Samplers, over the real items 2 .. n_items-1:
- "log_uniform": Zipf over popularity rank, P(rank r) = log((r+2)/(r+1)) / log(N+1),
  sampled in closed form. The rank order is given by `counts` (most popular
  first); without counts, item ids are taken to be in popularity order already.
- "popularity": P(i) proportional to counts[i] ** alpha (item_features.interactions).
- "full": no sampling: every real item is a negative at every step (n_neg is ignored),
  i.e. the exact softmax over the catalogue. Affordable for catalogues of up to some
  10^5 items (a (B, N) logit matrix per step); the sampled estimate is what scales.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from schemas import FIRST_IDX  # ids 0 (padding) and 1 (unknown) are never candidates


class SampledSoftmaxLoss(nn.Module):
    def __init__(self, n_items: int, n_neg: int, sampler: str = "log_uniform",
                 counts: Tensor | None = None, logit_scale: float = 1.0, alpha: float = 1.0,
                 remove_accidental_hits: bool = True):
        """n_items counts ids 0 and 1; counts: (n_items,) interactions per item id."""
        super().__init__()
        n_real = n_items - FIRST_IDX
        if sampler == "full":  # every real item is a negative, once: the exact softmax
            n_neg = n_real
        if n_real < 1 or n_neg < 1:
            raise ValueError("need at least one real item and one negative")
        self.n_items, self.n_neg, self.sampler = n_items, n_neg, sampler
        self.logit_scale, self.remove_accidental_hits = logit_scale, remove_accidental_hits
        if counts is not None:
            counts = torch.as_tensor(counts, dtype=torch.float64)
            if counts.shape != (n_items,):
                raise ValueError(f"counts must have shape ({n_items},)")
            real_counts = counts[FIRST_IDX:].clamp(min=0)
        q = torch.zeros(n_items, dtype=torch.float64)  # sampling probability per item id
        if sampler == "log_uniform":
            if counts is None:
                rank_to_id = torch.arange(FIRST_IDX, n_items)
            else:  # most popular first; ties by id so the order is reproducible
                rank_to_id = FIRST_IDX + torch.sort(-real_counts, stable=True).indices
            r = torch.arange(n_real, dtype=torch.float64)
            q[rank_to_id] = torch.log((r + 2) / (r + 1)) / math.log(n_real + 1)
            self.register_buffer("rank_to_id", rank_to_id, persistent=False)
        elif sampler == "full":
            q[FIRST_IDX:] = 1.0 / n_real  # log(n_neg * q) = 0: no correction
        elif sampler == "popularity":
            if counts is None:
                raise ValueError("the popularity sampler needs counts")
            w = real_counts.pow(alpha)
            if w.sum() <= 0:
                raise ValueError("counts are all zero")
            q[FIRST_IDX:] = w / w.sum()
        else:
            raise ValueError(f"unknown sampler {sampler!r}")
        self.register_buffer("probs", q.float(), persistent=False)  # (n_items,)
        # log expected count of each item among the n_neg draws; an item the sampler
        # never draws gets a floor, so it can still be a target without an infinite logit
        log_q = torch.log(q.clamp(min=1e-12) * n_neg)
        self.register_buffer("log_expected", log_q.float(), persistent=False)  # (n_items,)

    def sample(self, n: int | None = None, device: torch.device | None = None) -> Tensor:
        """n (default n_neg) negative item ids, with replacement; (n,) long."""
        n = self.n_neg if n is None else n
        device = device or self.probs.device
        if self.sampler == "full":
            return torch.arange(FIRST_IDX, self.n_items, device=device)
        if self.sampler == "log_uniform":
            n_real = self.n_items - FIRST_IDX
            u = torch.rand(n, dtype=torch.float64, device=device)
            # inverse CDF of the log-uniform: P(rank <= r) = log(r+2) / log(N+1)
            r = (torch.exp(u * math.log(n_real + 1)).floor().long() - 1).clamp(0, n_real - 1)
            return self.rank_to_id.to(device)[r]
        return torch.multinomial(self.probs.to(device), n, replacement=True)

    def forward(self, user_vec: Tensor, target: Tensor, item_embed: Callable[[Tensor], Tensor],
                neg_ids: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of the target against the shared negatives.

        user_vec: (B, D) (after label-aware attention); target: (B,) item ids;
        item_embed: maps ids (...,) -> (..., D), e.g. `model.item_embeddings`;
        neg_ids: optional (S,) negatives instead of sampling (tests, analysis);
        their log-Q correction still assumes they came from this sampler.
        """
        target = target.long()
        if neg_ids is None:
            neg_ids = self.sample(device=user_vec.device)  # (S,)
        pos = (user_vec * item_embed(target)).sum(-1, keepdim=True)  # (B, 1)
        neg = user_vec @ item_embed(neg_ids).t()  # (B, S)
        log_q = self.log_expected.to(user_vec.device)
        pos = pos * self.logit_scale - log_q[target][:, None]
        neg = neg * self.logit_scale - log_q[neg_ids][None, :]
        if self.remove_accidental_hits:
            neg = neg.masked_fill(neg_ids[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([pos, neg], dim=1)  # (B, 1 + S); the positive is column 0
        return F.cross_entropy(logits, torch.zeros_like(target))
