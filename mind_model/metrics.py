"""Full-catalogue retrieval scoring and metrics for multi-interest users.

- `topn_multi_interest(V (B,K,D), mask (B,K), item_emb (N,D), n, exclude=None)
  -> (scores (B,n), idx (B,n))`: an item's score for a user is the max over the
  user's ACTIVE interests of the inner product, which equals querying each
  interest for its top n, merging, and keeping each item's best score (the
  serving protocol). Items are processed in blocks with a running top-n, so
  B x K x N is never materialised. Ids 0 and 1 are never returned (unless n
  exceeds the real catalogue: the rest is then filled with score -inf).
  Ties are ordered by ascending item id.
- `hit_rate_at(topn_idx, targets, ns=(10, 50, 100))`: the paper's HitRate@N;
  `hits_at` gives the per-user hits behind it.
- `recall_hr_at(topn_idx, target_sets, ns=(20, 50))`: the ComiRec protocol.
- `interest_diversity(V, mask)`: mean pairwise cosine between active interests.
- `routing_sharpness(coupling, imask, bmask)`: 1 - normalised entropy of each
  behaviour's coupling coefficients (1 = hard clustering, 0 = no routing signal).
Metric functions return {"hr@10": 0.12, ...} of plain floats.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from schemas import FIRST_IDX  # ids 0 (padding) and 1 (unknown) are never recommended

HR_NS = (10, 50, 100)  # the paper's HitRate@N cut-offs
COMIREC_NS = (20, 50)  # ComiRec's Recall@N / HR@N cut-offs


def _merge_topn(s1: Tensor, i1: Tensor, s2: Tensor, i2: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Top n of the union of two candidate lists, ordered by (score desc, id asc)."""
    s, i = torch.cat([s1, s2], 1), torch.cat([i1, i2], 1)
    order = torch.sort(i, dim=1, stable=True).indices  # ids ascending ...
    s, i = s.gather(1, order), i.gather(1, order)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :n]  # ... then by score
    return s.gather(1, order), i.gather(1, order)


@torch.no_grad()
def topn_multi_interest(V: Tensor, mask: Tensor, item_emb: Tensor, n: int,
                        exclude: Tensor | None = None, chunk_size: int = 32768
                        ) -> tuple[Tensor, Tensor]:
    """Top-n items per user by max over active interests of V_k . e_item.

    V: (B, K, D); mask: (B, K) bool; item_emb: (N, D), row = item id;
    exclude: optional (B, E) long ids never to return per user (e.g. the history;
    pad with 0). Returns scores (B, n) float and ids (B, n) long.
    """
    if V.dim() != 3 or mask.shape != V.shape[:2]:
        raise ValueError(f"V must be (B, K, D) with mask (B, K); got {tuple(V.shape)}, "
                         f"{tuple(mask.shape)}")
    B, K, D = V.shape
    N = item_emb.shape[0]
    mask = mask.to(device=V.device, dtype=torch.bool)
    # -inf on inactive interests removes them from the max, whatever their vectors hold
    neg_inf = torch.full((B, K, 1), float("-inf"), device=V.device, dtype=V.dtype)
    best_s = torch.full((B, 0), float("-inf"), device=V.device, dtype=V.dtype)
    best_i = torch.zeros((B, 0), dtype=torch.long, device=V.device)
    for start in range(FIRST_IDX, N, chunk_size):
        stop = min(start + chunk_size, N)
        emb = item_emb[start:stop].to(device=V.device, dtype=V.dtype)  # (C, D)
        s = torch.einsum("bkd,cd->bkc", V, emb)  # (B, K, C)
        s = torch.where(mask[:, :, None], s, neg_inf).amax(1)  # (B, C)
        if exclude is not None:
            local = exclude.to(V.device).long() - start  # (B, E)
            inside = (local >= 0) & (local < stop - start)
            hits = torch.zeros_like(s, dtype=torch.int32)
            hits.scatter_add_(1, local.clamp(0, stop - start - 1), inside.to(torch.int32))
            s = s.masked_fill(hits > 0, float("-inf"))
        ids = torch.arange(start, stop, device=V.device).expand(B, -1)  # (B, C)
        if stop - start > n:  # prefilter the block; the merge below fixes the order
            s, pos = torch.topk(s, n, dim=1)
            ids = ids.gather(1, pos)
        best_s, best_i = _merge_topn(best_s, best_i, s, ids, n)
    if best_s.shape[1] < n:  # catalogue smaller than n: pad with id 0 at -inf
        pad = n - best_s.shape[1]
        best_s = torch.cat([best_s, best_s.new_full((B, pad), float("-inf"))], 1)
        best_i = torch.cat([best_i, best_i.new_zeros((B, pad))], 1)
    return best_s, best_i


