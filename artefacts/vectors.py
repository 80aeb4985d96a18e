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

from artefacts.row_spans import RowSpan, read_spans, row_group_rows
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
    """The whole items table, sorted by item_idx."""
    t = _dataset(path, ITEM_EMBEDDINGS).to_table().sort_by("item_idx")
    idx, vectors, versions = _decode_item_batch(t)
    return ItemEmbeddings(item_idx=idx, item_ids=t.column("item_id").to_pylist(),
                          vectors=np.ascontiguousarray(vectors), model_versions=versions)


# ---------------------------------------------------- items in parts (the parallel index build)

_ITEM_COLUMNS = ["item_idx", "embedding", "model_version"]


def _decode_item_batch(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray, set]:
    """(idx (n,) int64, vectors (n, D) float32, model versions) of one batch of items."""
    emb = batch.column("embedding")
    emb = emb.combine_chunks() if isinstance(emb, pa.ChunkedArray) else emb
    lengths = emb.value_lengths().to_numpy()
    d = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and (lengths != d).any():
        raise ValueError("item embeddings of different dimensions in one table")
    flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    idx = batch.column("item_idx").to_numpy().astype(np.int64)
    return idx, flat.reshape(len(idx), d), set(pc.unique(batch.column("model_version")).to_pylist())


def item_row_groups(path: Path | str) -> list[tuple[str, int, int]]:
    """The items table's row groups in file order, (file relative to `path`, row group,
    rows), from the Parquet footers: nothing is decoded. The plan of the index's shards."""
    path = Path(path)
    files = sorted(_dataset(path, ITEM_EMBEDDINGS).files)  # hidden / _ files skipped
    return [(str(Path(f).relative_to(path)), g, rows)
            for f in files for _, g, rows in row_group_rows(f)]


def read_item_spans(path: Path | str, spans: Sequence[RowSpan], *, threads: bool = True,
                    batch_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """The items in `spans` (files relative to `path`), sorted by item_idx: only their row
    groups are decoded, one at a time. threads: False reads in this thread only.

    Returns (idx (M,) int64, vectors (M, D) float32, model versions).
    """
    path = Path(path)
    absolute = [RowSpan(str(path / s.file), s.row_group, s.start, s.stop) for s in spans]
    parts = [_decode_item_batch(b) for b in read_spans(absolute, batch_rows,
                                                       columns=_ITEM_COLUMNS,
                                                       use_threads=threads)]
    return _sorted_items(parts)


def _sorted_items(parts: list[tuple[np.ndarray, np.ndarray, set]]
                  ) -> tuple[np.ndarray, np.ndarray, set[str]]:
    versions = set().union(*(v for *_, v in parts))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), versions
    idx, vectors = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(idx, kind="stable")
    return idx[order], np.ascontiguousarray(vectors[order]), versions


def read_item_part(path: Path | str, keep, *,
                   threads: bool = True) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """The items for which `keep(item_idx (n,) int64) -> (n,) bool` holds, read one record
    batch at a time (memory: the kept items plus one batch), sorted by item_idx. Rows are
    selected before their vectors are decoded. threads: False reads in this thread only
    (a worker that stands for one core).

    Returns (idx (M,) int64, vectors (M, D) float32, model versions).
    """
    parts = []
    for batch in _dataset(path, ITEM_EMBEDDINGS).to_batches(columns=_ITEM_COLUMNS,
                                                            use_threads=threads):
        mine = keep(batch.column("item_idx").to_numpy().astype(np.int64))
        if mine.any():
            parts.append(_decode_item_batch(batch if mine.all() else batch.filter(mine)))
    return _sorted_items(parts)


def sample_item_vectors(path: Path | str, n: int, total: int,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """About `n` of the `total` items, chosen by a seeded hash of item_idx (the same items
    whatever the files' layout), read a batch at a time: the index's training sample."""
    if n >= total:
        return read_item_part(path, lambda idx: np.ones(len(idx), bool))
    threshold = np.uint64(int(n / total * 2**64 - 1))
    salt = np.uint64(0x9E3779B97F4A7C15 * (seed + 1) % 2**64)

    def keep(idx: np.ndarray) -> np.ndarray:
        return _mix64(idx.astype(np.uint64) ^ salt) < threshold

    return read_item_part(path, keep)


def spread_order(item_idx: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random permutation of the items (by a hash of item_idx): the order the
    embedding job writes them in, so that any run of rows is a uniform sample of the
    catalogue. The index's shards are runs of rows; in item_idx order (most frequent first
    within each day's new ids) one shard would hold the most popular items."""
    return np.argsort(_mix64(np.asarray(item_idx).astype(np.uint64)), kind="stable")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value (wrapping uint64)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
