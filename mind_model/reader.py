"""Training batches from the prep output — the ONLY module that imports petastorm.

`train_batches(train_dir, *, rank, world_size, batch_size, seed, ...)` yields an
endless stream of full batches of this rank's shard of `sequences/ds=<ds>/train`
(stored as TRAIN_CHUNKS, each row up to C consecutive targets of one user, expanded
here into one sample per target with `mind_model.data.expand_chunks`):

    {"hist": (B, L), "hist_len": (B,), "target": (B,), "user_idx": (B,),
     "<field>_idx": (B,) for each profile field}, all int64 tensors.

petastorm shards by row group (row group i goes to rank i % world_size), so the
shards are uneven; the stream is endless (pass after pass over the shard) and the
training loop decides what an epoch is (a fixed number of steps on every rank). Rows
are sorted by user inside a row group and a chunk holds up to C positions of one user,
so the samples go through a shuffling buffer (samples of many chunks and row groups) that
mixes users within a batch. Everything petastorm-specific stays here, so that a
`pyarrow.dataset` reader can replace it without touching the training loop.

The stream is a function of the seed alone: each pass is one `num_epochs=1` pass of
the reader, reset for the next; the buffer draws from its own generator, seeded by
(seed, rank). petastorm 0.12.1's endless mode
(`num_epochs=None`) reshuffles the row groups every time its ventilator thread polls
a full queue at the start of a pass, so from the second pass on the order depended on
thread timing and two runs with one seed trained on different batches.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from mind_model.data import expand_chunks
from schemas import TRAIN_CHUNKS

log = logging.getLogger(__name__)

# Reader threads per process. One keeps the stream a function of the seed (several threads
# finish row groups in a timing-dependent order) and is enough: on Amazon Beauty the loop
# waited ~1 ms per 22 ms step for data with 1 thread as with 2.
DEFAULT_WORKERS = 1


def parquet_files(folder: Path | str) -> list[Path]:
    """Data files of a Spark-written Parquet folder (skips _SUCCESS, .crc and hidden files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*.parquet")
                  if not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts))


def row_group_rows(folder: Path | str) -> list[int]:
    """Rows of every row group of the folder, in petastorm's row-group order (files sorted)."""
    return [md.row_group(i).num_rows
            for md in (pq.ParquetFile(f).metadata for f in parquet_files(folder))
            for i in range(md.num_row_groups)]


def shard_rows(folder: Path | str, rank: int, world_size: int) -> int:
    """Rows in `rank`'s shard (petastorm gives row group i to shard i % world_size)."""
    return sum(n for i, n in enumerate(row_group_rows(folder)) if i % world_size == rank)


def shard_samples(folder: Path | str, rank: int, world_size: int) -> int:
    """Training samples in `rank`'s shard: the n_targets of its row groups' chunks."""
    return sum(int(pq.ParquetFile(f).read_row_group(i, columns=["n_targets"])
                   .column(0).to_numpy().sum())
               for k, (f, i) in enumerate((f, i) for f in parquet_files(folder)
                                          for i in range(pq.ParquetFile(f).num_row_groups))
               if k % world_size == rank)


def check_shardable(folder: Path | str, world_size: int) -> int:
    """Number of row groups; a clear error if some rank would get none."""
    n = len(row_group_rows(folder))
    if n < world_size:
        raise ValueError(
            f"{folder} has {n} Parquet row group(s) but training runs {world_size} processes: "
            f"petastorm shards by row group, so every process needs at least one. Rebuild the "
            f"sequences with min_row_groups >= {world_size} (jobs.build_sequences "
            f"--min-row-groups) or train with fewer processes.")
    return n


def _silence_petastorm_warnings() -> None:
    """petastorm 0.12.1 calls pyarrow APIs deprecated since pyarrow 5 and hands torch read-only
    numpy arrays; the warnings are attributed to petastorm's modules, so only those are muted."""
    for category in (FutureWarning, DeprecationWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category, module=r"petastorm(\.|$)")
    # "Failed loading Unischema ... Assuming the dataset was not created with Petastorm": expected
    logging.getLogger("petastorm.etl.dataset_metadata").setLevel(logging.WARNING)


