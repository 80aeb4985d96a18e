"""Train on N local processes without a separate command: torchrun's launcher in-process.

`run_training(cfg, nproc)` calls `train.train(cfg)` in this process, or on `nproc` local
processes through torch's `elastic_launch` (gloo on CPU, nccl on GPUs), and returns rank
0's result. Used by `experiments` (compare, sweep, tune) and the training benchmark. A run
stopped by SIGTERM raises `TrainingStopped`, so a driver of several runs stops too instead
of starting the next one.
"""
from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from artefacts.cli import ExpectedError
from mind_model.train import SIGNAL_EXIT, TrainConfig, train


class TrainingStopped(ExpectedError):
    """A training run was stopped by a signal (it wrote last.pt): stop, start nothing else."""

    exit_status = SIGNAL_EXIT


def _train_worker(cfg: TrainConfig) -> dict:
    """Entry point of each elastic_launch process (module level, so spawn can import it).
    A spawned process starts without logging: rank 0 logs the epochs, as under torchrun."""
    if not logging.getLogger().handlers:
        rank = int(os.environ.get("RANK", "0"))
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: "
                                   f"%(message)s")
    return train(cfg)


def run_training(cfg: TrainConfig, nproc: int = 1) -> dict[str, Any]:
    """train(cfg) here, or on `nproc` local processes; returns rank 0's result."""
    result = _run(cfg, nproc)
    if result.get("stopped") == "signal":
        raise TrainingStopped(f"{cfg.out_dir}: training stopped by a signal (last.pt written); "
                              f"no further run started")
    return result


def _run(cfg: TrainConfig, nproc: int) -> dict[str, Any]:
    if nproc <= 1:
        return train(cfg)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    # torchrun's convention: one intra-op thread per process unless told otherwise
    old = os.environ.get("OMP_NUM_THREADS")
    if old is None and cfg.threads is None:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        results = elastic_launch(launch, _train_worker)(cfg)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return results[0]
