"""Reading the data-prep output (`sequences/ds=<ds>/`) into numpy for the model side.

Training batches come through `mind_model.reader` (petastorm); everything small
enough to hold in memory — vocabulary sizes, item side ids, evaluation users — is
read here with pyarrow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mind_model.config import ModelConfig
from schemas import (
    EVAL_SAMPLES,
    ITEM_FEATURES,
    PAD_IDX,
    PROFILE_COLUMNS,
    PROFILE_FIELDS,
    TRAIN_CHUNKS,
    UNK_IDX,
)


@dataclass
class DatasetMeta:
    """What a model needs to know about one ds of prepared data."""

    seq_dir: Path
    n_items: int                    # item vocabulary size (max idx + 1)
    n_categories: int
    n_brands: int
    profile_vocab: dict[str, int]   # field -> vocabulary size; {} when no profiles
    item_category: np.ndarray       # (n_items,) int64, category idx of each item (1 = unknown)
    item_brand: np.ndarray          # (n_items,) int64
    item_counts: np.ndarray         # (n_items,) int64, kept interactions (0 = not in today's data)
    item_train_counts: np.ndarray   # (n_items,) int64, interactions of training users
    item_own: np.ndarray            # (n_items,) bool: own id embedding (False: rare, shares UNK's)
    active_items: np.ndarray        # (M,) int64, the items of today's catalogue
    train_samples: int
    stats: dict[str, Any]

    def model_config(self, **overrides: Any) -> ModelConfig:
        """A ModelConfig sized to this data (side and profile features only if present)."""
        # A vocabulary of size 2 holds only padding and unknown: the feature is absent.
        present = {f: n for f, n in self.profile_vocab.items() if n > 2}
        base = dict(n_items=self.n_items,
                    n_categories=self.n_categories if self.n_categories > 2 else 0,
                    n_brands=self.n_brands if self.n_brands > 2 else 0,
                    profile_vocab=present)
        base.update(overrides)
        return ModelConfig(**base)


def load_meta(seq_dir: Path | str) -> DatasetMeta:
    seq_dir = Path(seq_dir)
    stats_path = seq_dir / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"{stats_path} not found: is {seq_dir} a build_sequences output?")
    stats = json.loads(stats_path.read_text())
    sizes = stats["vocab_sizes"]
    items = _read_items(seq_dir / "items")
    idx = items.column("item_idx").to_numpy().astype(np.int64)
    n_items = int(sizes["item"])
    cat = np.full(n_items, UNK_IDX, dtype=np.int64)
    brand = np.full(n_items, UNK_IDX, dtype=np.int64)
    counts = np.zeros(n_items, dtype=np.int64)
    cat[idx] = items.column("category_idx").to_numpy()
    brand[idx] = items.column("brand_idx").to_numpy()
    counts[idx] = items.column("interactions").to_numpy()
    # items outside today's data keep their own rows: they are only ever negatives, and as
    # such they must not push down the row that today's rare items share
    own = np.ones(n_items, dtype=bool)
    own[idx] = items.column("id_embedding").to_numpy(zero_copy_only=False)
    train_counts = np.zeros(n_items, dtype=np.int64)
    train_counts[idx] = items.column("train_interactions").to_numpy()
    return DatasetMeta(
        seq_dir=seq_dir, n_items=n_items, n_categories=int(sizes["category"]),
        n_brands=int(sizes["brand"]),
        profile_vocab={f: int(sizes[f]) for f in PROFILE_FIELDS if f in sizes},
        item_category=cat, item_brand=brand, item_counts=counts, item_train_counts=train_counts,
        item_own=own, active_items=np.sort(idx),
        train_samples=int(stats["train_samples"]), stats=stats)


def _read_items(path: Path):
    """The items table; one written before rare items were kept (no train_interactions,
    id_embedding) reads as every item with its own id embedding and unknown train counts."""
    import pyarrow as pa

    names = set(pq.read_schema(next(iter(sorted(path.glob("*.parquet"))))).names)
    missing = {"train_interactions", "id_embedding"} - names
    t = pq.read_table(path, columns=[c for c in ITEM_FEATURES.names if c not in missing])
    if "train_interactions" in missing:
        t = t.append_column("train_interactions", t.column("interactions"))
    if "id_embedding" in missing:
        t = t.append_column("id_embedding", pa.array(np.ones(t.num_rows, dtype=bool)))
    return t.select(ITEM_FEATURES.names).cast(ITEM_FEATURES.arrow_schema())


def _read(seq_dir: Path, split: str, table) -> dict[str, np.ndarray]:
    path = Path(seq_dir) / split
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found")
    t = pq.read_table(path, schema=table.arrow_schema())
    out: dict[str, np.ndarray] = {}
    for name in table.names:
        col = t.column(name)
        if name in ("hist", "targets"):  # fixed length L (C): one (N, L) array
            flat = col.combine_chunks().flatten().to_numpy()
            out[name] = flat.reshape(t.num_rows, -1).astype(np.int64)
        elif name == "full_seq":  # variable length: a list of arrays
            out[name] = [np.asarray(x, dtype=np.int64) for x in col.to_pylist()]
        else:
            out[name] = col.to_numpy().astype(np.int64)
    return out


def read_eval(seq_dir: Path | str, split: str = "test") -> dict[str, np.ndarray]:
    """Held-out users (`test` or `valid`): hist (N, L), hist_len, target, full_seq, profile ids."""
    return _read(Path(seq_dir), split, EVAL_SAMPLES)


TRAIN_CONTEXTS = ("past", "chunk")


def expand_chunks(chunks: dict[str, np.ndarray], context: str = "past") -> dict[str, np.ndarray]:
    """TRAIN_CHUNKS columns (hist (N, L), hist_len, targets (N, C), n_targets, user_idx,
    profile ids; N chunks) -> TRAIN_SAMPLES columns (S = sum(n_targets) samples), in chunk
    order then target order, dtypes kept. Target j of a chunk has as history the last L
    items of hist[:hist_len] + targets[:j] (context "past", the paper's), or of
    hist[:hist_len] + every other target of the chunk, before and after it (context
    "chunk": a training-only augmentation for data whose order carries little; the
    evaluation and serving histories stay the behaviours before the target)."""
    if context not in TRAIN_CONTEXTS:
        raise ValueError(f"context must be one of {TRAIN_CONTEXTS}, got {context!r}")
    hist, targets = np.asarray(chunks["hist"]), np.asarray(chunks["targets"])
    n, L = hist.shape
    hist_len = np.asarray(chunks["hist_len"], dtype=np.int64)
    n_t = np.asarray(chunks["n_targets"], dtype=np.int64)
    # each chunk's items as one row, right-aligned before the targets: (N, L + C)
    cols = np.arange(L) - (L - hist_len)[:, None]                       # (N, L) source column
    ctx = np.where(cols >= 0, np.take_along_axis(hist, np.maximum(cols, 0), 1), PAD_IDX)
    items = np.concatenate([ctx, targets], axis=1)
    row = np.repeat(np.arange(n), n_t)                                  # (S,) chunk of sample
    j = np.arange(len(row)) - np.repeat(np.cumsum(n_t) - n_t, n_t)      # (S,) target in chunk
    if context == "past":
        h = np.minimum(hist_len[row] + j, L)                            # (S,) history length
        src = (L + j - h)[:, None] + np.arange(L)                       # (S, L) in items
        real = np.arange(L) < h[:, None]
        sample_hist = np.where(real, items[row[:, None], np.minimum(src, items.shape[1] - 1)],
                               PAD_IDX)
    else:  # the chunk's items but the target itself, the last L of them, in order
        col = np.arange(items.shape[1])                                 # (L + C,)
        usable = ((col >= (L - hist_len)[row][:, None])
                  & (col < (L + n_t)[row][:, None]) & (col != (L + j)[:, None]))  # (S, L + C)
        from_end = np.cumsum(usable[:, ::-1], axis=1)[:, ::-1]          # usable at or after
        keep = usable & (from_end <= L)
        h = keep.sum(axis=1)
        first = np.argsort(~keep, axis=1, kind="stable")[:, :L]         # kept columns first
        real = np.arange(L) < h[:, None]
        sample_hist = np.where(real, np.take_along_axis(items[row], first, 1), PAD_IDX)
    out = {"user_idx": np.asarray(chunks["user_idx"])[row],
           "hist": sample_hist.astype(hist.dtype),
           "hist_len": h.astype(np.asarray(chunks["hist_len"]).dtype),
           "target": targets[row, j]}
    out.update({c: np.asarray(chunks[c])[row] for c in PROFILE_COLUMNS})
    return out


def read_train(seq_dir: Path | str, context: str = "past") -> dict[str, np.ndarray]:
    """All training samples in memory (baselines and small data; training streams instead):
    the TRAIN_SAMPLES columns, int64, expanded from the stored chunks (`expand_chunks`)."""
    return expand_chunks(_read(Path(seq_dir), "train", TRAIN_CHUNKS), context)
