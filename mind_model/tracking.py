"""Experiment tracking with MLflow: where the store is, the switch, and the failure rule.

Every training, compare, sweep, aggregate and daily model is logged as an MLflow run
(`MlflowClient` only: no fluent "active run", so a compare that trains in-process keeps
its parent and child runs apart).

- Store: `MLFLOW_TRACKING_URI` if set; else `sqlite:///<data root>/mlflow.db` with the
  artefacts in `<data root>/mlartifacts/`. The data root is `MIND_DATA_ROOT` if set, else
  the folder above `sequences/` of the data being used (`data_root_of`).
- Switch: `MIND_TRACKING=0` (or off/false/no) turns tracking off everywhere; training
  also has `--no-tracking`.
- Failure rule: a store that is down, unwritable or missing (mlflow not installed) logs
  ONE warning and the handle goes quiet; the training or experiment goes on. Each
  `Tracker` method is guarded, so no caller needs a try.
- `mlflow_run.json` in a training folder records the run that training logs into: a
  resumed training, a retried DAG task and a compare's pre-created child run all
  continue that run instead of opening another.
- MLflow's usage telemetry is off unless the user asks for it (`MLFLOW_DISABLE_TELEMETRY`).

`python -m mind_model.tracking --data-root data [--port 5000]` (`make mlflow-ui`) serves the
MLflow UI over that store on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from artefacts.storage import write_json

log = logging.getLogger(__name__)

SWITCH_ENV = "MIND_TRACKING"
DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
RECORD = "mlflow_run.json"
_OFF_WORDS = ("0", "off", "false", "no")
# A tracking server that is down must cost seconds, not mlflow's default minutes of retries.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                  "MLFLOW_DISABLE_TELEMETRY": "true"}

F = TypeVar("F", bound=Callable[..., Any])


def experiment(default: str) -> str:
    """MLFLOW_EXPERIMENT_NAME if set (one experiment for everything), else `default`."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or default


def enabled() -> bool:
    """False when MIND_TRACKING is 0/off/false/no."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in _OFF_WORDS


def data_root_of(path: Path | str) -> Path:
    """The data root a path belongs to: MIND_DATA_ROOT, else `<root>` of
    `<root>/sequences/ds=D` (or of any folder below `<root>/<family>/`), else its parent."""
    if os.environ.get("MIND_DATA_ROOT"):
        return Path(os.environ["MIND_DATA_ROOT"]).absolute()
    p = Path(path).absolute()
    for parent in (p, *p.parents):
        if parent.name == "sequences":
            return parent.parent
    return p.parent


def tracking_uri(data_root: Path | str) -> str:
    """MLFLOW_TRACKING_URI, else the SQLite store under the data root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(data_root).absolute() / DB_FILE}"


