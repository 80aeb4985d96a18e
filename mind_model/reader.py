"""Training batches from the prep output — the ONLY module that imports petastorm.

`train_batches(train_dir, *, rank, world_size, batch_size, seed, ...)` yields an
endless stream of full batches of this rank's shard of `sequences/ds=<ds>/train`:

    {"hist": (B, L), "hist_len": (B,), "target": (B,), "user_idx": (B,),
     "<field>_idx": (B,) for each profile field}, all int64 tensors.

petastorm shards by row group (row group i goes to rank i % world_size), so the
shards are uneven; the stream is endless (pass after pass over the shard) and the
training loop decides what an epoch is (a fixed number of steps on every rank). Rows
are sorted by user inside a row group, so a shuffling buffer several row groups deep
mixes users within a batch. Everything petastorm-specific stays here, so that a
`pyarrow.dataset` reader can replace it without touching the training loop.

The stream is a function of the seed alone: each pass is one `num_epochs=1` pass of
the reader, reset by the loader for the next. petastorm 0.12.1's endless mode
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

from schemas import TRAIN_SAMPLES

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
    # "Start a new pass of Petastorm DataLoader, reset underlying Petastorm reader":
    # every pass, by design
    logging.getLogger("petastorm.pytorch").setLevel(logging.ERROR)


def _to_int64(v) -> Tensor:
    # a writable int64 copy: torch warns on petastorm's read-only arrays, and the model
    # wants long ids
    return torch.from_numpy(np.asarray(v, dtype=np.int64))


def train_batches(train_dir: Path | str, *, rank: int = 0, world_size: int = 1,
                  batch_size: int = 256, seed: int = 0, shuffle: bool = True,
                  workers: int = DEFAULT_WORKERS,
                  shuffle_buffer: int | None = None) -> Iterator[dict[str, Tensor]]:
    """Endless stream of full (B = batch_size) batches of `rank`'s shard of `train_dir`.

    shuffle: shuffle the row-group order (per pass, seeded) and rows through a buffer of
    `shuffle_buffer` rows (default max(32 * batch_size, 16384)). The buffer is emptied at
    the end of each pass; the last short batch of a pass is dropped. Close the generator
    (`contextlib.closing`, or let it be garbage collected) to stop the reader threads.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    train_dir = Path(train_dir).resolve()
    check_shardable(train_dir, world_size)
    _silence_petastorm_warnings()
    from petastorm import make_batch_reader  # heavy import, only where it is used
    from petastorm.pytorch import BatchedDataLoader

    capacity = (shuffle_buffer if shuffle_buffer is not None
                else max(32 * batch_size, 16384)) if shuffle else 0
    # Row groups are shuffled from `seed`; BatchedDataLoader shuffles rows with torch's
    # global RNG, which the trainer seeds with base seed + rank.
    with make_batch_reader(f"file://{train_dir}", schema_fields=TRAIN_SAMPLES.names,
                           reader_pool_type="thread", workers_count=workers,
                           # a queued item is a whole row group (up to ~200k rows): keep few
                           results_queue_size=max(2, 2 * workers),
                           num_epochs=1, shuffle_row_groups=shuffle, seed=seed,
                           cur_shard=rank, shard_count=world_size) as reader:
        loader = BatchedDataLoader(reader, batch_size=batch_size, transform_fn=_to_int64,
                                   shuffling_queue_capacity=capacity)
        # one pass per loop; the loader resets the reader, which reshuffles from its seed
        while True:
            full = 0
            for batch in loader:
                if batch["hist"].shape[0] == batch_size:  # only the end of a pass is short
                    full += 1
                    yield batch
            if not full:
                raise ValueError(
                    f"rank {rank}'s shard of {train_dir} has fewer rows than one batch "
                    f"({batch_size}): use a smaller batch_size or fewer processes")
