"""Train MIND (or MIND-1 / YouTube DNN) on one ds of prepared sequences, 1..N processes.

    python -m mind_model.train --data-dir data/sequences/ds=2026-11-28 --out-dir runs/x
    torchrun --standalone --nproc_per_node=2 -m mind_model.train --data-dir ... --out-dir ...

`train(cfg)` is the callable core (tests call it in-process); `main()` only parses
arguments. Under torchrun every process reads its rank from the environment, seeds
its sampling noise with `seed + rank` and reads its own petastorm shard.

Design points:
- One DDP forward computes the loss: `TrainStep(model, loss)` embeds the users, the
  targets and the shared negatives inside `forward`, so every parameter that gets a
  gradient (item, side and profile tables, S, tower) is all-reduced by DDP. Calling
  `model.module.item_embeddings` outside the DDP forward would leave those
  gradients unsynchronised and the ranks would drift apart.
- Every rank runs the same number of steps per epoch,
  `floor(train_samples / (batch_size * world_size))` unless set: petastorm's shards
  are uneven (row groups), and a rank that ran out of batches first would leave the
  others hanging in all-reduce. The reader is an endless stream, so no rank runs dry.
- Only rank 0 evaluates (valid HR@N over today's catalogue, on a fixed sample of
  users), logs, shows the progress bar and writes `out_dir/`: last.pt (each epoch,
  at max_steps and on SIGTERM), best.pt (best valid HR@50), metrics.json. The other
  ranks wait at a barrier; the stop decision (early stopping, SIGTERM) is agreed by
  all-reduce so that all ranks leave the loop at the same step.
- Resume (default): if out_dir/last.pt exists, model, optimizer state (Adam moments
  and step counts), step, epoch, best and history are restored and training
  continues from that step. Otherwise `warm_start_from` (yesterday's checkpoint)
  initialises the parameters, growing the embedding tables for new ids.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mind_model.checkpoint import (load_checkpoint, load_model, load_optimizer_state, same_model,
                                   optimizer_param_names, save_checkpoint, warm_start)
from mind_model.config import ModelConfig, mind_1, youtube_dnn
from mind_model.data import PROFILE_COLUMNS, DatasetMeta, load_meta, read_eval
from mind_model.loss import SampledSoftmaxLoss
from mind_model.metrics import FIRST_IDX, hit_rate_at, topn_multi_interest
from mind_model.model import B2IRouting, MIND
from mind_model.reader import check_shardable, train_batches

log = logging.getLogger(__name__)

VARIANTS = ("mind", "mind1", "youtube")
HR_NS = (10, 50, 100)
SELECT_METRIC = "hr@50"  # the model kept as best.pt maximises this on the valid split


@dataclass
class TrainConfig:
    data_dir: str  # a build_sequences output folder: <root>/sequences/ds=YYYY-MM-DD
    out_dir: str  # last.pt, best.pt and metrics.json are written here
    # --- model (the rest of ModelConfig comes from the data: vocabulary sizes, L)
    variant: str = "mind"  # "mind" (routing, K interests), "mind1" (K = 1), "youtube" (mean pooling)
    embed_dim: int = 64  # d
    embed_init_std: float = 0.0  # id embeddings' init std; 0 = embed_dim ** -0.5
    n_interests: int = 4  # K (mind only); the paper uses 3..5
    routing_iters: int = 3  # r
    routing_sigma: float = 1.0  # std of the initial routing logits
    routing_init_scale: float = 1.0  # S starts as this times the identity
    dynamic_interests: bool = True  # K'_u = max(1, min(K, floor(log2 |I_u|)))
    pow_p: float = math.inf  # label-aware attention power: inf = hard (paper's best), 0 = uniform
    tower_hidden: tuple[int, ...] = (256,)  # ReLU layers of the user tower
    profile_dim: int = 16  # per profile field
    side_features: bool = True  # average category/brand into item embeddings (when the data has them)
    profile_features: bool = True  # concatenate user profile embeddings (when the data has them)
    n_neg: int = 1024  # sampled-softmax negatives per step, shared by the batch (MIND.md: 100s-1000s)
    sampler: str = "log_uniform"  # "log_uniform" over popularity rank, or "popularity"
    logit_scale: float = 1.0  # 1 / temperature on u.e (the vectors are unnormalised)
    # --- optimisation
    batch_size: int = 256  # per process; the global batch is batch_size * world_size
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0  # Adam's L2 term (0 = off)
    routing_lr_scale: float = 0.1  # S (the shared bilinear map) learns at lr * this; 1 = same as the rest
    epochs: int = 10
    steps_per_epoch: int | None = None  # None = floor(train_samples / (batch_size * world_size)); same on all ranks
    max_steps: int | None = None  # stop (and write last.pt) after this many global steps
    seed: int = 0  # model init uses seed on every rank; sampling noise uses seed + rank
    # --- evaluation and model selection
    eval_every_epoch: bool = True  # valid HR@{10,50,100} after each epoch (rank 0)
    eval_split: str = "valid"
    eval_users: int = 10000  # at most this many users, a fixed seeded sample
    patience: int | None = None  # stop after this many epochs without a better valid HR@50
    test_at_end: bool = True  # HR of best.pt on (a sample of) the test split, into metrics.json
    # --- state
    warm_start_from: str | None = None  # previous day's checkpoint; ignored when resuming
    resume: bool = True  # continue from out_dir/last.pt if it exists
    save_every_steps: int = 0  # also write last.pt every N steps (0 = at epoch ends only)
    # --- runtime
    log_every: int = 50  # steps between progress updates / log lines
    threads: int | None = None  # torch threads per process; None = OMP_NUM_THREADS or CPUs / processes - 1
    device: str = "auto"  # "auto" = cuda:<local rank> when CUDA is available, else cpu
    reader_workers: int = 1  # petastorm reader threads per process; > 1 makes the batch order timing-dependent
    shuffle_buffer: int | None = None  # rows in the shuffling buffer (None = reader's default)
    progress: bool = True  # tqdm bar on rank 0
    dist_timeout_min: float = 60.0  # collective timeout; rank 0's evaluation must fit in it

    def __post_init__(self) -> None:
        self.data_dir, self.out_dir = str(self.data_dir), str(self.out_dir)
        if self.warm_start_from is not None:
            self.warm_start_from = str(self.warm_start_from)
        self.tower_hidden = tuple(int(h) for h in self.tower_hidden)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.batch_size < 1 or self.epochs < 0 or self.lr <= 0:
            raise ValueError("batch_size >= 1, epochs >= 0 and lr > 0 are required")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 (or None)")
        if self.routing_lr_scale < 0:
            raise ValueError("routing_lr_scale must be >= 0")
        if self.eval_split not in ("valid", "test"):
            raise ValueError("eval_split must be 'valid' or 'test'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tower_hidden"] = list(self.tower_hidden)
        return d

    def model_config(self, meta: DatasetMeta) -> ModelConfig:
        """ModelConfig sized to the data, with this run's overrides and variant."""
        # every field both configs share (embed_dim, n_interests, routing_*, pow_p, ...)
        overrides: dict[str, Any] = {name: getattr(self, name) for name in _MODEL_FIELDS}
        max_len = meta.stats.get("config", {}).get("max_len")
        if max_len:
            overrides["max_len"] = int(max_len)
        if not self.side_features:
            overrides.update(n_categories=0, n_brands=0)
        if not self.profile_features:
            overrides["profile_vocab"] = {}
        if self.variant == "youtube":
            overrides["n_interests"] = 1  # youtube_dnn below sets pooling="mean"
        cfg = meta.model_config(**overrides)
        return {"mind": lambda c: c, "mind1": mind_1, "youtube": youtube_dnn}[self.variant](cfg)


