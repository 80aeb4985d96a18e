"""MIND as pure PyTorch modules (no I/O, no DDP, no argparse).

Shapes: B users, L behaviours (right-padded with 0), K interests, D = embed_dim,
N items. Ids: 0 = padding, 1 = unknown (schemas/tables.py).

Public API
----------
- `MIND(cfg)`
  - `user_interests(hist (B,L), hist_len (B,), profile=None) -> (V (B,K,D), mask (B,K) bool)`:
    f_user, used for serving and evaluation. Inactive interests (mask False) are
    zero vectors and must be ignored (see `metrics.topn_multi_interest`).
  - `interest_capsules(hist, hist_len, init_logits=None) -> RoutingOutput`:
    the capsules before the user tower, with the coupling coefficients (B,K,L)
    for the interpretability heat map; `interests_from_capsules(caps, profile)` is
    the rest of f_user.
  - `item_embeddings(idx (...)) -> (..., D)`, `all_item_embeddings() -> (n_items, D)`
    (row 0 = padding = zero vector) for the ANN index and full-catalogue eval.
  - `forward(batch) -> (B, D)`: the user vector after label-aware attention on
    `batch["target"]`, for training with `loss.SampledSoftmaxLoss`. `batch` holds
    "hist", "hist_len", "target" and "<field>_idx" for each profile field.
  - `set_item_side(category_idx, brand_idx, item_idx=None)`: item -> side ids
    from the item_features table (saved in the state dict); `set_id_rows(own)`: which
    items have their own id embedding (the others share the unknown id's);
    `extend_catalogue(category_idx, brand_idx)`: score items newer than the model
    through their side features.
- Scores: the inner product (the paper), or with `cfg.cosine_temperature` > 0 cosines:
  `item_embeddings`, `all_item_embeddings`, `user_interests` and `forward` then return
  unit vectors, so every consumer (evaluation, inference, the embedding job, the index)
  ranks by cosine; the temperature is applied by the loss (`cfg.softmax_scale`).
- Building blocks: `ItemEmbedding`, `B2IRouting`, `LabelAwareAttention`,
  `ProfileEmbedding`, `UserTower`, `squash`, `n_active_interests`.

Randomness of routing: in training, the initial logits are drawn afresh per
forward from the global RNG, per user (B,K,L), without gradient. In eval mode
they come from a CPU `torch.Generator` seeded with `cfg.routing_seed`, as one
(L,K) table drawn row by row (one row per behaviour position) and broadcast
over the batch, so a user's vectors depend only on the user: not on the batch,
its position in it, or how much padding the batch adds.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mind_model.config import ModelConfig
from schemas import PAD_IDX, UNK_IDX


def squash(z: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """|z|^2 / (1 + |z|^2) * z / |z|, with eps inside the norm so squash(0) = 0 (no NaN)."""
    sq = (z * z).sum(dim, keepdim=True)
    return sq / (1.0 + sq) * z / torch.sqrt(sq + eps)


def n_active_interests(hist_len: Tensor, k: int, dynamic: bool = True,
                       extra: int = 0) -> Tensor:
    """K'_u = max(1, min(K, floor(log2 |I_u|) + extra)) per user; (B,) long; extra = 0 is
    the paper's rule. K for all if not dynamic."""
    if not dynamic:
        return torch.full_like(hist_len, k, dtype=torch.long)
    n = hist_len.long().clamp(min=1)
    # floor(log2 n) in exact integer arithmetic: float log2 may round 2**m - eps up
    log2 = torch.zeros_like(n)
    for m in range(1, k + 1):  # only values up to K matter
        log2 = torch.where(n >= (1 << m), torch.full_like(n, m), log2)
    return (log2 + extra).clamp(min=1, max=k)


def behaviour_mask(hist: Tensor, hist_len: Tensor) -> Tensor:
    """True for real behaviours: position < hist_len and id != padding. (B, L) bool."""
    pos = torch.arange(hist.shape[1], device=hist.device)  # (L,)
    return (pos[None, :] < hist_len[:, None]) & (hist != PAD_IDX)