def hits_at(topn_idx: Tensor, targets: Tensor, ns: Sequence[int] = HR_NS) -> dict[int, Tensor]:
    """Per user, whether the target is among the top N: {N: (B,) bool}. topn_idx: (B, >= max ns)."""
    if topn_idx.shape[1] < max(ns):
        raise ValueError(f"need top-{max(ns)} lists, got {topn_idx.shape[1]}")
    hit = topn_idx == targets.to(topn_idx.device).long()[:, None]  # (B, M)
    return {n: hit[:, :n].any(1) for n in ns}


def hit_rate_at(topn_idx: Tensor, targets: Tensor, ns: Sequence[int] = HR_NS) -> dict[str, float]:
    """HitRate@N = share of users whose target is among their top N. topn_idx: (B, >= max ns)."""
    return {f"hr@{n}": h.float().mean().item() for n, h in hits_at(topn_idx, targets, ns).items()}


def recall_hr_at(topn_idx: Tensor, target_sets: Sequence[Iterable[int]],
                 ns: Sequence[int] = COMIREC_NS) -> dict[str, float]:
    """ComiRec protocol: Recall@N = |top N ∩ targets| / |targets| averaged over users;
    HR@N = share of users with at least one hit. Targets are de-duplicated (sets);
    users with no targets are skipped."""
    if topn_idx.shape[1] < max(ns):
        raise ValueError(f"need top-{max(ns)} lists, got {topn_idx.shape[1]}")
    if len(target_sets) != topn_idx.shape[0]:
        raise ValueError("one target set per user")
    top = topn_idx.cpu().tolist()
    out = {}
    for n in ns:
        recall, hr, users = 0.0, 0, 0
        for row, targets in zip(top, target_sets):
            t = set(int(x) for x in targets)
            if not t:
                continue
            hits = len(t & set(row[:n]))
            recall += hits / len(t)
            hr += hits > 0
            users += 1
        out[f"recall@{n}"] = recall / users if users else float("nan")
        out[f"hr@{n}"] = hr / users if users else float("nan")
    return out


@torch.no_grad()
def interest_diversity(V: Tensor, mask: Tensor, eps: float = 1e-8) -> float:
    """Mean over users with >= 2 active interests of the mean pairwise cosine between
    their active interests (1 = collapsed). NaN only if no user has 2 interests."""
    Vn = V / V.norm(dim=-1, keepdim=True).clamp(min=eps)  # zero vectors stay zero
    cos = Vn @ Vn.transpose(1, 2)  # (B, K, K)
    m = mask.to(V.dtype)
    pair = m[:, :, None] * m[:, None, :] * (1 - torch.eye(V.shape[1], dtype=V.dtype,
                                                          device=V.device))
    n_pairs = pair.sum((1, 2))  # (B,) ordered pairs = 2 * unordered
    keep = n_pairs > 0
    if not keep.any():
        return float("nan")
    per_user = (cos * pair).sum((1, 2))[keep] / n_pairs[keep]
    return per_user.mean().item()


def routing_sharpness(coupling: Tensor, imask: Tensor, bmask: Tensor) -> tuple[float, int]:
    """How decisively routing assigns behaviours: 1 - H(w_i) / log K'_u per real
    behaviour i of a user with K'_u >= 2 interests (1 = each behaviour in one
    interest, 0 = spread evenly, as with no routing signal at all).

    coupling: (B, K, L) w_ij; imask: (B, K) active interests; bmask: (B, L) real
    behaviours. Returns (sum over behaviours, number of behaviours) so callers can
    average over batches."""
    k = imask.sum(1)  # (B,)
    keep = bmask & (k >= 2)[:, None]  # (B, L)
    if not keep.any():
        return 0.0, 0
    w = coupling.clamp(min=1e-12)
    ent = -(coupling * w.log()).sum(1)  # (B, L): masked interests have w = 0
    sharp = 1 - ent / k.clamp(min=2).to(ent.dtype).log()[:, None]
    return sharp[keep].sum().item(), int(keep.sum())