def _artifact_location(uri: str) -> str | None:
    """Artefacts of a local SQLite store live beside it (mlflow's default would be ./mlruns
    of whatever folder the process was started in); other stores choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACT_DIR).absolute().as_uri()
    return None


def metric_name(key: str) -> str:
    """MLflow names allow [/\\w.\\- :] only: "valid_hr@50" -> "valid_hr_at_50"."""
    return key.replace("@", "_at_")


def numeric(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a dict (bools excluded), names made MLflow-safe."""
    return {metric_name(prefix + k): float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _guarded(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if self.client is None:
            return None
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop the work
            self.fail(f"{fn.__name__}: {type(e).__name__}: {e}")
            return None
    return wrapper  # type: ignore[return-value]


class Tracker:
    """One MLflow run, or none (`OFF`). Every method is guarded: the first error logs one
    warning and switches this handle off."""

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str | None = None,
                 experiment_id: str | None = None) -> None:
        self.client, self.run_id, self.uri, self.experiment_id = client, run_id, uri, experiment_id

    @property
    def active(self) -> bool:
        return self.client is not None

    def fail(self, why: str) -> None:
        log.warning("MLflow tracking (%s) is off for this run: %s", self.uri, why[:300])
        self.client = None

    @_guarded
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params not yet logged (MLflow refuses to change a logged value: a resumed run
        keeps the values it started with)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
        for i in range(0, len(new), 100):  # the store's batch limit
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    @_guarded
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(metric_name(k), float(v), ts, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    @_guarded
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000])
                                                 for k, v in tags.items()])

    @_guarded
    def log_artifact(self, path: Path | str) -> None:
        self.client.log_artifact(self.run_id, str(path))

    @_guarded
    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    @_guarded
    def logged_metrics(self) -> dict[str, float]:
        return dict(self.client.get_run(self.run_id).data.metrics)

    @_guarded
    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    @_guarded
    def reopen(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")

    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> "Tracker":
        """A run nested under this one (same experiment; the UI shows it below the parent)."""
        if not self.active:
            return OFF
        return _create(self.client, self.uri, self.experiment_id, name,
                       {"mlflow.parentRunId": self.run_id, **(tags or {})})

    def record(self, folder: Path | str) -> None:
        """Write folder/mlflow_run.json: the training in `folder` continues this run."""
        if self.active:
            Path(folder).mkdir(parents=True, exist_ok=True)
            write_json(Path(folder) / RECORD, {"run_id": self.run_id, "tracking_uri": self.uri,
                                               "experiment_id": self.experiment_id})

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Ends the run: FAILED when the block raised, else FINISHED."""
        self.end("FAILED" if exc_type is not None else "FINISHED")

    def describe(self) -> dict[str, Any] | None:
        """{run_id, experiment_id, tracking_uri} for reports; None when off."""
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": self.uri} if self.active else None


OFF = Tracker()


def _client(data_root: Path | str) -> tuple[Any, str] | None:
    """(MlflowClient, uri), or None with a warning when tracking is off or unavailable."""
    if not enabled():
        return None
    uri = tracking_uri(data_root)
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        Tracker(uri=uri).fail(f"mlflow is not installed ({e})")
        return None
    try:
        return MlflowClient(tracking_uri=uri), uri  # a SQLite store is opened (migrated) here
    except Exception as e:  # noqa: BLE001
        Tracker(uri=uri).fail(f"{type(e).__name__}: {e}")
        return None


def _experiment_id(client: Any, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _create(client: Any, uri: str, experiment_id: str | None, name: str,
            tags: Mapping[str, Any]) -> Tracker:
    t = Tracker(client, None, uri, experiment_id)
    try:
        run = client.create_run(experiment_id, run_name=name,
                                tags={k: str(v) for k, v in tags.items()})
        t.run_id = run.info.run_id
    except Exception as e:  # noqa: BLE001
        t.fail(f"create_run: {type(e).__name__}: {e}")
    return t


def start_run(experiment: str, name: str, *, data_root: Path | str,
              tags: Mapping[str, Any] | None = None) -> Tracker:
    """A new top-level run in `experiment` (created if missing); OFF if tracking is off or
    the store cannot be reached."""
    made = _client(data_root)
    if made is None:
        return OFF
    client, uri = made
    try:
        exp_id = _experiment_id(client, uri, experiment)
    except Exception as e:  # noqa: BLE001
        Tracker(uri=uri).fail(f"experiment {experiment!r}: {type(e).__name__}: {e}")
        return OFF
    return _create(client, uri, exp_id, name, tags or {})


def read_record(folder: Path | str) -> dict[str, Any] | None:
    """folder/mlflow_run.json, or None."""
    try:
        return json.loads((Path(folder) / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def recorded_run(folder: Path | str, data_root: Path | str) -> Tracker | None:
    """The run recorded in folder, if it is in the current store and still exists."""
    rec = read_record(folder)
    if rec is None or not enabled() or rec.get("tracking_uri") != tracking_uri(data_root):
        return None
    made = _client(data_root)
    if made is None:
        return None
    client, uri = made
    try:
        run = client.get_run(rec["run_id"])
    except Exception:  # noqa: BLE001 - deleted, another store, store down: not continuable
        return None
    if run.info.lifecycle_stage != "active":
        return None
    return Tracker(client, run.info.run_id, uri, run.info.experiment_id)


def open_recorded(folder: Path | str, experiment: str, name: str, *, data_root: Path | str,
                  tags: Mapping[str, Any] | None = None) -> Tracker:
    """Continue the run recorded in folder (status back to RUNNING), else start one and
    record it there."""
    t = recorded_run(folder, data_root)
    if t is not None:
        t.reopen()
        if tags:
            t.set_tags(tags)
        return t
    t = start_run(experiment, name, data_root=data_root, tags=tags)
    t.record(folder)
    return t


def run_by_id(run_id: str | None, data_root: Path | str) -> Tracker:
    """A handle on an existing run (to add tags or metrics later); OFF if none/unreachable."""
    if not run_id:
        return OFF
    made = _client(data_root)
    if made is None:
        return OFF
    client, uri = made
    return Tracker(client, run_id, uri)


# ------------------------------------------------------------------------------ the UI


def ui_command(data_root: Path | str, port: int = 5000) -> list[str]:
    """`mlflow ui` over the store of data_root (same rules as the runs), bound to 127.0.0.1."""
    uri = tracking_uri(data_root)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    art = _artifact_location(uri)
    return cmd + (["--default-artifact-root", art] if art else [])


def ui_env() -> dict[str, str]:
    """The UI's environment: no telemetry, no background job workers (MLflow's GenAI jobs:
    7 worker processes that a store of training runs never uses); the user's values win."""
    return {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **os.environ}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mind_model.tracking",
                                description="The MLflow UI over the runs of a data root, on "
                                            "127.0.0.1 (MLFLOW_TRACKING_URI overrides the store)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--port", type=int, default=5000)
    a = p.parse_args(argv)
    if not 0 < a.port < 65536:
        print(f"mlflow-ui: --port {a.port} is not a TCP port", file=sys.stderr)
        return 2
    if importlib.util.find_spec("mlflow") is None:
        print("mlflow-ui: mlflow is not installed in this environment (run make setup)",
              file=sys.stderr)
        return 2
    cmd = ui_command(a.data_root, a.port)
    print(f"MLflow UI over {cmd[5]} at http://127.0.0.1:{a.port} (Ctrl-C stops it)", flush=True)
    os.execve(cmd[0], cmd, ui_env())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