def recent_behaviours(hist: Tensor, hist_len: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The last `window` behaviours of each row, still oldest first and right-padded:
    ((B, W), (B,)) with W = window. Unchanged when window is 0 or >= L."""
    L = hist.shape[1]
    if window <= 0 or window >= L:
        return hist, hist_len
    hist_len = hist_len.long()
    n = hist_len.clamp(min=0, max=window)  # (B,) behaviours kept
    slot = torch.arange(window, device=hist.device)  # (W,)
    pos = (hist_len - n)[:, None] + slot[None, :]  # (B, W) source positions
    kept = hist.gather(1, pos.clamp(max=L - 1))  # (B, W)
    return kept.masked_fill(slot[None, :] >= n[:, None], PAD_IDX), n


class ItemEmbedding(nn.Module):
    """e_i = mean of the embeddings of item id and its side ids (category, brand).

    Side ids are looked up from non-trainable buffers (item -> category_idx,
    item -> brand_idx) so behaviour items and labels are embedded by the same
    function from item ids alone. Padding (0) embeds to the zero vector.

    The id embedding is looked up through a third buffer, item -> row of the id table
    (`item_row`): an item's own row, or the unknown id's row (1) for items that are
    too rare to learn an embedding of their own (`set_id_rows`) and for items newer
    than the model (`extend_catalogue`). Such items share that row and are told apart
    by their side features, so every item of the catalogue can be scored.
    """

    def __init__(self, n_items: int, dim: int, n_categories: int = 0, n_brands: int = 0,
                 init_std: float = 0.0):
        super().__init__()
        if n_items < 2:
            raise ValueError("n_items counts padding and unknown, so it must be >= 2")
        self.n_items = n_items  # rows of the id table (the catalogue may grow beyond them)
        self.item = nn.Embedding(n_items, dim, padding_idx=PAD_IDX)
        self.register_buffer("item_row", torch.arange(n_items))  # (n_catalogue,) persistent
        self.sides = nn.ModuleDict()
        for name, size in (("category", n_categories), ("brand", n_brands)):
            if size > 0:
                self.sides[name] = nn.Embedding(size, dim, padding_idx=PAD_IDX)
                # Until set_item_side is called every real item has the unknown side id (1).
                side = torch.ones(n_items, dtype=torch.long)
                side[PAD_IDX] = PAD_IDX
                self.register_buffer(f"item_{name}", side)  # persistent: saved in checkpoints
        for emb in (self.item, *self.sides.values()):
            # default |row| ~ 1 at init: unit-variance N(0,1) rows would give huge initial logits
            nn.init.normal_(emb.weight, std=init_std or dim ** -0.5)
            with torch.no_grad():
                emb.weight[PAD_IDX].zero_()

    @torch.no_grad()
    def set_item_side(self, category_idx: Tensor | None, brand_idx: Tensor | None,
                      item_idx: Tensor | None = None) -> None:
        """Set item -> side id maps (from item_features). Without `item_idx` the tensors
        are indexed by item id and have length n_items; with it, they are rows of the
        table (item_idx[j] has category_idx[j], brand_idx[j]); other items keep theirs."""
        for name, ids in (("category", category_idx), ("brand", brand_idx)):
            if ids is None or name not in self.sides:
                continue
            buf: Tensor = getattr(self, f"item_{name}")
            ids = torch.as_tensor(ids, dtype=torch.long, device=buf.device)
            if item_idx is None:
                if ids.shape != buf.shape:
                    raise ValueError(f"{name}_idx must have length n_items={self.n_items}")
                buf.copy_(ids)
            else:
                buf[torch.as_tensor(item_idx, dtype=torch.long, device=buf.device)] = ids
            if int(buf.min()) < 0 or int(buf.max()) >= self.sides[name].num_embeddings:
                raise ValueError(f"{name}_idx out of range of its vocabulary")
            buf[PAD_IDX] = PAD_IDX  # padding stays the zero vector

    @property
    def n_catalogue(self) -> int:
        """Item ids this embedding can look up (>= n_items after `extend_catalogue`)."""
        return self.item_row.numel()

    @torch.no_grad()
    def set_id_rows(self, own: Tensor) -> None:
        """own: (n_catalogue,) bool, True for items with their own id embedding; the others
        use the unknown id's row. Padding keeps row 0 (the zero vector)."""
        own = torch.as_tensor(own, dtype=torch.bool, device=self.item_row.device)
        if own.shape != self.item_row.shape:
            raise ValueError(f"own must have length n_catalogue={self.n_catalogue}")
        ids = torch.arange(self.n_catalogue, device=own.device)
        rows = torch.where(own & (ids < self.n_items), ids, torch.full_like(ids, UNK_IDX))
        rows[PAD_IDX] = PAD_IDX
        self.item_row.copy_(rows)

    @torch.no_grad()
    def extend_catalogue(self, category_idx: Tensor | None, brand_idx: Tensor | None) -> int:
        """Grow the catalogue to len(category_idx or brand_idx) item ids (e.g. today's
        vocabulary, when the model was trained on an older one). Known ids keep their rows
        and side ids; new ids use the unknown id's row and their side ids from the given
        maps (indexed by item id; ids outside a side vocabulary count as unknown).
        Returns the number of ids added."""
        given = [t for t in (category_idx, brand_idx) if t is not None]
        size = len(given[0]) if given else self.n_catalogue
        old = self.n_catalogue
        if size <= old:
            return 0
        dev = self.item_row.device
        self.item_row = torch.cat([self.item_row, torch.full((size - old,), UNK_IDX,
                                                             dtype=torch.long, device=dev)])
        for name, ids in (("category", category_idx), ("brand", brand_idx)):
            if name not in self.sides:
                continue
            new = torch.full((size - old,), UNK_IDX, dtype=torch.long, device=dev)
            if ids is not None:
                new = torch.as_tensor(ids, dtype=torch.long, device=dev)[old:size]
                vocab = self.sides[name].num_embeddings
                new = new.masked_fill((new < 0) | (new >= vocab), UNK_IDX)
            setattr(self, f"item_{name}", torch.cat([getattr(self, f"item_{name}"), new]))
        return size - old

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before rare items shared the unknown row: every item its own
        state_dict.setdefault(prefix + "item_row", torch.arange(self.n_items))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, idx: Tensor) -> Tensor:
        e = self.item(self.item_row[idx])  # (..., D)
        for name, emb in self.sides.items():
            e = e + emb(getattr(self, f"item_{name}")[idx])
        return e / (1 + len(self.sides))


