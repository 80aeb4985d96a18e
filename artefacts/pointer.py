"""The "current" pointer: which model + index + user vectors are served, switched atomically.

`<root>/current.json` names, relative to the data root, the folders of ONE version:

    {"ds": "2026-11-28", "model_version": "3f2a...", "model": "models/ds=.../model.pt",
     "index": "index/ds=...", "user_vectors": "embeddings/ds=.../users",
     "item_embeddings": "embeddings/ds=.../items", "sequences": "sequences/ds=...",
     "published_at": "...", "previous": {the pointer it replaced, without its own previous},
     "mlflow_run_id": "..." (or null: the training's MLflow run, from models/ds=D/evaluation.json)}

Readers must not require `mlflow_run_id` (pointers written before it existed lack it).

`publish` checks that the three artefacts exist and were all made from the same
model file (same content hash), then replaces the pointer with one `os.replace`:
a reader sees the old version or the new one, never a mix. The previous pointer is
kept inside the new one; `rollback` swaps them back (a second rollback rolls
forward again). Artefact folders are never deleted here.

Every switch also writes the same pointer to `current.backup.json` (never read by
serving). A current.json that cannot be parsed (truncated, edited by hand) raises
CorruptPointer naming it; `publish` and `rollback` then repair it from the backup, so
the previous version is not forgotten.

The command line is `python -m jobs.publish` (a step of the pipeline); this module is the
library every reader and writer of the pointer shares.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artefacts.layout import CURRENT, MANIFEST, DataLayout
from artefacts.storage import write_json

log = logging.getLogger(__name__)

ARTEFACTS = ("model", "index", "user_vectors", "item_embeddings", "sequences")


class PublishError(RuntimeError):
    """The version cannot be made current (missing or mismatched artefacts)."""


class NoCurrentVersion(FileNotFoundError):
    """Nothing has been published under this data root yet."""


class CorruptPointer(ValueError):
    """current.json exists but is not a valid pointer (names the file and the repair)."""


BACKUP = "current.backup.json"
REQUIRED = ("ds", "model_version", "model")  # the rest is checked when used (Pointer.path)


def model_version(model_path: Path | str) -> str:
    """Content hash of a model file (16 hex digits): identical files, identical version."""
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the stage that writes {folder} has not "
                                f"completed")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Pointer:
    """A parsed current.json; paths resolved against the data root."""

    root: Path
    data: dict[str, Any]

    @property
    def ds(self) -> str:
        return self.data["ds"]

    @property
    def model_version(self) -> str:
        return self.data["model_version"]

    def path(self, artefact: str) -> Path:
        if artefact not in ARTEFACTS:
            raise KeyError(f"unknown artefact {artefact!r}; one of {ARTEFACTS}")
        if not isinstance(self.data.get(artefact), str):
            raise CorruptPointer(f"the pointer of ds={self.data.get('ds')} under {self.root} "
                                 f"names no {artefact}: republish (python -m jobs.publish "
                                 f"--ds DS)")
        return self.root / self.data[artefact]

    @property
    def previous(self) -> "Pointer | None":
        prev = self.data.get("previous")
        return Pointer(self.root, prev) if prev else None


def _parse(path: Path) -> dict[str, Any]:
    """A pointer file's dict; CorruptPointer if it is not one (FileNotFoundError passes)."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptPointer(f"{path} is not valid JSON ({e}): repair it with `python -m "
                             f"jobs.publish --data-root {path.parent} --ds DS` or "
                             f"`--rollback`") from None
    missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise CorruptPointer(f"{path} lacks {missing}: repair it with `python -m jobs.publish "
                             f"--data-root {path.parent} --ds DS` or `--rollback`")
    return data


def read_current(root: Path | str) -> Pointer:
    """The served version under `root`; raises NoCurrentVersion if none was published and
    CorruptPointer if current.json cannot be parsed."""
    layout = DataLayout(Path(root))
    try:
        data = _parse(layout.current)
    except FileNotFoundError:
        raise NoCurrentVersion(f"no published version under {layout.root} ({layout.current} "
                               f"missing): run the pipeline and `python -m jobs.publish`") from None
    return Pointer(layout.root, data)


def current_or_backup(root: Path) -> dict[str, Any] | None:
    """The current pointer's data; from the backup when current.json is corrupt; None if
    nothing was published (or neither file can be read: the history is lost)."""
    try:
        return read_current(root).data
    except NoCurrentVersion:
        return None
    except CorruptPointer as e:
        try:
            data = _parse(root / BACKUP)
        except (FileNotFoundError, CorruptPointer):
            log.warning("%s; no usable %s either: the new pointer records no previous "
                        "version", e, BACKUP)
            return None
        log.warning("%s; using %s (ds=%s) in its place", e, BACKUP, data["ds"])
        return data