# ModelConfig fields that TrainConfig also has: a run's model settings, passed on by name
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                      if f.name in {m.name for m in dataclasses.fields(ModelConfig)})


def param_groups(module: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam parameter groups: everything at cfg.lr, the routing map S at
    cfg.lr * cfg.routing_lr_scale. S is dense and shared by every behaviour of every
    user, so Adam moves it a full step on every batch, and at the full rate it drifts
    away from the item-embedding space the labels live in (Amazon Beauty valid HR@50,
    MIND-1: 0.202 at scale 1 in one run, 0.212 at 0.1 over 3 seeds)."""
    s_maps = {id(m.S.weight) for m in module.modules() if isinstance(m, B2IRouting)}
    routing, rest = [], []
    for p in module.parameters():
        (routing if id(p) in s_maps else rest).append(p)
    groups: list[dict[str, Any]] = [{"params": rest}]
    if routing:
        groups.append({"params": routing, "lr": cfg.lr * cfg.routing_lr_scale})
    return groups


class TrainStep(nn.Module):
    """model + sampled softmax as ONE module, so that one DDP forward reaches every
    parameter: user tower, label embeddings and the shared negatives' embeddings."""

    def __init__(self, model: MIND, loss: SampledSoftmaxLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        user = self.model(batch)  # (B, D), label-aware attention on batch["target"]
        return self.loss(user, batch["target"], self.model.item_embeddings)  # scalar


# ------------------------------------------------------------------------- distributed


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


# ------------------------------------------------------------------------- evaluation


class Evaluator:
    """HR@{10,50,100} of a model on a fixed sample of held-out users, over today's items.

    The catalogue is restricted to `meta.active_items` (items of today's data): the
    scores are computed against their embeddings only, as the ANN index would be.
    """

    def __init__(self, meta: DatasetMeta, split: str, max_users: int, seed: int,
                 device: torch.device, batch_users: int = 1024):
        data = read_eval(meta.seq_dir, split)
        n = len(data["target"])
        pick = np.sort(np.random.default_rng(seed).permutation(n)[:max_users]) if n > max_users \
            else np.arange(n)
        self.split, self.n_users, self.device, self.batch_users = split, len(pick), device, batch_users
        self.hist = torch.from_numpy(data["hist"][pick])  # (U, L)
        self.hist_len = torch.from_numpy(data["hist_len"][pick])  # (U,)
        self.target = torch.from_numpy(data["target"][pick])  # (U,)
        self.profile = {c: torch.from_numpy(data[c][pick]) for c in PROFILE_COLUMNS if c in data}
        # rows 0, 1 of the restricted table are dummies: topn_multi_interest never returns them
        self.ids = torch.cat([torch.zeros(FIRST_IDX, dtype=torch.long),
                              torch.from_numpy(meta.active_items).long()])  # (FIRST_IDX + M,)

    @torch.no_grad()
    def __call__(self, model: MIND) -> dict[str, float]:
        if self.n_users == 0:
            return {}
        was_training = model.training
        model.eval()
        try:
            emb = model.item_embeddings(self.ids.to(self.device))  # (2 + M, D); rows 0, 1 unused
            found = []
            for s in range(0, self.n_users, self.batch_users):
                sl = slice(s, s + self.batch_users)
                prof = {c: v[sl].to(self.device) for c, v in self.profile.items()}
                V, mask = model.user_interests(self.hist[sl].to(self.device),
                                               self.hist_len[sl].to(self.device), prof)  # (b,K,D), (b,K)
                _, pos = topn_multi_interest(V, mask, emb, max(HR_NS))  # (b, 100) rows of emb
                found.append(self.ids[pos.cpu()])  # (b, 100) item ids
            hr = hit_rate_at(torch.cat(found), self.target, HR_NS)
        finally:
            model.train(was_training)
        return {**hr, "users": self.n_users}


# ------------------------------------------------------------------------- helpers


def params_sha256(model: nn.Module) -> str:
    """Digest of all parameters (bitwise): equal on every rank after a correct DDP step."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def default_threads(local_world_size: int) -> int:
    """OMP_NUM_THREADS if set (torchrun sets 1), else the process's share of the CPUs minus one
    for the reader threads: oversubscribed intra-op threads were 5x slower on a busy 2-core box."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)


def _rank_seed(seed: int, rank: int, start_step: int) -> int:
    if start_step == 0:
        return seed + rank
    # a resumed run must not replay the noise and batch order of the first steps
    return int(np.random.SeedSequence([seed, rank, start_step]).generate_state(1)[0])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc="train", unit="step", mininterval=1.0,
                dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as configured; returns final metrics and paths (rank 0 has the evaluations).

    Works as a single process and under torchrun / elastic_launch (WORLD_SIZE > 1).
    """
    d = setup_distributed(cfg.dist_timeout_min)
    try:
        return _train(cfg, d)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist) -> dict[str, Any]:
    t_start = time.time()
    device = pick_device(cfg.device, d)
    threads = cfg.threads or default_threads(d.local_world_size)
    torch.set_num_threads(threads)
    out_dir = Path(cfg.out_dir)
    last_path, best_path, metrics_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "metrics.json"

    meta = load_meta(cfg.data_dir)
    train_dir = Path(cfg.data_dir) / "train"
    check_shardable(train_dir, d.world_size)  # clear error before any process blocks
    mcfg = cfg.model_config(meta)
    spe = cfg.steps_per_epoch or max(1, meta.train_samples // (cfg.batch_size * d.world_size))
    total = cfg.epochs * spe if cfg.max_steps is None else min(cfg.epochs * spe, cfg.max_steps)

    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP broadcasts rank 0's anyway)
    model = MIND(mcfg)
    model.set_item_side(torch.from_numpy(meta.item_category), torch.from_numpy(meta.item_brand))
    loss_fn = SampledSoftmaxLoss(mcfg.n_items, mcfg.n_neg, mcfg.sampler,
                                 counts=torch.from_numpy(meta.item_counts),
                                 logit_scale=mcfg.logit_scale)
    step_module = TrainStep(model, loss_fn).to(device)
    optimizer = torch.optim.Adam(param_groups(step_module, cfg), lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)

    start_step, best, history, resumed_from = 0, {}, [], None
    if cfg.resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if not same_model(ckpt, mcfg):
            raise ValueError(f"{last_path} holds a different model (config differs from this run's); "
                             f"use a fresh out_dir or resume=False")
        model.load_state_dict(ckpt["model"])
        load_optimizer_state(optimizer, step_module, ckpt)
        start_step, best, history = int(ckpt["step"]), dict(ckpt["best"]), list(ckpt["history"])
        resumed_from = str(last_path)
        if d.main:
            log.info("resuming from %s at step %d (epoch %d)", last_path, start_step, ckpt["epoch"])
        del ckpt
    elif cfg.warm_start_from:
        report = warm_start(model, cfg.warm_start_from)
        if d.main:
            log.info("warm start from %s: grown tables %s", cfg.warm_start_from, report["grown"])

    torch.manual_seed(_rank_seed(cfg.seed, d.rank, start_step))  # routing noise, negatives, shuffling
    if d.active:
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        # buffers (item -> side ids, sampler tables) are equal everywhere: no per-step sync
        runner: nn.Module = nn.parallel.DistributedDataParallel(step_module,
                                                                forward_sync_buffers=False, **ddp_kw)
    else:
        runner = step_module

    evaluator = None
    if d.main and cfg.eval_every_epoch:
        evaluator = Evaluator(meta, cfg.eval_split, cfg.eval_users, cfg.seed, device)
        if evaluator.n_users == 0:
            log.warning("no %s users in %s: best.pt will be the last model", cfg.eval_split, cfg.data_dir)
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("training %s on %s: %d processes x batch %d, %d steps/epoch, steps %d -> %d, "
                 "%d threads/process, device %s", cfg.variant, cfg.data_dir, d.world_size,
                 cfg.batch_size, spe, start_step, total, threads, device)

    run_meta = {"data_dir": cfg.data_dir, "ds": meta.stats.get("ds"), "n_items": meta.n_items,
                "train_samples": meta.train_samples, "world_size": d.world_size,
                "steps_per_epoch": spe, "variant": cfg.variant}

    optimizer_params = optimizer_param_names(optimizer, step_module)  # fixed for the run

    def save(path: Path, step: int, with_optimizer: bool = True) -> None:
        save_checkpoint(path, model=model, model_config=mcfg, train_config=cfg.to_dict(),
                        optimizer=optimizer if with_optimizer else None,
                        optimizer_params=optimizer_params, step=step,
                        epoch=step // spe, best=best, meta=run_meta, history=history)

    step, stopped = start_step, None
    # complete epochs since the best one (early stopping survives a resume)
    bad_epochs = sum(1 for h in history if h.get("complete") and h["epoch"] > best.get("epoch", -1))
    samples_per_step = cfg.batch_size * d.world_size
    bar = _progress(total, start_step, cfg.progress and d.main)
    batches = train_batches(train_dir, rank=d.rank, world_size=d.world_size,
                            batch_size=cfg.batch_size, seed=_rank_seed(cfg.seed, d.rank, start_step),
                            workers=cfg.reader_workers, shuffle_buffer=cfg.shuffle_buffer)
    try:
        with contextlib.closing(batches), StopFlag() as stop_flag:
            step_module.train()
            while step < total and stopped is None:
                epoch = step // spe
                epoch_end = min(total, (epoch + 1) * spe)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                n_steps, data_s, t0 = 0, 0.0, time.perf_counter()
                while step < epoch_end:
                    td = time.perf_counter()
                    batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                    data_s += time.perf_counter() - td
                    loss = runner(batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach()
                    step += 1
                    n_steps += 1
                    if step % cfg.log_every == 0 or step == epoch_end:
                        rate = n_steps * samples_per_step / (time.perf_counter() - t0)
                        if bar is not None:
                            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}",
                                            samples_s=f"{rate:.0f}", refresh=False)
                        elif d.main:
                            log.info("step %d epoch %d loss %.4f %.0f samples/s",
                                     step, epoch, loss.item(), rate)
                    if bar is not None:
                        bar.update(1)
                    # agree on SIGTERM every log_every steps (every step when alone: free)
                    if (not d.active or step % cfg.log_every == 0) and d.any(stop_flag.set, device):
                        stopped = "signal"
                        break
                    if d.main and cfg.save_every_steps and step % cfg.save_every_steps == 0 \
                            and step < epoch_end:
                        save(last_path, step)
                train_s = time.perf_counter() - t0
                complete = step == (epoch + 1) * spe
                mean_loss = d.sum(float(loss_sum), device) / max(1, n_steps * d.world_size)
                stop_now = False
                if d.main:
                    rec: dict[str, Any] = {
                        "epoch": epoch, "step": step, "complete": complete, "loss": mean_loss,
                        "steps": n_steps, "samples_per_s": n_steps * samples_per_step / max(train_s, 1e-9),
                        "train_s": train_s, "data_wait_s": data_s,
                        "log_n_neg": math.log(mcfg.n_neg)}
                    if evaluator is not None and cfg.eval_every_epoch and evaluator.n_users \
                            and stopped != "signal":  # a stop signal leaves no time to evaluate
                        te = time.perf_counter()
                        rec.update({f"valid_{k}": v for k, v in evaluator(model).items()})
                        rec["eval_s"] = time.perf_counter() - te
                    rec["wall_s"] = time.time() - t_start
                    history.append(rec)
                    score = rec.get(f"valid_{SELECT_METRIC}")
                    improved = score is not None and score > best.get(f"valid_{SELECT_METRIC}", -1.0)
                    if improved or (score is None and complete):
                        best = {k: v for k, v in rec.items() if k.startswith("valid_")}
                        best.update(epoch=epoch, step=step)
                        bad_epochs = 0
                        save(best_path, step, with_optimizer=False)
                    elif complete:
                        bad_epochs += 1
                    save(last_path, step)
                    _write_json(metrics_path, {"history": history, "best": best, "config": cfg.to_dict()})
                    msg = (f"epoch {epoch} step {step}: loss {mean_loss:.4f} (log n_neg "
                           f"{math.log(mcfg.n_neg):.2f}), {rec['samples_per_s']:.0f} samples/s, "
                           f"data wait {data_s / max(n_steps, 1) * 1e3:.2f} ms/step of "
                           f"{train_s / max(n_steps, 1) * 1e3:.1f}")
                    if score is not None:
                        msg += " | " + " ".join(f"{k} {rec[f'valid_{k}']:.4f}" for k in
                                                (f"hr@{n}" for n in HR_NS))
                    (bar.write if bar is not None else log.info)(msg)
                    stop_now = cfg.patience is not None and bad_epochs >= cfg.patience
                    if stop_now:
                        log.info("early stop: no better valid %s for %d epochs", SELECT_METRIC, bad_epochs)
                # rank 0's evaluation and writes are done before anyone moves on
                if d.any(stop_now, device) and stopped is None:
                    stopped = "early_stop"
    finally:
        if bar is not None:
            bar.close()

    result: dict[str, Any] = {
        "rank": d.rank, "world_size": d.world_size, "step": step, "start_step": start_step,
        "steps_run": step - start_step, "epoch": step // spe, "steps_per_epoch": spe,
        "stopped": stopped, "resumed_from": resumed_from, "params_sha256": params_sha256(model),
        "out_dir": str(out_dir), "last": str(last_path), "best": str(best_path),
        "metrics": str(metrics_path)}
    if d.main:
        if not last_path.is_file():  # nothing ran (e.g. resumed a finished run with epochs=0)
            save(last_path, step)
        if not best_path.is_file():
            save(best_path, step, with_optimizer=False)
        test = {}
        if cfg.test_at_end and stopped != "signal":
            try:
                tester = Evaluator(meta, "test", cfg.eval_users, cfg.seed, device)
                test = tester(load_model(best_path, device)) if tester.n_users else {}
            except FileNotFoundError:
                log.warning("no test split in %s", cfg.data_dir)
        _write_json(metrics_path, {"history": history, "best": best, "test": test,
                                   "stopped": stopped, "config": cfg.to_dict(),
                                   "wall_s": time.time() - t_start, "world_size": d.world_size})
        result.update(history=history, best_valid=best, test=test)
    d.barrier()
    return result


# ------------------------------------------------------------------------- CLI


_CHOICES = {"variant": VARIANTS, "sampler": ("log_uniform", "popularity"), "eval_split": ("valid", "test")}


def _field_comments() -> dict[str, str]:
    """TrainConfig's field comments, reused as --help texts (one source for the docs)."""
    import inspect
    import re

    pat = re.compile(r"^\s+(\w+): [^#]*#\s*(.*)$")
    return {m[1]: m[2] for m in map(pat.match, inspect.getsource(TrainConfig).splitlines()) if m}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mind_model.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = _field_comments()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        t, h = str(f.type), helps.get(f.name, "").replace("%", "%%")
        if t == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=h)
        elif t.startswith("tuple"):
            p.add_argument(flag, type=int, nargs="*", default=list(default or ()), help=h)
        else:
            conv = int if "int" in t and "float" not in t else float if "float" in t else str
            p.add_argument(flag, type=conv, default=default, required=required, help=h,
                           choices=_CHOICES.get(f.name))
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    result = train(TrainConfig(**args))
    if rank == 0:
        summary = {k: result[k] for k in ("step", "epoch", "stopped", "best_valid", "test",
                                          "last", "best", "metrics") if k in result}
        print(json.dumps(summary, indent=2, default=str))
    return 143 if result["stopped"] == "signal" else 0


if __name__ == "__main__":
    sys.exit(main())