class RoutingOutput(NamedTuple):
    capsules: Tensor  # (B, K, D) interest capsules u_j (zero for inactive interests)
    mask: Tensor  # (B, K) bool, True for the K'_u active interests
    coupling: Tensor | None  # (B, K, L) w_ij of the last iteration; None for mean pooling


class B2IRouting(nn.Module):
    """Behaviour-to-interest dynamic routing (MIND, Algorithm 1).

    One shared bilinear map S (d x d), e_hat = S e. Logits b (B,K,L) start from
    N(0, sigma^2) without gradient; w = softmax of b over the *interest* axis,
    restricted to the user's K'_u active interests; padded behaviours get weight
    0; z_j = sum_i w_ij e_hat_i; u_j = squash(z_j); b_ij += u_j . e_hat_i.
    e_hat is detached in all but the last of the r iterations, so gradients
    reach S (and the embeddings) through the final iteration only.

    S starts as the identity (times `init_scale`: a larger S makes the agreement u . Se
    larger next to sigma, i.e. routing sharper), so capsules start in the item-embedding
    space that the labels live in, and train.py gives it a tenth of the learning rate.
    With nn.Linear's random init (scale ~0.6, smallest singular values ~0) MIND-1 trailed
    mean pooling on Amazon Beauty (valid HR@50, 3 seeds: 0.199 vs 0.208); a random
    orthogonal init did not help (0.199), identity + 0.1x lr did (0.212).
    """

    def __init__(self, dim: int, n_interests: int, iters: int = 3, sigma: float = 1.0,
                 dynamic: bool = True, seed: int = 0, init_scale: float = 1.0,
                 extra_interests: int = 0):
        super().__init__()
        self.k, self.iters, self.sigma, self.dynamic, self.seed = (n_interests, iters, sigma,
                                                                   dynamic, seed)
        self.extra_interests = extra_interests
        self.S = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.S.weight.copy_(torch.eye(dim) * init_scale)
        # (L', K) cache; NOT a buffer: derived from seed
        self._eval_noise = torch.empty(0, n_interests)

    def eval_noise(self, length: int) -> Tensor:
        """Fixed initial logits for eval mode, (L, K). Row i depends only on (seed, i):
        rows are drawn one at a time from a seeded generator, so a longer table extends
        a shorter one and the noise of a behaviour position never depends on L or B."""
        if self._eval_noise.shape[0] < length:
            g = torch.Generator().manual_seed(self.seed)
            n = max(length, 64)
            self._eval_noise = torch.stack([torch.randn(self.k, generator=g) for _ in range(n)])
        return self._eval_noise[:length]

    def initial_logits(self, batch: int, length: int, device: torch.device) -> Tensor:
        """b_ij at the start of routing, (B, K, L), never requiring grad."""
        if self.training:
            # fresh per forward and per user; from the global RNG, which DDP seeds per rank
            return torch.randn(batch, self.k, length, device=device) * self.sigma
        noise = self.eval_noise(length).to(device).t() * self.sigma  # (K, L)
        return noise.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, e: Tensor, hist_len: Tensor, bmask: Tensor | None = None,
                init_logits: Tensor | None = None) -> RoutingOutput:
        """e: (B, L, D) behaviour embeddings; hist_len: (B,); bmask: (B, L) bool real
        behaviours (default: position < hist_len); init_logits: optional (B, K, L)
        starting logits (tests, analysis), else drawn as described above."""
        return self.route(self.S(e), hist_len, bmask, init_logits)

    def route(self, e_hat: Tensor, hist_len: Tensor, bmask: Tensor | None = None,
              init_logits: Tensor | None = None) -> RoutingOutput:
        """`forward` on behaviours already mapped by S: e_hat = S e, (B, L, D). Bulk
        inference gathers e_hat from a table mapped once (`MIND.behaviour_table`)."""
        B, L, _ = e_hat.shape
        dev = e_hat.device
        if bmask is None:
            bmask = torch.arange(L, device=dev)[None, :] < hist_len[:, None]  # (B, L)
        k_active = n_active_interests(hist_len, self.k, self.dynamic,
                                      self.extra_interests).to(dev)  # (B,)
        imask = torch.arange(self.k, device=dev)[None, :] < k_active[:, None]  # (B, K)

        e_hat_nograd = e_hat.detach()
        if init_logits is not None and init_logits.shape != (B, self.k, L):
            raise ValueError(f"init_logits must be (B, K, L) = {(B, self.k, L)}, "
                             f"got {tuple(init_logits.shape)}")
        b = self.initial_logits(B, L, dev) if init_logits is None else init_logits
        b = b.detach().to(e_hat.dtype)  # (B, K, L)
        for it in range(self.iters):
            # grads via the last iteration only
            src = e_hat if it == self.iters - 1 else e_hat_nograd
            # each behaviour spreads itself over the active interests (softmax over K, not L)
            w = torch.softmax(b.masked_fill(~imask[:, :, None], float("-inf")), dim=1)  # (B, K, L)
            w = w * bmask[:, None, :].to(w.dtype)  # padding carries no weight
            z = torch.einsum("bkl,bld->bkd", w, src)  # (B, K, D)
            u = squash(z)  # (B, K, D)
            if it < self.iters - 1:
                b = b + torch.einsum("bkd,bld->bkl", u, src)  # (B, K, L), no grad (src detached)
        # inactive interests received no weight, so u = squash(0) = 0 there already
        return RoutingOutput(u, imask, w)


