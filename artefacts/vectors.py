"""Reading the embedding job's Parquet (USER_VECTORS, ITEM_EMBEDDINGS) into numpy.

Used by the index job (items, a sample of users for the recall gate) and by
retrieval (one user, or all of them). Nested lists are decoded from Arrow buffers
in one pass, not row by row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from schemas import ITEM_EMBEDDINGS, USER_VECTORS


@dataclass
class UserVectors:
    user_ids: list[str]
    user_idx: np.ndarray          # (U,) int64
    vectors: list[np.ndarray]     # U arrays (K'_u, D) float32
    model_versions: set[str]

    def __len__(self) -> int:
        return len(self.user_ids)


def _dataset(path: Path | str, table) -> pads.Dataset:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found")
    return pads.dataset(str(path), format="parquet",
                        schema=table.arrow_schema())


def _decode_users(t: pa.Table) -> UserVectors:
    col = t.column("vectors").combine_chunks() if t.num_rows else None
    if col is None:
        return UserVectors([], np.zeros(0, np.int64), [], set())
    inner = col.flatten()  # one entry per vector
    lengths = inner.value_lengths().to_numpy()
    d = int(lengths[0])
    if (lengths != d).any():
        raise ValueError("user vectors of different dimensions in one table")
    flat = inner.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    allv = flat.reshape(-1, d)  # (sum K'_u, D)
    k = col.value_lengths().to_numpy()
    bounds = np.concatenate([[0], np.cumsum(k)])
    return UserVectors(
        user_ids=t.column("user_id").to_pylist(),
        user_idx=t.column("user_idx").to_numpy().astype(np.int64),
        vectors=[allv[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        model_versions=set(pc.unique(t.column("model_version")).to_pylist()))


_USER_COLUMNS = ["user_idx", "user_id", "vectors", "model_version"]


def read_user_vectors(path: Path | str, user_ids: Sequence[str] | None = None) -> UserVectors:
    """All users' vectors, or only those of `user_ids` (others are simply absent)."""
    dataset = _dataset(path, USER_VECTORS)
    flt = None if user_ids is None else pc.field("user_id").isin(list(user_ids))
    return _decode_users(dataset.to_table(columns=_USER_COLUMNS, filter=flt))


def sample_user_vectors(path: Path | str, n: int, seed: int = 0) -> UserVectors:
    """About `n` users drawn at random: files in a seeded random order (each file holds a
    hash partition of users) until n rows are read, then n of those rows."""
    dataset = _dataset(path, USER_VECTORS)
    rng = np.random.default_rng(seed)
    fragments = list(dataset.get_fragments())
    parts, rows = [], 0
    for i in rng.permutation(len(fragments)):
        t = fragments[i].to_table(columns=_USER_COLUMNS, schema=dataset.schema)
        parts.append(t)
        rows += t.num_rows
        if rows >= n:
            break
    if not parts:
        return _decode_users(pa.table({}))
    t = pa.concat_tables(parts)
    if t.num_rows > n:
        t = t.take(np.sort(rng.choice(t.num_rows, n, replace=False)))
    return _decode_users(t)


@dataclass
class ItemEmbeddings:
    item_idx: np.ndarray      # (N,) int64, ascending
    item_ids: list[str]       # (N,) raw ids
    vectors: np.ndarray       # (N, D) float32
    model_versions: set[str]


def read_item_embeddings(path: Path | str) -> ItemEmbeddings:
    t = _dataset(path, ITEM_EMBEDDINGS).to_table().sort_by("item_idx")
    emb = t.column("embedding").combine_chunks()
    lengths = emb.value_lengths().to_numpy()
    d = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and (lengths != d).any():
        raise ValueError("item embeddings of different dimensions in one table")
    flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ItemEmbeddings(
        item_idx=t.column("item_idx").to_numpy().astype(np.int64),
        item_ids=t.column("item_id").to_pylist(),
        vectors=np.ascontiguousarray(flat.reshape(-1, d) if d else flat.reshape(0, 0)),
        model_versions=set(pc.unique(t.column("model_version")).to_pylist()))
