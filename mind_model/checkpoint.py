"""Checkpoints that describe themselves: save atomically, load safely, warm start.

A checkpoint is a dict of plain Python values and tensors only, so that
`torch.load(..., weights_only=True)` reads it (no pickled classes, no Path, no numpy):

    {"model_config": ModelConfig.to_dict(),    # rebuilds the model (pow_p may be inf)
     "train_config": {...},                    # TrainConfig as plain values
     "model": state_dict,                      # parameters + item side buffers
     "optimizer": state_dict | None,           # Adam moments and step counts (resume)
     "optimizer_params": [name, ...] | None,   # parameter names in the optimizer's order
     "step": int, "epoch": int,                # global optimiser steps / epochs completed
     "best": {...}, "meta": {...}, "history": [...]}

- `save_checkpoint(path, ...)`: written to a temporary file beside `path`, then
  renamed in (`artefacts.storage.atomic_path`), so a reader never sees half a checkpoint.
- `load_checkpoint(path)`, `load_model(path, device)` (eval mode, item side restored).
- `warm_start(model, previous_path)`: yesterday's parameters into today's model,
  growing embedding tables whose vocabulary grew (ids are stable across days).
- `optimizer_param_names(optimizer, module)` / `load_optimizer_state(optimizer, module,
  ckpt)`: the optimizer state matched to parameters by name, so a run resumes from a
  checkpoint whose optimizer grouped the parameters differently (e.g. one written before
  the routing map S got its own learning rate).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from artefacts.storage import atomic_path
from mind_model.config import ModelConfig
from mind_model.model import MIND

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel,
                                                          nn.DataParallel)):
        model = model.module
    return model


def plain(value: Any) -> Any:
    """Convert to what `weights_only=True` unpickles: dict/list/str/int/float/bool/None/tensor.
    Paths become strings, numpy scalars and arrays become Python numbers and lists."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy array or scalar
        return plain(value.tolist())
    if hasattr(value, "item"):
        return plain(value.item())
    raise TypeError(f"cannot store {type(value).__name__} in a weights_only checkpoint")


def save_checkpoint(path: Path | str, *, model: nn.Module, model_config: ModelConfig,
                    optimizer: torch.optim.Optimizer | None = None,
                    optimizer_params: list[str] | None = None,
                    train_config: Mapping[str, Any] | None = None, step: int = 0, epoch: int = 0,
                    best: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
                    history: list[Mapping[str, Any]] | None = None) -> Path:
    """Write the checkpoint atomically (temporary file in the same folder + os.replace)."""
    state = {
        "model_config": model_config.to_dict(),
        "train_config": plain(dict(train_config or {})),
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_params": (list(optimizer_params) if optimizer is not None and optimizer_params
                             else None),
        "step": int(step),
        "epoch": int(epoch),
        "best": plain(dict(best or {})),
        "meta": plain(dict(meta or {})),
        "history": plain(list(history or [])),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    return path


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of this project (names the file)."""


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint dict, loaded on CPU with weights_only=True (no arbitrary unpickling).

    A missing file raises FileNotFoundError, a file that does not load (truncated, not a
    checkpoint, or holding objects other than tensors and plain values) CheckpointError;
    both name the file. PyTorch's own message is not passed on: it suggests
    weights_only=False, which would run whatever code the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise CheckpointError(
            f"{path}: not a loadable checkpoint ({type(e).__name__}: it is truncated, not "
            f"written by this project, or holds objects other than tensors and plain "
            f"values, which are never unpickled); retrain or point to another file") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: loads, but is not a checkpoint of this project "
                              f"(no model_config/model)")
    return ckpt


def same_model(ckpt: Mapping[str, Any], cfg: ModelConfig) -> bool:
    """Does the checkpoint hold a model with config `cfg`? The saved config is read with
    `ModelConfig.from_dict`, so a checkpoint written before a config field existed
    counts as that field's default (an upgraded daily run still resumes)."""
    return ModelConfig.from_dict(ckpt["model_config"]).to_dict() == cfg.to_dict()


