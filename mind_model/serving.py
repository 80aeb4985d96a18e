"""f_user for serving: numpy in, each user's ACTIVE interest vectors out.

One function shared by the Spark embedding job (`jobs.embed_users`) and on-the-fly
retrieval (`mind_model.retrieval`), so both compute exactly the same vectors:

- `interest_vectors(model, hist (B,L), hist_len (B,), profile) -> (list of (K'_u, D), k (B,))`
  runs `MIND.user_interests` in inference mode (the model must be in eval mode, which
  makes routing deterministic) and drops the masked interests (never zero-filled).
- Ids the model has no row for (items or profile values newer than the model) are
  mapped to 1 = unknown instead of failing the lookup.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from mind_model.model import MIND

PAD_IDX, UNK_IDX = 0, 1  # mirrors schemas.tables


def clip_ids(ids: np.ndarray, size: int) -> np.ndarray:
    """Ids outside [0, size) -> UNK_IDX (padding 0 stays 0). Returns int64."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where((ids < 0) | (ids >= size), UNK_IDX, ids)


def pad_history(items: Sequence[int], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `max_len` of `items` (oldest first), right-padded: ((1, L), (1,))."""
    tail = np.asarray(list(items)[-max_len:] if max_len else [], dtype=np.int64)
    hist = np.zeros((1, max_len), dtype=np.int64)
    hist[0, :len(tail)] = tail
    return hist, np.array([len(tail)], dtype=np.int64)


@torch.inference_mode()
def interest_vectors(model: MIND, hist: np.ndarray, hist_len: np.ndarray,
                     profile: Mapping[str, np.ndarray] | None = None
                     ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each user's K'_u active interest vectors, float32 (K'_u, D), and K'_u (B,).

    `profile` maps a profile field or its column name ("gender" or "gender_idx") to
    (B,) ids; fields the model does not embed are ignored, missing ones are unknown.
    """
    if model.training:
        raise ValueError("the model must be in eval mode (deterministic routing); "
                         "use mind_model.checkpoint.load_model or model.eval()")
    cfg = model.cfg
    hist = clip_ids(np.asarray(hist), cfg.n_items)  # (B, L)
    hist_len = np.asarray(hist_len, dtype=np.int64)  # (B,)
    B = hist.shape[0]
    prof = {}
    for f in cfg.profile_fields:
        ids = None
        if profile is not None:
            ids = profile.get(f"{f}_idx", profile.get(f))
        ids = np.full(B, UNK_IDX) if ids is None else np.asarray(ids)
        prof[f] = torch.from_numpy(clip_ids(ids, cfg.profile_vocab[f]))  # (B,)
    V, mask = model.user_interests(torch.from_numpy(hist), torch.from_numpy(hist_len),
                                   prof or None)  # (B, K, D), (B, K)
    V, mask = V.float().cpu().numpy(), mask.cpu().numpy()
    return [V[b][mask[b]] for b in range(B)], mask.sum(1).astype(np.int32)