class LabelAwareAttention(nn.Module):
    """v_u = V_u . softmax(pow(V_u^T e_i, p)) over the active interests.

    pow is sign-safe (sign(x) |x|^p) so negative scores never give NaN; p = 0 is
    uniform attention, p = inf hard attention (the active interest with the
    highest score; the paper's best). Inactive interests get zero weight.
    """

    def __init__(self, p: float = math.inf, eps: float = 1e-12):
        super().__init__()
        self.p, self.eps = float(p), eps

    def weights(self, V: Tensor, mask: Tensor, e: Tensor) -> Tensor:
        """Attention weights (B, K) for user interests V (B,K,D) and label embeddings e (B,D)."""
        scores = torch.einsum("bkd,bd->bk", V, e)  # (B, K)
        if self.p == 0:
            w = mask.to(scores.dtype)
            return w / w.sum(1, keepdim=True).clamp(min=1)
        if math.isinf(self.p):
            best = scores.masked_fill(~mask, float("-inf")).argmax(1)  # (B,)
            return F.one_hot(best, V.shape[1]).to(scores.dtype)
        # clamp before pow: |x|^p with p < 1 has an infinite derivative at 0
        powed = torch.sign(scores) * scores.abs().clamp(min=self.eps).pow(self.p)
        return torch.softmax(powed.masked_fill(~mask, float("-inf")), dim=1)

    def forward(self, V: Tensor, mask: Tensor, e: Tensor) -> Tensor:
        return torch.einsum("bk,bkd->bd", self.weights(V, mask, e), V)  # (B, D)


