"""Staged, atomic artefacts on the data root.

Every stage writes into a hidden temporary sibling of its final folder and
renames it into place only when complete, so a failed run leaves nothing a
reader could mistake for output and a rerun replaces the previous output whole.
The data root is a POSIX path (local disk or a shared mount); rename within one
folder is atomic there.

Leftovers of killed runs (`_tmp-*` staging folders, `_old-*` folders being deleted)
are removed when the next run stages the same output (`staged_dir`), or by
`remove_stale_temporaries`. A staging folder in use is never removed: its writer holds
an exclusive flock on it for as long as it lives (the kernel drops the lock when the
process dies, kill -9 included), and a folder must also be older than
`STALE_AFTER_S` — a guard for writers on another host of a shared mount, where locks
may not be seen.

A build in stages (`jobs.build_index --stage plan|fill|finish`) works in a `_build-*`
folder instead (`DataLayout.index_build`): its stages are separate processes, pods on
other hosts among them, so no lock spans the build and no age makes it stale.
`remove_stale_temporaries` leaves it alone; the build's own `plan` replaces it, its
`finish` renames it into place (or removes it when the recall gate fails). Readers skip
it like every name starting with `_`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

TMP_PREFIX = "_tmp-"  # Spark and pyarrow readers skip names starting with _ or .
OLD_PREFIX = "_old-"
BUILD_PREFIX = "_build-"  # the folder of a build in stages (see the module docstring)
# a leftover must be this old (and unlocked) to be removed; MIND_STALE_AFTER_S overrides
STALE_AFTER_S = float(os.environ.get("MIND_STALE_AFTER_S", "600"))


def publish_dir(staged: Path, final: Path) -> None:
    """Move a complete `staged` folder to `final`, replacing what was there.

    The old folder is first renamed aside, so `final` is never a mix of old and new
    files; between the two renames a reader sees no folder, never a partial one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f"{OLD_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked_temporary(final: Path, kind: str = "") -> Iterator[Path]:
    """A fresh `_tmp-<final name>-<kind><id>` folder next to `final`, locked as in use for
    as long as the context lasts (a killed run's folder is removed by the next run)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent, name=final.name)  # a killed run's leftovers
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{kind}{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    lock = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "in use": remove_stale_temporaries skips it
        yield tmp
    finally:
        os.close(lock)


@contextlib.contextmanager
def staged_dir(final: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `final`; publish it on success.

    On any exception the temporary folder is removed and `final` is untouched.
    """
    final = Path(final)
    with _locked_temporary(final) as tmp:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, final)


@contextlib.contextmanager
def scratch_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder next to `final` for a job's intermediate data (on the
    same storage as its output, so every worker of a cluster reaches it); removed when the
    context ends, whether the job succeeded or not. Readers skip it (`_` prefix)."""
    with _locked_temporary(Path(final), "scratch-") as tmp:
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success rename it to `path`.

    The one way a single file is written anywhere in the project: a reader sees the
    old file or the new one, never half of one, and two writers never share a
    temporary name. On any exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fresh_dir(folder: Path | str) -> Path:
    """`folder`, emptied: whatever an earlier run left in it is removed first."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def write_text(path: Path | str, text: str) -> None:
    """Write text atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any, *, sort_keys: bool = True) -> None:
    """Write JSON atomically (`atomic_path`), indented, with a final newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def config_record(cfg: Any) -> dict[str, Any]:
    """A job's settings dataclass as JSON values (paths as strings), for its manifest."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def remove_stale_temporaries(folder: Path | str, *, name: str | None = None,
                             min_age_s: float | None = None) -> int:
    """Delete leftovers of killed runs (`_tmp-*`, `_old-*`) directly under `folder`.

    Only those of output `name` when given (`_tmp-<name>-*`), only folders older than
    `min_age_s` (by modification time) and never one whose writer is alive (it holds
    a flock on it, see staged_dir). Returns the number removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    prefixes = (TMP_PREFIX, OLD_PREFIX) if name is None else \
        (f"{TMP_PREFIX}{name}-", f"{OLD_PREFIX}{name}-")
    min_age_s = STALE_AFTER_S if min_age_s is None else min_age_s
    now, n = time.time(), 0
    for child in folder.iterdir():
        if not child.name.startswith(prefixes) or not child.is_dir():
            continue
        try:
            if now - child.stat().st_mtime < min_age_s or _in_use(child):
                continue
        except FileNotFoundError:  # removed or published meanwhile
            continue
        shutil.rmtree(child, ignore_errors=True)
        log.info("removed %s, left by a run that did not finish", child)
        n += 1
    return n


def _in_use(folder: Path) -> bool:
    """Does a live process hold the staging lock on `folder`?"""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False
