"""Train MIND (or MIND-1 / YouTube DNN) on one ds of prepared sequences, 1..N processes.

    python -m mind_model.train --data-dir data/sequences/ds=2026-11-28 --out-dir runs/x
    torchrun --standalone --nproc_per_node=2 -m mind_model.train --data-dir ... --out-dir ...

`train(cfg)` is the callable core (tests call it in-process); `main()` only parses
arguments. Under torchrun every process reads its rank from the environment, seeds
its sampling noise with `seed + rank` and reads its own petastorm shard
(`mind_model.distributed` holds the process side).

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
  users, with the same `evaluate.evaluate` as compare and the publish gate), logs,
  shows the progress bar and writes `out_dir/`: last.pt (each epoch, at max_steps and
  on SIGTERM), best.pt (best valid HR@50), metrics.json. The other ranks wait at a
  barrier; the stop decision (early stopping, SIGTERM) is agreed by all-reduce so that
  all ranks leave the loop at the same step.
- Resume (default): if out_dir/last.pt exists, model, optimizer state (Adam moments
  and step counts), step, epoch, best and history are restored and training
  continues from that step. Otherwise `warm_start_from` (yesterday's checkpoint)
  initialises the parameters, growing the embedding tables for new ids.
- Periodic checkpoints: rank 0 also writes last.pt (atomically) every
  `save_every_minutes` (default 10) and/or `save_every_steps`, so a kill -9 mid-epoch
  loses at most that much. A resume mid-epoch continues the epoch from the saved step
  to its end; the reader is an endless shuffled stream reseeded by the step, so the
  rest of that epoch is a fresh draw of batches, not the exact unseen remainder (an
  epoch is a number of steps, see above).
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from artefacts.cli import run_main
from artefacts.storage import write_json
from mind_model.checkpoint import (
    load_checkpoint,
    load_model,
    load_optimizer_state,
    optimizer_param_names,
    same_model,
    save_checkpoint,
    warm_start,
)
from mind_model.config import SAMPLERS, ModelConfig, ModelSettings, mind_1, youtube_dnn
from mind_model.data import TRAIN_CONTEXTS, DatasetMeta, load_meta
from mind_model.distributed import (
    Dist,
    StopFlag,
    default_threads,
    pick_device,
    rank_seed,
    setup_distributed,
)
from mind_model.evaluate import HeldOutSample
from mind_model.loss import SampledSoftmaxLoss
from mind_model.metrics import HR_NS
from mind_model.model import MIND, B2IRouting
from mind_model.reader import check_shardable, train_batches
from mind_model.tracking import OFF
from mind_model.train_tracking import finish_training, log_epoch, open_training

log = logging.getLogger(__name__)

VARIANTS = ("mind", "mind1", "youtube")
SELECT_METRIC = "hr@50"  # the model kept as best.pt maximises this on the valid split
SIGNAL_EXIT = 143  # 128 + SIGTERM: the exit status of a run stopped by SIGTERM (last.pt written)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelSettings):
    """A training run: the model settings (inherited from `ModelSettings`, same names and
    defaults as `ModelConfig`; the rest of the model comes from the data) and these."""

    data_dir: str  # a build_sequences output folder: <root>/sequences/ds=YYYY-MM-DD
    out_dir: str  # last.pt, best.pt and metrics.json are written here
    # --- model
    variant: str = "mind"  # "mind" (routing, K interests), "mind1" (K=1), "youtube" (mean pooling)
    side_features: bool = True  # average category/brand into item embeddings (if the data has them)
    profile_features: bool = True  # concatenate user profile embeddings (when the data has them)
    shared_rare_ids: bool = True  # rare items (id_embedding false) share the unknown id's row
    # --- optimisation
    batch_size: int = 256  # per process; the global batch is batch_size * world_size
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0  # Adam's L2 term (0 = off)
    routing_lr_scale: float = 0.1  # S (the shared bilinear map) learns at lr * this; 1 = same lr
    epochs: int = 30  # at most; training stops earlier when valid HR@50 stops improving
    steps_per_epoch: int | None = None  # None = train_samples // global batch; same on all ranks
    max_steps: int | None = None  # stop (and write last.pt) after this many global steps
    seed: int = 0  # model init uses seed on every rank; sampling noise uses seed + rank
    # --- evaluation and model selection
    eval_every_epoch: bool = True  # valid HR@{10,50,100} after each epoch (rank 0)
    eval_split: str = "valid"
    eval_users: int = 10000  # at most this many users, a fixed seeded sample
    patience: int | None = 3  # stop after this many epochs without a better valid HR@50
    # ... but not before this many training samples: on a small data set an epoch is a few
    # hundred steps and ~100 valid users (SE ~ .04) can look worse 3 epochs running while the
    # model still improves (MovieLens latest-small: MIND-K stopped at epoch 3 with valid
    # HR@50 .14 and reached .25 by epoch 14). On large data one epoch exceeds it.
    min_samples: int = 1_000_000
    test_at_end: bool = True  # HR of best.pt on (a sample of) the test split, into metrics.json
    # --- state
    warm_start_from: str | None = None  # previous day's checkpoint; ignored when resuming
    resume: bool = True  # continue from out_dir/last.pt if it exists
    save_every_steps: int = 0  # also write last.pt every N steps (0 = at epoch ends only)
    save_every_minutes: float = 10.0  # also write last.pt when this long since the last (0 = off)
    # --- runtime
    log_every: int = 50  # steps between progress updates / log lines
    threads: int | None = None  # torch threads/process; None = OMP_NUM_THREADS or CPUs / nproc - 1
    device: str = "auto"  # "auto" = cuda:<local rank> when CUDA is available, else cpu
    reader_workers: int = 1  # petastorm reader threads/process; > 1: batch order timing-dependent
    shuffle_buffer: int | None = None  # rows in the shuffling buffer (None = reader's default)
    # "chunk": a training sample's history also holds the chunk's later behaviours (README)
    train_context: str = "past"  # "past" (the behaviours before the target) or "chunk"
    progress: bool = True  # tqdm bar on rank 0
    dist_timeout_min: float = 60.0  # collective timeout; rank 0's evaluation must fit in it
    tracking: bool = True  # log the run to MLflow (rank 0; mind_model.tracking; MIND_TRACKING=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("data_dir", "out_dir", "warm_start_from"):  # paths are stored as text
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.batch_size < 1 or self.epochs < 0 or self.lr <= 0:
            raise ValueError("batch_size >= 1, epochs >= 0 and lr > 0 are required")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 (or None)")
        if self.save_every_steps < 0 or self.save_every_minutes < 0:
            raise ValueError("save_every_steps and save_every_minutes must be >= 0")
        if self.routing_lr_scale < 0:
            raise ValueError("routing_lr_scale must be >= 0")
        if self.train_context not in TRAIN_CONTEXTS:
            raise ValueError(f"train_context must be one of {TRAIN_CONTEXTS}, "
                             f"got {self.train_context!r}")
        if self.eval_split not in ("valid", "test"):
            raise ValueError("eval_split must be 'valid' or 'test'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tower_hidden"] = list(self.tower_hidden)
        return d

    def model_config(self, meta: DatasetMeta) -> ModelConfig:
        """ModelConfig sized to the data, with this run's settings and variant."""
        overrides: dict[str, Any] = {f.name: getattr(self, f.name)
                                     for f in dataclasses.fields(ModelSettings)}
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