class ProfileEmbedding(nn.Module):
    """Concatenation of one embedding per profile field; (B, n_fields * dim)."""

    def __init__(self, vocab: Mapping[str, int], dim: int):
        super().__init__()
        self.fields = tuple(vocab)
        self.emb = nn.ModuleDict({f: nn.Embedding(n, dim, padding_idx=PAD_IDX)
                                  for f, n in vocab.items()})
        self.out_dim = dim * len(self.fields)

    def forward(self, profile: Mapping[str, Tensor] | None) -> Tensor | None:
        if not self.fields:
            return None
        if profile is None:
            raise ValueError(f"the model embeds profile fields {self.fields}; pass them")
        parts = []
        for f in self.fields:
            # accept both the field name and its column name in the sample tables
            ids = profile[f] if f in profile else profile.get(f"{f}_idx")
            if ids is None:
                raise KeyError(f"profile field {f!r} (or {f}_idx) missing")
            parts.append(self.emb[f](ids.long()))  # (B, dim)
        return torch.cat(parts, dim=-1)


class UserTower(nn.Module):
    """[capsule ; profile] -> ReLU MLP -> d, applied to each interest independently."""

    def __init__(self, dim: int, profile_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        sizes = (dim + profile_dim, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], dim))  # no ReLU at the end: scores need both signs
        self.mlp = nn.Sequential(*layers)

    def forward(self, caps: Tensor, profile: Tensor | None) -> Tensor:
        if profile is not None:
            profile = profile[:, None, :].expand(-1, caps.shape[1], -1)  # (B, K, P)
            caps = torch.cat([caps, profile], dim=-1)  # (B, K, D + P)
        return self.mlp(caps)  # (B, K, D)


