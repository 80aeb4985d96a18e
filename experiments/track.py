"""MLflow runs of the experiment commands: one parent run per compare / sweep / aggregate and
one child run per method or setting, so Table 2 and the sweep curves sit side by side in
the MLflow UI (`mind_model.tracking` holds the store, the switch and the failure rule).

A child that trains is created before its training and recorded in the training folder
(`mlflow_run.json`): `mind_model.train` then logs its params and epochs into that child.
Experiments: "mind-compare", "mind-sweep", "mind-aggregate" (or MLFLOW_EXPERIMENT_NAME).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from mind_model.tracking import Tracker, data_root_of, experiment, numeric, start_run


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def start_parent(kind: str, name: str, data: Path | str, params: Mapping[str, Any]) -> Tracker:
    """The parent run of one command (kind: compare, sweep, aggregate), with its settings."""
    t = start_run(experiment(f"mind-{kind}"), name, data_root=data_root_of(data),
                  tags={"mind.kind": kind})
    t.log_params(flat(params))
    return t


def training_child(parent: Tracker, name: str, run_dir: Path | str,
                   tags: Mapping[str, Any] | None = None) -> Tracker:
    """A child run that the training in run_dir will log into (recorded there)."""
    child = parent.child(name, {"mind.kind": "training", **(tags or {})})
    child.record(run_dir)
    return child


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """A result row's numbers (hr@N -> hr_at_N), ComiRec's as comirec_*."""
    return {**numeric(row), **numeric(row.get("comirec") or {}, "comirec_")}


def log_rows(parent: Tracker, rows: Mapping[str, Mapping[str, Any]],
             children: dict[str, Tracker], names: Mapping[str, str],
             params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Each row's metrics into its child (created, and ended, for rows that trained
    nothing), and `<key>.<metric>` into the parent for the side-by-side table."""
    for key, row in rows.items():
        metrics = row_metrics(row)
        child = children.get(key)
        if child is None:
            child = children[key] = parent.child(names.get(key, key), {"mind.method": key})
            child.log_params(flat((params or {}).get(key) or {}))
            child.log_metrics(metrics)
            child.end()
        else:
            child.log_metrics(metrics)
        parent.log_metrics({f"{key}.{k}": v for k, v in metrics.items()})


def log_files(t: Tracker, files: Iterable[Path | str | None]) -> None:
    for f in files:
        if f and Path(f).is_file():
            t.log_artifact(f)


def describe(parent: Tracker, children: Mapping[str, Tracker]) -> dict[str, Any] | None:
    """{run_id, experiment_id, tracking_uri, children: {key: run_id}} for the result JSON."""
    d = parent.describe()
    if d is not None:
        d["children"] = {k: c.run_id for k, c in children.items() if c.active}
    return d
