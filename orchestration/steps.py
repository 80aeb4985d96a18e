"""The bodies of the orchestration steps that are not a job of their own.

The DAGs (`dags/`) only wire tasks; what a task decides lives here, callable and
testable without Airflow:

- `resolve_ds`: the partition date of a run (an explicit param, else the logical date).
- `baseline_version`: the published version a new ds is compared with and warm-started
  from — the served one if it is older than ds, else the one it replaced.
- `train_command`: the torchrun command line of one ds. Training writes into
  `<root>/training/ds=D/run-<fingerprint>/`, the fingerprint hashing the data's
  statistics, the training flags and the warm-start model: a retry or a rerun with the
  same inputs resumes (a finished run is not trained again, so a rerun gives the same
  model file), changed inputs train afresh.
- `evaluate_and_stage`: the publish gate. HR@N of the new model and of the baseline
  model on the SAME held-out users of ds (ids the older model does not know become
  "unknown"); writes `models/ds=D/` (model.pt, train_metrics.json, evaluation.json)
  in one rename. The decision and its reason are in evaluation.json, with the id of
  the training's MLflow run (`orchestration.runs`), which publishing copies into
  current.json.
- `publish_decision`: whether publishing ds may move the served pointer (never back
  to an older ds); `publish_version` moves it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from artefacts.layout import EVALUATION, DataLayout, check_ds
from artefacts.pointer import current_or_backup, model_version, publish
from artefacts.storage import staged_dir, write_json
from orchestration import runs
from orchestration.config import PROJECT_ROOT, PipelineConfig

log = logging.getLogger(__name__)

EVAL_FILE = EVALUATION
TRAIN_METRICS_FILE = "train_metrics.json"


def resolve_ds(param_ds: str | None, logical_date: dt.datetime | dt.date | None) -> str:
    """The run's partition date: the `ds` param if given, else the logical date (the start of
    the daily data interval), else today (UTC) for a manual run without a logical date."""
    if param_ds:
        return check_ds(str(param_ds))
    if logical_date is not None:
        return logical_date.date().isoformat() if isinstance(logical_date, dt.datetime) \
            else logical_date.isoformat()
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def date_range(start: str, end: str) -> list[str]:
    """Every date from start to end, both included, oldest first."""
    a, b = dt.date.fromisoformat(check_ds(start)), dt.date.fromisoformat(check_ds(end))
    if b < a:
        raise ValueError(f"end date {end} is before start date {start}")
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


# ------------------------------------------------------------------ published versions


def baseline_version(root: Path | str, ds: str) -> dict[str, Any] | None:
    """The published version ds is compared with and warm-started from: the served one when
    it is older than ds, else the one it replaced (when older); None if there is none.
    A rerun of a published ds therefore sees the same baseline as its first run."""
    root = Path(root)
    cur = current_or_backup(root)  # a corrupt current.json: its backup (publish repairs it)
    for cand in (cur, cur and cur.get("previous")):
        if cand and cand["ds"] < ds and (root / cand["model"]).is_file():
            return cand
    return None


def publish_decision(root: Path | str, ds: str) -> tuple[bool, str]:
    """(may publish, why): the pointer never moves back to an older ds."""
    cur = current_or_backup(Path(root))
    if cur is not None and cur["ds"] > ds:
        return False, (f"ds={ds} is older than the served ds={cur['ds']}; the pointer is not "
                       f"moved back (run `python -m jobs.publish --ds {ds}` to force it)")
    return True, "ok"


def publish_version(root: Path | str, ds: str) -> dict[str, Any]:
    """Make ds the served version (`artefacts.pointer.publish`); returns the new pointer."""
    pointer = publish(root, ds).data
    runs.tag_published(root, pointer)
    return pointer


# ------------------------------------------------------------------------ training


def _data_fingerprint(seq_dir: Path) -> dict[str, Any]:
    stats = json.loads((seq_dir / "stats.json").read_text())
    stats.pop("seconds", None)
    stats.get("config", {}).pop("master", None)
    stats.get("config", {}).pop("spark_conf", None)
    return stats


def train_flags(cfg: PipelineConfig) -> list[str]:
    """mind_model.train's flags from the configuration (the same on every node)."""
    flags = ["--epochs", str(cfg.train_epochs), "--patience", str(cfg.train_patience)]
    if cfg.train_settings is not None:
        flags += ["--settings", str(Path(cfg.train_settings).absolute())]
    return [*flags, *cfg.train_args]


