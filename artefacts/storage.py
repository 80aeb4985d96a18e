"""Staged, atomic artefacts on the data root.

Every stage writes into a hidden temporary sibling of its final folder and
renames it into place only when complete, so a failed run leaves nothing a
reader could mistake for output and a rerun replaces the previous output whole.
The data root is a POSIX path (local disk or a shared mount); rename within one
folder is atomic there.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

TMP_PREFIX = "_tmp-"  # Spark and pyarrow readers skip names starting with _ or .
OLD_PREFIX = "_old-"


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
def staged_dir(final: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `final`; publish it on success.

    On any exception the temporary folder is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final)


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


def write_text(path: Path | str, text: str) -> None:
    """Write text atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any, *, sort_keys: bool = True) -> None:
    """Write JSON atomically (`atomic_path`), indented, with a final newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def remove_stale_temporaries(folder: Path | str) -> int:
    """Delete leftovers of crashed runs (`_tmp-*`, `_old-*`) directly under `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for child in folder.iterdir():
        if child.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            shutil.rmtree(child, ignore_errors=True)
            n += 1
    if n:
        log.info("removed %d stale temporary folder(s) under %s", n, folder)
    return n