def params_sha256(model: nn.Module) -> str:
    """Digest of all parameters (bitwise): equal on every rank after a correct DDP step."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc="train", unit="step", mininterval=1.0,
                dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------- the run


@dataclass
class EpochStats:
    """What one (possibly partial) epoch of this process measured."""

    epoch: int
    steps: int = 0
    loss_sum: Tensor | None = None  # summed on the device: no sync per step
    data_s: float = 0.0
    train_s: float = 0.0


@dataclass
class Progress:
    """Training state that a checkpoint carries and a resume restores."""

    step: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def bad_epochs(self) -> int:
        """Complete epochs since the best one (early stopping survives a resume)."""
        return sum(1 for h in self.history
                   if h.get("complete") and h["epoch"] > self.best.get("epoch", -1))


class Run:
    """One training run of one process, read as its steps: `__init__` (set-up and
    restore), `epoch`, `end_of_epoch`, `finish`."""

    def __init__(self, cfg: TrainConfig, d: Dist) -> None:
        self.cfg, self.d, self.t_start = cfg, d, time.time()
        self.device = pick_device(cfg.device, d)
        self.threads = cfg.threads or default_threads(d.local_world_size)
        torch.set_num_threads(self.threads)
        out = Path(cfg.out_dir)
        self.last_path, self.best_path = out / "last.pt", out / "best.pt"
        self.metrics_path = out / "metrics.json"

        self.meta = load_meta(cfg.data_dir)
        self.train_dir = Path(cfg.data_dir) / "train"
        check_shardable(self.train_dir, d.world_size)  # clear error before any process blocks
        self.mcfg = cfg.model_config(self.meta)
        self.spe = cfg.steps_per_epoch or max(
            1, self.meta.train_samples // (cfg.batch_size * d.world_size))
        self.total = cfg.epochs * self.spe if cfg.max_steps is None \
            else min(cfg.epochs * self.spe, cfg.max_steps)
        self.samples_per_step = cfg.batch_size * d.world_size

        torch.manual_seed(cfg.seed)  # identical init on every rank (DDP broadcasts rank 0's anyway)
        self.model = MIND(self.mcfg)
        self.model.set_item_side(torch.from_numpy(self.meta.item_category),
                                 torch.from_numpy(self.meta.item_brand))
        if cfg.shared_rare_ids:
            self.model.set_id_rows(torch.from_numpy(self.meta.item_own))
        loss = SampledSoftmaxLoss(self.mcfg.n_items, self.mcfg.n_neg, self.mcfg.sampler,
                                  counts=torch.from_numpy(self.meta.item_counts),
                                  logit_scale=self.mcfg.softmax_scale)
        self.step_module = TrainStep(self.model, loss).to(self.device)
        self.optimizer = torch.optim.Adam(param_groups(self.step_module, cfg), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.state, self.resumed_from = self._restore()
        self.last_saved = time.monotonic()  # periodic checkpoints count from here
        self.start_step = self.state.step
        self.bad_epochs = self.state.bad_epochs()
        self.optimizer_params = optimizer_param_names(self.optimizer, self.step_module)

        # routing noise, negatives and shuffling differ per rank (and after a resume)
        self.seed = rank_seed(cfg.seed, d.rank, self.start_step)
        torch.manual_seed(self.seed)
        self.runner = self._ddp()
        self.evaluator = self._evaluator()
        self.run_meta = {"data_dir": cfg.data_dir, "ds": self.meta.stats.get("ds"),
                         "n_items": self.meta.n_items, "train_samples": self.meta.train_samples,
                         "world_size": d.world_size, "steps_per_epoch": self.spe,
                         "variant": cfg.variant}
        # rank 0's MLflow run; other ranks never open one
        self.tracker = open_training(cfg, self.run_meta, self.state.history) if d.main else OFF
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            log.info("training %s on %s: %d processes x batch %d, %d steps/epoch, steps %d -> %d, "
                     "%d threads/process, device %s", cfg.variant, cfg.data_dir, d.world_size,
                     cfg.batch_size, self.spe, self.start_step, self.total, self.threads,
                     self.device)

    # ------------------------------------------------------------------ set-up, restore

    def _restore(self) -> tuple[Progress, str | None]:
        """Continue from last.pt if there is one, else warm start, else a fresh start."""
        cfg, d = self.cfg, self.d
        if cfg.resume and self.last_path.is_file():
            ckpt = load_checkpoint(self.last_path)
            if not same_model(ckpt, self.mcfg):
                raise ValueError(f"{self.last_path} holds a different model (config differs "
                                 f"from this run's); use a fresh out_dir or resume=False")
            self.model.load_state_dict(ckpt["model"])
            load_optimizer_state(self.optimizer, self.step_module, ckpt)
            if d.main:
                log.info("resuming from %s at step %d (epoch %d)", self.last_path,
                         int(ckpt["step"]), ckpt["epoch"])
            return (Progress(int(ckpt["step"]), dict(ckpt["best"]), list(ckpt["history"])),
                    str(self.last_path))
        if cfg.warm_start_from:
            report = warm_start(self.model, cfg.warm_start_from)
            if d.main:
                log.info("warm start from %s: grown tables %s", cfg.warm_start_from,
                         report["grown"])
        return Progress(), None

    def _ddp(self) -> nn.Module:
        if not self.d.active:
            return self.step_module
        kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
        # buffers (item -> side ids, sampler tables) are equal everywhere: no per-step sync
        return nn.parallel.DistributedDataParallel(self.step_module, forward_sync_buffers=False,
                                                   **kw)

    def _evaluator(self) -> HeldOutSample | None:
        cfg = self.cfg
        if not (self.d.main and cfg.eval_every_epoch):
            return None
        ev = HeldOutSample(self.meta, cfg.eval_split, cfg.eval_users, cfg.seed, self.device)
        if ev.n_users == 0:
            log.warning("no %s users in %s: best.pt will be the last model", cfg.eval_split,
                        cfg.data_dir)
        return ev

    def save(self, path: Path, with_optimizer: bool = True) -> None:
        step = self.state.step
        if path == self.last_path:
            self.last_saved = time.monotonic()
        save_checkpoint(path, model=self.model, model_config=self.mcfg,
                        train_config=self.cfg.to_dict(),
                        optimizer=self.optimizer if with_optimizer else None,
                        optimizer_params=self.optimizer_params, step=step,
                        epoch=step // self.spe, best=self.state.best, meta=self.run_meta,
                        history=self.state.history)

    # ------------------------------------------------------------------------ epoch

    def epoch(self, batches: Iterator[dict[str, Tensor]], stop_flag: StopFlag,
              bar) -> tuple[EpochStats, bool]:
        """Steps up to the end of the current epoch (or the run); (stats, stopped by signal)."""
        cfg, d = self.cfg, self.d
        stats = EpochStats(self.state.step // self.spe)
        stats.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        epoch_end = min(self.total, (stats.epoch + 1) * self.spe)
        t0 = time.perf_counter()
        try:
            while self.state.step < epoch_end:
                td = time.perf_counter()
                batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                stats.data_s += time.perf_counter() - td
                loss = self.runner(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                stats.loss_sum += loss.detach()
                self.state.step += 1
                stats.steps += 1
                step = self.state.step
                if step % cfg.log_every == 0 or step == epoch_end:
                    self._log_step(stats, loss, time.perf_counter() - t0, bar)
                if bar is not None:
                    bar.update(1)
                # agree on SIGTERM every log_every steps (every step when alone: free)
                if (not d.active or step % cfg.log_every == 0) and d.any(stop_flag.set,
                                                                          self.device):
                    return stats, True
                if d.main and step < epoch_end and self._periodic_save_due(step):
                    self.save(self.last_path)  # rank 0 only; the others need not wait
            return stats, False
        finally:
            stats.train_s = time.perf_counter() - t0

    def _periodic_save_due(self, step: int) -> bool:
        cfg = self.cfg
        by_steps = bool(cfg.save_every_steps) and step % cfg.save_every_steps == 0
        by_time = bool(cfg.save_every_minutes) and \
            time.monotonic() - self.last_saved >= cfg.save_every_minutes * 60
        return by_steps or by_time

    def _log_step(self, stats: EpochStats, loss: Tensor, elapsed: float, bar) -> None:
        rate = stats.steps * self.samples_per_step / elapsed
        if bar is not None:
            bar.set_postfix(epoch=stats.epoch, loss=f"{loss.item():.3f}", samples_s=f"{rate:.0f}",
                            refresh=False)
        elif self.d.main:
            log.info("step %d epoch %d loss %.4f %.0f samples/s", self.state.step, stats.epoch,
                     loss.item(), rate)

    # ----------------------------------------------------------------- end of epoch

    def end_of_epoch(self, stats: EpochStats, signalled: bool, bar) -> bool:
        """Record the epoch; rank 0 evaluates, keeps best.pt and writes last.pt and
        metrics.json. Returns whether all ranks agree to stop early."""
        cfg, d, state = self.cfg, self.d, self.state
        complete = state.step == (stats.epoch + 1) * self.spe
        mean_loss = d.sum(float(stats.loss_sum), self.device) / max(1, stats.steps * d.world_size)
        stop_now = False
        if d.main:
            rec: dict[str, Any] = {
                "epoch": stats.epoch, "step": state.step, "complete": complete, "loss": mean_loss,
                "steps": stats.steps,
                "samples_per_s": stats.steps * self.samples_per_step / max(stats.train_s, 1e-9),
                "train_s": stats.train_s, "data_wait_s": stats.data_s,
                "log_n_neg": math.log(self.mcfg.n_neg)}
            if self.evaluator is not None and self.evaluator.n_users and not signalled:
                te = time.perf_counter()  # a stop signal leaves no time to evaluate
                rec.update({f"valid_{k}": v for k, v in self.evaluator(self.model).items()})
                rec["eval_s"] = time.perf_counter() - te
            rec["wall_s"] = time.time() - self.t_start
            state.history.append(rec)
            log_epoch(self.tracker, rec)
            score = rec.get(f"valid_{SELECT_METRIC}")
            improved = score is not None and score > state.best.get(f"valid_{SELECT_METRIC}", -1.0)
            if improved or (score is None and complete):
                state.best = {k: v for k, v in rec.items() if k.startswith("valid_")}
                state.best.update(epoch=stats.epoch, step=state.step)
                self.bad_epochs = 0
                self.save(self.best_path, with_optimizer=False)
            elif complete:
                self.bad_epochs += 1
            self.save(self.last_path)
            write_json(self.metrics_path, {"history": state.history, "best": state.best,
                                           "config": cfg.to_dict()})
            (bar.write if bar is not None else log.info)(self._epoch_message(rec, stats))
            stop_now = self.patience_exhausted()
            if stop_now:
                log.info("early stop: no better valid %s for %d epochs", SELECT_METRIC,
                         self.bad_epochs)
        # rank 0's evaluation and writes are done before anyone moves on
        return d.any(stop_now, self.device)

    def patience_exhausted(self) -> bool:
        """Early stopping: `patience` epochs without a better valid score, after at least
        `min_samples` training samples."""
        cfg = self.cfg
        return (cfg.patience is not None and self.bad_epochs >= cfg.patience
                and self.state.step * self.samples_per_step >= cfg.min_samples)

    def _epoch_message(self, rec: Mapping[str, Any], stats: EpochStats) -> str:
        n = max(stats.steps, 1)
        msg = (f"epoch {rec['epoch']} step {rec['step']}: loss {rec['loss']:.4f} (log n_neg "
               f"{math.log(self.mcfg.n_neg):.2f}), {rec['samples_per_s']:.0f} samples/s, "
               f"data wait {stats.data_s / n * 1e3:.2f} ms/step of {stats.train_s / n * 1e3:.1f}")
        if rec.get(f"valid_{SELECT_METRIC}") is not None:
            msg += " | " + " ".join(f"hr@{k} {rec[f'valid_hr@{k}']:.4f}" for k in HR_NS)
        return msg

    # ----------------------------------------------------------------------- finish

    def finish(self, stopped: str | None) -> dict[str, Any]:
        """Rank 0 makes sure last.pt and best.pt exist, scores best.pt on the test users and
        writes the final metrics.json; every rank returns its result."""
        cfg, d, state = self.cfg, self.d, self.state
        result: dict[str, Any] = {
            "rank": d.rank, "world_size": d.world_size, "step": state.step,
            "start_step": self.start_step, "steps_run": state.step - self.start_step,
            "epoch": state.step // self.spe, "steps_per_epoch": self.spe, "stopped": stopped,
            "resumed_from": self.resumed_from, "params_sha256": params_sha256(self.model),
            "out_dir": str(Path(cfg.out_dir)), "last": str(self.last_path),
            "best": str(self.best_path), "metrics": str(self.metrics_path)}
        if d.main:
            if not self.last_path.is_file():  # nothing ran (e.g. a finished run with epochs=0)
                self.save(self.last_path)
            if not self.best_path.is_file():
                self.save(self.best_path, with_optimizer=False)
            test = {}
            if cfg.test_at_end and stopped != "signal":
                try:
                    tester = HeldOutSample(self.meta, "test", cfg.eval_users, cfg.seed,
                                           self.device)
                    test = tester(load_model(self.best_path, self.device)) if tester.n_users else {}
                except FileNotFoundError:
                    log.warning("no test split in %s", cfg.data_dir)
            write_json(self.metrics_path, {
                "history": state.history, "best": state.best, "test": test, "stopped": stopped,
                "config": cfg.to_dict(), "wall_s": time.time() - self.t_start,
                "world_size": d.world_size})
            result.update(history=state.history, best_valid=state.best, test=test)
            finish_training(self.tracker, metrics_path=self.metrics_path,
                            best_path=self.best_path, history=state.history, best=state.best,
                            test=test, stopped=stopped)
            result["mlflow_run_id"] = self.tracker.run_id
        d.barrier()
        return result


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
    run = Run(cfg, d)
    # a resumed run that had already stopped early is finished: a rerun changes nothing
    stopped = "early_stop" if run.patience_exhausted() else None
    bar = _progress(run.total, run.start_step, cfg.progress and d.main)
    batches = train_batches(run.train_dir, rank=d.rank, world_size=d.world_size,
                            batch_size=cfg.batch_size, seed=run.seed, workers=cfg.reader_workers,
                            shuffle_buffer=cfg.shuffle_buffer, context=cfg.train_context)
    try:
        with contextlib.closing(batches), StopFlag() as stop_flag:
            run.step_module.train()
            while run.state.step < run.total and stopped is None:
                stats, signalled = run.epoch(batches, stop_flag, bar)
                if signalled:
                    stopped = "signal"
                if run.end_of_epoch(stats, signalled, bar) and stopped is None:
                    stopped = "early_stop"
    except BaseException:
        run.tracker.end("FAILED")
        raise
    finally:
        if bar is not None:
            bar.close()
    return run.finish(stopped)


# ------------------------------------------------------------------------- CLI


_CHOICES = {"variant": VARIANTS, "sampler": SAMPLERS, "eval_split": ("valid", "test")}


def _field_comments() -> dict[str, str]:
    """The config classes' field comments, reused as --help texts (one source for the docs)."""
    import inspect
    import re

    pat = re.compile(r"^\s+(\w+): [^#]*#\s*(.*)$")
    out: dict[str, str] = {}
    for cls in reversed(TrainConfig.__mro__):
        if dataclasses.is_dataclass(cls):
            out.update({m[1]: m[2] for m in map(pat.match, inspect.getsource(cls).splitlines())
                        if m})
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mind_model.train",
                                description=__doc__.split("\n")[0],
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