def load_model(path: Path | str | Mapping[str, Any], device: str | torch.device = "cpu") -> MIND:
    """MIND rebuilt from the checkpoint's config, weights and item side ids; eval mode."""
    ckpt = path if isinstance(path, Mapping) else load_checkpoint(path)
    model = MIND(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"], strict=True)  # item_category / item_brand are buffers
    return model.to(device).eval()


def optimizer_param_names(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[str]:
    """Names (in `module`) of the optimizer's parameters, in its state-dict order."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def load_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module,
                         ckpt: Mapping[str, Any]) -> None:
    """Restore ckpt["optimizer"] into `optimizer`, whose parameters belong to `module`.

    The saved per-parameter state (Adam moments, step) is matched by parameter name, so
    the grouping may differ from the saved one; the current groups keep their settings
    (learning rates). Checkpoints without "optimizer_params" were written with a single
    group over `module.named_parameters()`. A different set of parameters raises.
    """
    saved = ckpt["optimizer"]
    current = optimizer_param_names(optimizer, module)
    saved_names = ckpt.get("optimizer_params") or [n for n, _ in module.named_parameters()]
    saved_index = [i for g in saved["param_groups"] for i in g["params"]]
    if len(saved_index) != len(saved_names) or sorted(saved_names) != sorted(current):
        raise ValueError("the checkpoint's optimizer state is for other parameters "
                         f"({len(saved_index)} saved, {len(current)} now); use a fresh out_dir")
    same_groups = [len(g["params"]) for g in saved["param_groups"]] == \
        [len(g["params"]) for g in optimizer.param_groups]
    if saved_names == current and same_groups:
        optimizer.load_state_dict(saved)  # same layout: restore exactly, group settings included
        return
    by_name = dict(zip(saved_names, saved_index))
    state = optimizer.state_dict()
    state["state"] = {k: saved["state"][by_name[name]] for k, name in enumerate(current)
                      if by_name[name] in saved["state"]}
    optimizer.load_state_dict(state)
    log.info("optimizer state matched by parameter name (the saved grouping differs)")


def _embedding_tables(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Embedding)}


@torch.no_grad()
def warm_start(model: nn.Module, previous: Path | str | Mapping[str, Any],
               strict: bool = True) -> dict[str, Any]:
    """Copy the parameters of a previous checkpoint into `model` (in place).

    Embedding tables whose vocabulary grew keep the old rows at their index (ids are
    stable across days, new ids are appended) and the model's fresh init for the new
    rows. Any other shape difference — or a shrunk vocabulary — raises, naming the
    parameter. Buffers (item -> side id maps) are not copied: they describe today's
    catalogue and come from today's data (`set_item_side`). With strict, parameters
    missing on either side raise; otherwise they are skipped with a warning.
    Returns {"copied": [...], "grown": {name: [old_rows, new_rows]}, "skipped": [...]}.
    """
    ckpt = previous if isinstance(previous, Mapping) else load_checkpoint(previous)
    old: Mapping[str, Tensor] = ckpt["model"]
    model = unwrap(model)
    params = dict(model.named_parameters())
    tables = _embedding_tables(model)
    missing = sorted(set(params) - set(old))
    unexpected = sorted(k for k in set(old) - set(params) if k not in dict(model.named_buffers()))
    if strict and (missing or unexpected):
        raise ValueError(f"warm start: parameters missing from the previous model: {missing}; "
                         f"parameters the new model lacks: {unexpected}")
    report: dict[str, Any] = {"copied": [], "grown": {}, "skipped": missing + unexpected}
    for name, p in params.items():
        if name not in old:
            log.warning("warm start: %s not in the previous model; keeping its fresh init", name)
            continue
        src = old[name].to(device=p.device, dtype=p.dtype)
        if src.shape == p.shape:
            p.copy_(src)
            report["copied"].append(name)
        elif name in tables and src.dim() == 2 and src.shape[1:] == p.shape[1:] \
                and src.shape[0] < p.shape[0]:
            p[: src.shape[0]].copy_(src)  # old ids keep their rows; appended ids keep fresh init
            report["grown"][name] = [int(src.shape[0]), int(p.shape[0])]
            report["copied"].append(name)
        else:
            why = ("its vocabulary shrank (ids must be stable across days)"
                   if name in tables and src.shape[0] > p.shape[0] and src.shape[1:] == p.shape[1:]
                   else "shapes differ")
            raise ValueError(f"warm start: parameter {name!r} has shape {tuple(src.shape)} in the "
                             f"previous model and {tuple(p.shape)} now: {why}")
    log.info("warm start: %d parameters copied, %d embedding tables grown %s",
             len(report["copied"]), len(report["grown"]), report["grown"])
    return report