def version_pointer(root: Path | str, ds: str) -> dict[str, Any]:
    """The pointer for `ds` after checking its artefacts agree; raises PublishError."""
    layout = DataLayout(Path(root))
    paths = {
        "model": layout.model_file(ds), "index": layout.index(ds),
        "user_vectors": layout.user_vectors(ds), "item_embeddings": layout.item_embeddings(ds),
        "sequences": layout.sequences(ds),
    }
    missing = [f"{k} ({p})" for k, p in paths.items() if not p.exists()]
    if missing:
        raise PublishError(f"ds={ds} cannot be published, missing: {', '.join(missing)}")
    try:
        versions = {
            "model file": model_version(paths["model"]),
            "user embeddings": read_manifest(layout.embeddings(ds))["model_version"],
            "index": read_manifest(layout.index(ds))["model_version"],
        }
    except (FileNotFoundError, KeyError) as e:
        raise PublishError(f"ds={ds} cannot be published: {e}") from e
    if len(set(versions.values())) != 1:
        raise PublishError(f"ds={ds}: artefacts come from different models {versions}; "
                           f"rerun embed_users and build_index for this model")
    return {"ds": ds, "model_version": versions["model file"],
            **{k: layout.relative(p) for k, p in paths.items()},
            "mlflow_run_id": _training_run(layout, ds)}


def _training_run(layout: DataLayout, ds: str) -> str | None:
    """The MLflow run id the publish gate recorded for ds (metadata: not part of the
    version's identity)."""
    try:
        return json.loads(layout.evaluation(ds).read_text()).get("mlflow_run_id")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def _verify(root: Path, pointer: dict[str, Any]) -> None:
    fresh = version_pointer(root, pointer["ds"])
    if fresh["model_version"] != pointer["model_version"]:
        raise PublishError(f"ds={pointer['ds']} now holds model {fresh['model_version']}, not "
                           f"{pointer['model_version']}: its artefacts were rebuilt since")


def _strip(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if pointer is None else {k: v for k, v in pointer.items() if k != "previous"}


def _replace_current(root: Path, new: dict[str, Any], previous: dict[str, Any] | None) -> Pointer:
    layout = DataLayout(root)
    data = {**_strip(new), "published_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "previous": _strip(previous)}
    write_json(layout.current, data)  # temporary file + os.replace: the one atomic step
    write_json(layout.root / BACKUP, data)  # what a corrupt current.json is repaired from
    return Pointer(layout.root, data)


def publish(root: Path | str, ds: str) -> Pointer:
    """Make the model + index + user vectors of `ds` current, in one atomic step."""
    root = Path(root)
    new = version_pointer(root, ds)
    old = current_or_backup(root)
    if old is not None and all(old.get(k) == new[k] for k in ("ds", "model_version", *ARTEFACTS)):
        if not _readable(root):  # a corrupt current.json: restored from its backup
            write_json(DataLayout(root).current, old)
        # republishing the served version must not overwrite the real previous one
        log.info("ds=%s (model %s) is already current", ds, new["model_version"])
        return Pointer(root, old)
    pointer = _replace_current(root, new, old)
    log.info("published ds=%s, model %s (previous: %s)", ds, new["model_version"],
             old and f"ds={old['ds']}, model {old['model_version']}")
    return pointer


def _readable(root: Path) -> bool:
    try:
        read_current(root)
        return True
    except CorruptPointer:
        return False


def rollback(root: Path | str) -> Pointer:
    """Make the previous version current again (its artefacts are re-checked first)."""
    root = Path(root)
    data = current_or_backup(root)
    if data is None:
        raise PublishError(f"nothing to roll back under {root}: no readable {CURRENT} or "
                           f"{BACKUP}; publish a ds (python -m jobs.publish --ds DS)")
    current = Pointer(root, data)
    prev = current.data.get("previous")
    if not prev:
        raise PublishError(f"no previous version recorded in {DataLayout(root).current}")
    _verify(root, prev)
    pointer = _replace_current(root, prev, current.data)
    log.info("rolled back from ds=%s (model %s) to ds=%s (model %s)", current.ds,
             current.model_version, prev["ds"], prev["model_version"])
    return pointer
