"""The MLflow run of one training (rank 0 only; `mind_model.tracking` has the rules).

- params: the full TrainConfig, plus `data.*` (ds, items, samples, world size, steps/epoch);
- metrics, one point per epoch (step = epoch): loss, samples_per_s, valid_hr_at_{10,50,100},
  timings; at the end best_* (the kept epoch) and test_* (best.pt on the test users);
- artefacts: metrics.json and training.png (loss and valid HR@N by epoch);
- tags: mind.model_version (content hash of best.pt, the `model_version` the daily
  pipeline publishes), mind.checkpoint, mind.stopped.

Experiment: MLFLOW_EXPERIMENT_NAME, else "mind-train". A training started in a folder whose
mlflow_run.json names a run (a resume, a DAG retry, a compare child) continues that run;
a run that has no epochs yet gets the restored history first, so it is complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from artefacts.pointer import model_version
from mind_model.metrics import HR_NS
from mind_model.tracking import OFF, Tracker, data_root_of, experiment, numeric, open_recorded

EXPERIMENT = "mind-train"


def open_training(cfg: Any, run_meta: Mapping[str, Any],
                  history: Sequence[Mapping[str, Any]]) -> Tracker:
    """The run of this training (cfg: TrainConfig), with its params and any restored epochs."""
    if not cfg.tracking:
        return OFF
    t = open_recorded(cfg.out_dir, experiment(EXPERIMENT),
                      f"{cfg.variant} {Path(cfg.data_dir).name}",
                      data_root=data_root_of(cfg.data_dir),
                      tags={"mind.kind": "training", "mind.variant": cfg.variant,
                            "mind.out_dir": str(Path(cfg.out_dir).absolute())})
    t.log_params({**cfg.to_dict(), **{f"data.{k}": v for k, v in run_meta.items()}})
    if history and "loss" not in (t.logged_metrics() or {}):
        for rec in history:
            log_epoch(t, rec)
    return t


def log_epoch(t: Tracker, rec: Mapping[str, Any]) -> None:
    """One epoch record of train's history as metrics at step = epoch."""
    values = {("global_step" if k == "step" else k): v for k, v in rec.items() if k != "epoch"}
    t.log_metrics(numeric(values), step=int(rec["epoch"]))


def finish_training(t: Tracker, *, metrics_path: Path, best_path: Path,
                    history: Sequence[Mapping[str, Any]], best: Mapping[str, Any],
                    test: Mapping[str, Any], stopped: str | None) -> None:
    """Final metrics, metrics.json, training.png and the model version; ends the run
    (KILLED after a stop signal: a rerun resumes it)."""
    if not t.active:
        return
    t.log_metrics({**numeric(best, "best_"), **numeric(test, "test_")})
    t.log_artifact(metrics_path)
    if history:
        t.log_figure(training_figure(history), "training.png")
    t.set_tags({"mind.model_version": model_version(best_path),
                "mind.checkpoint": str(Path(best_path).absolute()),
                "mind.stopped": stopped or "finished"})
    t.end("KILLED" if stopped == "signal" else "FINISHED")


def training_figure(history: Sequence[Mapping[str, Any]]):
    """Loss and valid HR@N by epoch (a matplotlib Figure, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(epochs, [h.get("loss") for h in history], marker="o")
    a1.set(xlabel="epoch", ylabel="training loss (sampled softmax)")
    for n in HR_NS:
        ys = [h.get(f"valid_hr@{n}") for h in history]
        if any(y is not None for y in ys):
            a2.plot(epochs, [float("nan") if y is None else y for y in ys], marker="o",
                    label=f"HR@{n}")
    a2.set(xlabel="epoch", ylabel="valid hit rate")
    if a2.lines:
        a2.legend()
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