class MIND(nn.Module):
    """MIND, MIND-1-interest (K = 1) or YouTube DNN (pooling="mean"): one code path."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.items = ItemEmbedding(cfg.n_items, d, cfg.n_categories, cfg.n_brands,
                                   cfg.embed_init_std)
        self.routing = (B2IRouting(d, cfg.n_interests, cfg.routing_iters, cfg.routing_sigma,
                                   cfg.dynamic_interests, cfg.routing_seed, cfg.routing_init_scale,
                                   cfg.extra_interests)
                        if cfg.pooling == "routing" else None)
        self.profile = ProfileEmbedding(cfg.profile_vocab, cfg.profile_dim)
        self.tower = UserTower(d, self.profile.out_dim, cfg.tower_hidden)
        self.attention = LabelAwareAttention(cfg.pow_p)
        self.hist_dropout = nn.Dropout(cfg.hist_dropout)  # identity in eval mode

    def _unit(self, x: Tensor) -> Tensor:
        """x scaled to unit length along the last axis when scores are cosines
        (`cosine_temperature` > 0), else x itself; zero rows (padding, inactive
        interests) stay zero."""
        return F.normalize(x, dim=-1) if self.cfg.cosine_scores else x

    def set_item_side(self, category_idx: Tensor | None, brand_idx: Tensor | None,
                      item_idx: Tensor | None = None) -> None:
        self.items.set_item_side(category_idx, brand_idx, item_idx)

    @property
    def n_catalogue(self) -> int:
        """Item ids the model can score: its vocabulary, or more after `extend_catalogue`."""
        return self.items.n_catalogue

    def set_id_rows(self, own: Tensor) -> None:
        self.items.set_id_rows(own)

    def extend_catalogue(self, category_idx: Tensor | None, brand_idx: Tensor | None) -> int:
        return self.items.extend_catalogue(category_idx, brand_idx)

    def item_embeddings(self, idx: Tensor) -> Tensor:
        """The vectors items are scored by (unit length when scores are cosines)."""
        return self._unit(self.items(idx))  # (..., D)

    def all_item_embeddings(self, chunk: int = 1 << 18) -> Tensor:
        """(n_catalogue, D), row i = item i (0 = padding = zero). Chunked to bound
        temporaries."""
        dev, n = self.items.item.weight.device, self.n_catalogue
        return torch.cat([self.item_embeddings(torch.arange(s, min(s + chunk, n), device=dev))
                          for s in range(0, n, chunk)])

    @torch.no_grad()
    def behaviour_table(self, chunk: int = 1 << 18) -> Tensor:
        """(n_catalogue, D): each item as routing sees a behaviour, S e_i (e_i for mean
        pooling); row 0 (padding) is zero. Computed once for bulk inference, a batch then
        gathers rows instead of summing 1 + n_sides lookups and mapping (B*L, D) by S."""
        dev, n = self.items.item.weight.device, self.n_catalogue
        out = []
        for s in range(0, n, chunk):
            e = self.items(torch.arange(s, min(s + chunk, n), device=dev))  # (C, D)
            out.append(e if self.routing is None else self.routing.S(e))
        return torch.cat(out)

    def recent(self, hist: Tensor, hist_len: Tensor) -> tuple[Tensor, Tensor]:
        """The behaviours the interests are computed from: the last `history_window` of
        `hist` (all of it at 0), right-padded. Callers that map routing weights back to
        behaviours apply it first (it is idempotent)."""
        return recent_behaviours(hist, hist_len.long(), self.cfg.history_window)

    def interest_capsules(self, hist: Tensor, hist_len: Tensor,
                          init_logits: Tensor | None = None,
                          table: Tensor | None = None) -> RoutingOutput:
        """Capsules before the user tower: routing output, or the masked mean of the
        behaviour embeddings as a single capsule (YouTube DNN). `table`: this model's
        `behaviour_table()` (inference only: no gradient reaches the embeddings)."""
        hist, hist_len = self.recent(hist, hist_len)  # (B, L) -> (B, W) if windowed
        bmask = behaviour_mask(hist, hist_len)  # (B, L)
        if table is not None and self.routing is not None:
            return self.routing.route(F.embedding(hist, table), hist_len, bmask, init_logits)
        # behaviours are pooled from the raw embeddings; only the scored vectors are unit
        e = self.items(hist) if table is None else F.embedding(hist, table)  # (B, L, D)
        if self.cfg.hist_dropout > 0:  # skipped at 0: no RNG draw, runs stay bitwise as before
            e = self.hist_dropout(e)
        if self.routing is not None:
            return self.routing(e, hist_len, bmask, init_logits)
        m = bmask.to(e.dtype)[:, :, None]  # (B, L, 1)
        mean = (e * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
        return RoutingOutput(mean[:, None, :], torch.ones_like(bmask[:, :1]), None)

    def user_interests(self, hist: Tensor, hist_len: Tensor,
                       profile: Mapping[str, Tensor] | None = None,
                       init_logits: Tensor | None = None,
                       table: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """f_user: (V (B, K, D), mask (B, K) bool). Inactive interests are zeroed.
        `table`: `behaviour_table()`, for bulk inference."""
        caps = self.interest_capsules(hist, hist_len, init_logits, table)
        return self.interests_from_capsules(caps, profile)

    def interests_from_capsules(self, caps: RoutingOutput,
                                profile: Mapping[str, Tensor] | None = None
                                ) -> tuple[Tensor, Tensor]:
        """The user tower on `interest_capsules` output (for callers that also need the
        coupling): (V (B, K, D), mask (B, K)), inactive interests zeroed."""
        V = self._unit(self.tower(caps.capsules, self.profile(profile)))  # (B, K, D)
        return V * caps.mask[:, :, None].to(V.dtype), caps.mask

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """User vector after label-aware attention on batch["target"]: (B, D)."""
        V, mask = self.user_interests(batch["hist"], batch["hist_len"], batch)
        # soft attention (finite p > 0) mixes unit vectors: back to unit length for cosines
        return self._unit(self.attention(V, mask, self.item_embeddings(batch["target"])))
