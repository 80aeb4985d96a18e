"""f_user at inference: ids in (numpy or torch), each user's ACTIVE interest vectors out.

One place for what every caller of a trained model needs, so that the Spark embedding job
(`jobs.embed_users`), on-the-fly retrieval (`serving.retrieval`), evaluation
(`evaluate.ModelRecommender`) and the publish gate compute exactly the same vectors:

- `model_inputs(model, hist, profile)`: ids the model cannot look up (items outside its
  catalogue, profile values newer than the model, negative ids) become 1 = unknown
  instead of failing the lookup; profile fields the model embeds but the caller lacks
  are unknown too. `fit_catalogue(model, item_category, item_brand)` first extends the
  catalogue with today's items, so items newer than the model are scored through their
  side features.

- `interest_vectors(model, hist (B,L), hist_len (B,), profile) -> (list of (K'_u, D), k (B,))`
  runs `MIND.user_interests` in inference mode (the model must be in eval mode, which
  makes routing deterministic) and drops the masked interests (never zero-filled);
  `interest_vectors_flat` gives the same vectors as one (sum K'_u, D) array, for bulk jobs.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mind_model.model import MIND
from schemas import UNK_IDX


def known_ids(ids: np.ndarray | Tensor, size: int) -> Tensor:
    """Ids outside [0, size) -> UNK_IDX (padding 0 stays 0); a long tensor."""
    t = ids if isinstance(ids, Tensor) else torch.from_numpy(np.array(ids, dtype=np.int64))
    t = t.long()
    return t.masked_fill((t < 0) | (t >= size), UNK_IDX)


def model_inputs(model: MIND, hist: np.ndarray | Tensor,
                 profile: Mapping[str, np.ndarray | Tensor] | None = None
                 ) -> tuple[Tensor, dict[str, Tensor] | None]:
    """(hist (B, L), {field: (B,)} or None) as the model can look them up (see module doc).

    `profile` maps a profile field or its column name ("gender" or "gender_idx") to
    (B,) ids; fields the model does not embed are ignored."""
    cfg = model.cfg
    hist = known_ids(hist, model.n_catalogue)  # (B, L)
    prof = {}
    for f in cfg.profile_fields:
        ids = None if profile is None else profile.get(f"{f}_idx", profile.get(f))
        if ids is None:
            ids = torch.full((hist.shape[0],), UNK_IDX, dtype=torch.long)
        prof[f] = known_ids(ids, cfg.profile_vocab[f])  # (B,)
    return hist, prof or None


def pad_history(items: Sequence[int], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `max_len` of `items` (oldest first), right-padded: ((1, L), (1,))."""
    tail = np.asarray(list(items)[-max_len:] if max_len else [], dtype=np.int64)
    hist = np.zeros((1, max_len), dtype=np.int64)
    hist[0, :len(tail)] = tail
    return hist, np.array([len(tail)], dtype=np.int64)


def fit_catalogue(model: MIND, item_category: np.ndarray, item_brand: np.ndarray) -> int:
    """Extend the model's catalogue to today's item vocabulary (side ids indexed by item
    id, e.g. `DatasetMeta.item_category`); returns the number of items added."""
    return model.extend_catalogue(torch.from_numpy(np.asarray(item_category)),
                                  torch.from_numpy(np.asarray(item_brand)))


def interest_vectors(model: MIND, hist: np.ndarray, hist_len: np.ndarray,
                     profile: Mapping[str, np.ndarray] | None = None
                     ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each user's K'_u active interest vectors, float32 (K'_u, D), and K'_u (B,)."""
    flat, k = interest_vectors_flat(model, hist, hist_len, profile)
    return (np.split(flat, np.cumsum(k)[:-1]) if len(k) else []), k


@torch.inference_mode()
def interest_vectors_flat(model: MIND, hist: np.ndarray, hist_len: np.ndarray,
                          profile: Mapping[str, np.ndarray] | None = None,
                          table: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The users' active vectors one after another, float32 (sum K'_u, D) C-contiguous,
    and K'_u (B,) int32: user b's are rows [sum k[:b], sum k[:b+1]). No per-user Python
    objects, for bulk jobs. `table`: `model.behaviour_table()`, computed once per model
    (the same vectors within float rounding, about half the work per user)."""
    if model.training:
        raise ValueError("the model must be in eval mode (deterministic routing); "
                         "use mind_model.checkpoint.load_model or model.eval()")
    hist_t, prof = model_inputs(model, hist, profile)  # (B, L), {field: (B,)}
    hist_len = torch.from_numpy(np.asarray(hist_len, dtype=np.int64))  # (B,)
    V, mask = model.user_interests(hist_t, hist_len, prof, table=table)  # (B, K, D), (B, K)
    # boolean indexing keeps row-major (user, interest) order: user after user
    flat = V[mask].float().cpu().numpy()  # (sum K'_u, D)
    return np.ascontiguousarray(flat), mask.sum(1).cpu().numpy().astype(np.int32)
