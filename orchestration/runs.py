"""The daily DAG's MLflow run: one run per ds and training inputs (experiment "mind-daily",
or MLFLOW_EXPERIMENT_NAME), in the store of the data root (`mind_model.tracking`).

- `open_training_run` (train task, before torchrun): opens the run with the tags mind.ds,
  mind.fingerprint, mind.warm_start_from and mind.baseline_version, recorded in the
  training folder; rank 0 of the training logs its params and epochs into it. A retry or
  a rerun with the same inputs (same folder) continues the same run.
- `tag_gate` (evaluate_gate task): the gate's decision as tags (mind.gate.publish,
  mind.gate.reason) and the compared HRs as metrics; the run id goes into
  models/ds=D/evaluation.json and from there into current.json (`artefacts.pointer`).
- `tag_published` (publish task): mind.published_at on the run that is now served.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mind_model.tracking import OFF, Tracker, experiment, open_recorded, recorded_run, run_by_id

EXPERIMENT = "mind-daily"


def open_training_run(data_root: Path | str, plan: Mapping[str, Any]) -> Tracker:
    """The run of plan (`steps.plan_training`), recorded in its work folder."""
    base = plan.get("baseline") or {}
    return open_recorded(plan["work_dir"], experiment(EXPERIMENT), f"daily ds={plan['ds']}",
                         data_root=data_root, tags={
                             "mind.kind": "daily", "mind.dag": "mind_daily",
                             "mind.ds": plan["ds"], "mind.fingerprint": plan["fingerprint"],
                             "mind.warm_start_from": plan.get("warm_start_from") or "none",
                             "mind.baseline_version": base.get("model_version") or "none"})


def training_run(data_root: Path | str, work_dir: Path | str) -> Tracker:
    """The run recorded in the training folder, or OFF."""
    return recorded_run(work_dir, data_root) or OFF


def tag_gate(run: Tracker, result: Mapping[str, Any]) -> None:
    """The gate's decision on the training run (evaluate_and_stage's result)."""
    metric = result["metric"]
    run.set_tags({"mind.gate.publish": str(bool(result["publish"])).lower(),
                  "mind.gate.reason": result["reason"], "mind.gate.metric": metric,
                  "mind.model_version": result["model_version"]})
    values = {f"gate_new_{metric}": result["new"][metric]}
    if result.get("baseline"):
        values[f"gate_baseline_{metric}"] = result["baseline"][metric]
    run.log_metrics(values)


def tag_published(data_root: Path | str, pointer: Mapping[str, Any]) -> None:
    """Mark the served version's run (its id is in the pointer)."""
    run_by_id(pointer.get("mlflow_run_id"), data_root).set_tags(
        {"mind.published_at": pointer.get("published_at", "")})