def load_settings(path: Path | str) -> dict[str, Any]:
    """The settings of a settings.json written by `experiments.tune`: the values every
    trial was trained with ("fixed", e.g. --set cosine_temperature=0.1) and the chosen ones
    on top."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no settings file (write one with experiments.tune)")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("chosen"), dict):
        raise ValueError(f"{path}: not a settings file of experiments.tune (no 'chosen')")
    settings = {**data.get("fixed", {}), **data["chosen"]}
    unknown = set(settings) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    return settings


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """TrainConfig fields from the command line; `--settings FILE` (experiments.tune's
    settings.json) supplies defaults that explicit flags override."""
    parser = _parser()
    parser.add_argument("--settings", type=Path, default=None,
                        help="settings.json of experiments.tune: its chosen values, unless "
                             "given as flags")
    pre, _ = parser.parse_known_args(argv)
    if pre.settings is not None:
        parser.set_defaults(**load_settings(pre.settings))
    args = vars(parser.parse_args(argv))
    args.pop("settings")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # bad flags, data, checkpoints: one line, exit 2


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    result = train(TrainConfig(**args))
    if rank == 0:
        summary = {k: result[k] for k in ("step", "epoch", "stopped", "best_valid", "test",
                                          "last", "best", "metrics") if k in result}
        print(json.dumps(summary, indent=2, default=str))
    return SIGNAL_EXIT if result["stopped"] == "signal" else 0


if __name__ == "__main__":
    sys.exit(main())
