"""The process side of training: rank and world from torchrun's environment, the device,
the stop signal, threads per process and per-rank seeds. No model code here."""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False  # we called init_process_group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is True on any rank (one tiny all-reduce)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, value: float, device: torch.device) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())


def setup_distributed(timeout_min: float) -> Dist:
    """Rank and world from torchrun's environment; init the process group when WORLD_SIZE > 1
    (nccl on CUDA, gloo on CPU), unless the caller already did."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
        owns = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
                owns_group=owns)


def pick_device(spec: str, d: Dist) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            torch.cuda.set_device(d.local_rank)
            return torch.device("cuda", d.local_rank)
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", d.local_rank)
    return dev


class StopFlag:
    """Set by SIGTERM (and SIGINT under torchrun); checked by the loop. Handlers are
    installed only from the main thread and restored on exit."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("signal %d: stopping after the current step and writing last.pt", signum)
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def default_threads(local_world_size: int) -> int:
    """OMP_NUM_THREADS if set (torchrun sets 1), else the process's share of the CPUs minus one
    for the reader threads: oversubscribed intra-op threads were 5x slower on a busy 2-core box."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))
    return max(1, cpus // local_world_size - 1)


def rank_seed(seed: int, rank: int, start_step: int) -> int:
    if start_step == 0:
        return seed + rank
    # a resumed run must not replay the noise and batch order of the first steps
    return int(np.random.SeedSequence([seed, rank, start_step]).generate_state(1)[0])