def plan_training(cfg: PipelineConfig, ds: str) -> dict[str, Any]:
    """Where and how ds is trained (pure: reads the sequences' stats and the pointer)."""
    layout = DataLayout(cfg.data_root)
    seq_dir = layout.sequences(ds)
    if not (seq_dir / "stats.json").is_file():
        raise FileNotFoundError(f"{seq_dir}/stats.json not found: build the sequences of "
                                f"ds={ds} first")
    base = baseline_version(cfg.data_root, ds)
    warm = str(cfg.data_root / base["model"]) if base else None
    flags = train_flags(cfg)
    settings = None
    if cfg.train_settings is not None:  # tuned on valid users: part of the run's identity
        from mind_model.train import load_settings  # torch: only when a settings file is used

        settings = load_settings(cfg.train_settings)
    key = json.dumps({"data": _data_fingerprint(seq_dir), "flags": flags, "settings": settings,
                      "nproc": cfg.train_nproc,
                      "warm_start": base and base["model_version"]}, sort_keys=True, default=str)
    fp = hashlib.sha256(key.encode()).hexdigest()[:12]
    work = cfg.data_root / "training" / f"ds={ds}" / f"run-{fp}"
    return {"ds": ds, "seq_dir": str(seq_dir), "work_dir": str(work), "fingerprint": fp,
            "warm_start_from": warm, "baseline": base, "flags": flags}


def prepare_training(cfg: PipelineConfig, ds: str) -> dict[str, Any]:
    """plan_training, after removing the work folders of other inputs for ds (a run with
    these inputs resumes in its own folder)."""
    plan = plan_training(cfg, ds)
    work = Path(plan["work_dir"])
    work.parent.mkdir(parents=True, exist_ok=True)
    for other in work.parent.iterdir():
        if other.name != work.name:
            log.info("removing the training folder of other inputs: %s", other)
            shutil.rmtree(other, ignore_errors=True)
    return plan


def train_command(cfg: PipelineConfig, ds: str) -> str:
    """The torchrun command of ds; removes the work folders of other inputs for ds first."""
    plan = prepare_training(cfg, ds)
    work = Path(plan["work_dir"])
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m",
                                                          "torch.distributed.run"]
    cmd = [*launcher, "--standalone", f"--nproc_per_node={cfg.train_nproc}",
           "-m", "mind_model.train", "--data-dir", plan["seq_dir"], "--out-dir", str(work),
           "--no-progress", *plan["flags"]]
    if plan["warm_start_from"]:
        cmd += ["--warm-start-from", plan["warm_start_from"]]
    runs.open_training_run(cfg.data_root, plan)  # rank 0 of the training continues it
    log.info("training ds=%s in %s (warm start: %s)", ds, work, plan["warm_start_from"])
    # OMP_NUM_THREADS is left to distributed.default_threads (CPUs / processes)
    return f"cd {shlex.quote(str(PROJECT_ROOT))} && exec {shlex.join(cmd)}"


# ------------------------------------------------------------------------ the gate


def hit_rates(model_path: Path | str, seq_dir: Path | str, split: str = "test") -> dict[str, float]:
    """The paper's HR@N of a checkpoint on all held-out users of seq_dir, over today's
    catalogue, computed as training's model selection computes it (`HeldOutSample`).
    A checkpoint trained on an older ds sees ids it does not know as unknown (its tables
    cover the old ids: ids are stable across days)."""
    from mind_model.checkpoint import load_model
    from mind_model.data import load_meta
    from mind_model.evaluate import HeldOutSample

    out = HeldOutSample(load_meta(seq_dir), split)(load_model(model_path))
    return {k: float(v) for k, v in out.items()}


def evaluate_and_stage(cfg: PipelineConfig, ds: str) -> dict[str, Any]:
    """Score the new model and the baseline on ds's test users, decide, write models/ds=D/."""
    plan = plan_training(cfg, ds)
    work = Path(plan["work_dir"])
    best = work / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} not found: the training task of ds={ds} did not finish")
    metric = cfg.gate_metric
    new = hit_rates(best, plan["seq_dir"])
    if metric not in new:
        raise ValueError(f"gate metric {metric!r} not computed; one of {sorted(new)}")
    run = runs.training_run(cfg.data_root, work)
    result: dict[str, Any] = {
        "ds": ds, "metric": metric, "margin": cfg.gate_margin, "split": "test",
        "model_version": model_version(best), "new": new, "baseline": None,
        "training": {"work_dir": str(work), "fingerprint": plan["fingerprint"],
                     "warm_start_from": plan["warm_start_from"]},
        "mlflow_run_id": run.run_id,
    }
    base = plan["baseline"]
    if base is None:
        result.update(publish=True, reason="nothing published before this ds: first model")
    else:
        old = hit_rates(cfg.data_root / base["model"], plan["seq_dir"])
        result["baseline"] = {"ds": base["ds"], "model_version": base["model_version"], **old}
        drop = old[metric] - new[metric]
        ok = drop <= cfg.gate_margin
        result["publish"] = ok
        result["reason"] = (
            f"{metric} {new[metric]:.4f} vs published ds={base['ds']} {old[metric]:.4f} "
            f"(drop {drop:+.4f}, margin {cfg.gate_margin}): "
            + ("within the margin" if ok else "worse by more than the margin, NOT published"))
    runs.tag_gate(run, result)
    layout = DataLayout(cfg.data_root)
    with staged_dir(layout.models(ds)) as tmp:
        shutil.copyfile(best, tmp / "model.pt")
        if (work / "metrics.json").is_file():
            shutil.copyfile(work / "metrics.json", tmp / TRAIN_METRICS_FILE)
        write_json(tmp / EVAL_FILE, result)
    log.info("gate ds=%s: %s", ds, result["reason"])
    return result