def _to_int64(v) -> Tensor:
    # a writable int64 copy: the model wants long ids
    return torch.from_numpy(np.asarray(v, dtype=np.int64))


Columns = dict[str, np.ndarray]


def _concat(a: Columns | None, b: Columns) -> Columns:
    return b if a is None else {k: np.concatenate([a[k], b[k]]) for k in b}


def _take(cols: Columns, idx) -> Columns:
    return {k: v[idx] for k, v in cols.items()}


def _batches(cols: Columns, n_batches: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
    for b in range(n_batches):
        yield {k: _to_int64(v[b * batch_size:(b + 1) * batch_size]) for k, v in cols.items()}


def shuffled_batches(parts: Iterator[Columns], batch_size: int, capacity: int,
                     rng: np.random.Generator | None) -> Iterator[dict[str, Tensor]]:
    """Full batches of the samples of `parts` (one pass), each sample at most once.

    With `rng`, samples go through a buffer: once it holds capacity + batch_size samples,
    it is shuffled and all but `capacity` of them leave as batches; at the end it is
    shuffled and emptied. The last short batch is dropped. Without `rng`, in order."""
    pool: Columns | None = None
    for part in parts:
        pool = _concat(pool, part)
        n = len(pool["target"])
        if rng is not None and n < capacity + batch_size:
            continue
        if rng is not None:
            pool = _take(pool, rng.permutation(n))
        k = (n - (capacity if rng is not None else 0)) // batch_size
        yield from _batches(pool, k, batch_size)
        pool = _take(pool, slice(k * batch_size, None))
    if pool is not None:
        if rng is not None:
            pool = _take(pool, rng.permutation(len(pool["target"])))
        yield from _batches(pool, len(pool["target"]) // batch_size, batch_size)


def _pass_samples(reader, context: str = "past") -> Iterator[Columns]:
    """One pass of a petastorm batch reader over TRAIN_CHUNKS -> TRAIN_SAMPLES columns,
    one dict per row group (or part of one); `context` as in `expand_chunks`."""
    for chunk in reader:
        yield expand_chunks(chunk._asdict(), context)


def train_batches(train_dir: Path | str, *, rank: int = 0, world_size: int = 1,
                  batch_size: int = 256, seed: int = 0, shuffle: bool = True,
                  workers: int = DEFAULT_WORKERS,
                  shuffle_buffer: int | None = None,
                  context: str = "past") -> Iterator[dict[str, Tensor]]:
    """Endless stream of full (B = batch_size) batches of `rank`'s shard of `train_dir`.

    shuffle: shuffle the row-group order (per pass, seeded) and samples through a buffer of
    `shuffle_buffer` samples (default max(32 * batch_size, 16384)). The buffer is emptied at
    the end of each pass; the last short batch of a pass is dropped. Close the generator
    (`contextlib.closing`, or let it be garbage collected) to stop the reader threads.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    train_dir = Path(train_dir).resolve()
    check_shardable(train_dir, world_size)
    _silence_petastorm_warnings()
    from petastorm import make_batch_reader  # heavy import, only where it is used

    capacity = (shuffle_buffer if shuffle_buffer is not None
                else max(32 * batch_size, 16384)) if shuffle else 0
    rng = np.random.default_rng([seed, rank]) if shuffle else None
    # Row groups are shuffled from `seed`, samples from (seed, rank).
    with make_batch_reader(f"file://{train_dir}", schema_fields=TRAIN_CHUNKS.names,
                           reader_pool_type="thread", workers_count=workers,
                           # a queued item is a whole row group: keep few
                           results_queue_size=max(2, 2 * workers),
                           num_epochs=1, shuffle_row_groups=shuffle, seed=seed,
                           cur_shard=rank, shard_count=world_size) as reader:
        # one pass per loop; resetting the reader reshuffles the row groups from its seed
        while True:
            full = 0
            for batch in shuffled_batches(_pass_samples(reader, context), batch_size,
                                          capacity, rng):
                full += 1
                yield batch
            if not full:
                raise ValueError(
                    f"rank {rank}'s shard of {train_dir} has fewer samples than one batch "
                    f"({batch_size}): use a smaller batch_size or fewer processes")
            reader.reset()
