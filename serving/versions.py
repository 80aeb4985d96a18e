"""The served version of a long-running process, swapped without downtime.

`VersionWatcher` holds ONE loaded version (`Served`: a `Retriever` with its users,
vocabularies and model in memory, and the pointer it came from) and polls
`<root>/current.json`. When the pointer names another version (a publish or a
rollback) it loads that version beside the old one, checks it (versions agree, the
model loads, a search runs), then swaps with one reference assignment; the old
version is freed once the requests still holding it have finished. A request reads
`watcher.current` once and uses only that object, so it is answered entirely by one
version. A failed load (missing, corrupt or stale artefacts) is logged, recorded in
`last_error`, and the old version keeps serving; it is retried when current.json
changes again.

Memory: two versions are in memory during a swap (index, model, user vectors).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from artefacts.layout import DataLayout
from artefacts.pointer import NoCurrentVersion, Pointer, read_current
from schemas import PROFILE_FIELDS
from serving.retrieval import Retriever

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(eq=False)
class Served:
    """One loaded version; immutable once published to request handlers."""

    retriever: Retriever
    loaded_at: str = field(default_factory=_now)
    load_seconds: float = 0.0

    @property
    def pointer(self) -> Pointer:
        return self.retriever.pointer

    def version(self) -> dict[str, str]:
        """What every response carries: the version that answered it."""
        return {"ds": self.pointer.ds, "model_version": self.pointer.model_version}


def _identity(pointer: Pointer) -> tuple:
    """What makes two pointers the same version (published_at / previous do not)."""
    return tuple(sorted((k, v) for k, v in pointer.data.items()
                        if k not in ("published_at", "previous")))


def load_version(pointer: Pointer, *, gpu: bool | None = None) -> Served:
    """Load everything a request may need now (not on the first request), and check it:
    user vectors and histories, vocabularies, the model, and one search."""
    t0 = time.perf_counter()
    r = Retriever(pointer.root, pointer=pointer, gpu=gpu, preload_users=True)
    for name in ("item", *PROFILE_FIELDS):
        r.vocab(name)
    _ = r.model  # checks the model file's hash against the pointer
    d = r.index.d
    r.search([np.ones((1, d), np.float32)], n=1)  # a corrupt index fails here, not in a request
    return Served(r, load_seconds=round(time.perf_counter() - t0, 3))


def _signature(path: Path) -> tuple | None:
    """Changes whenever current.json is replaced (os.replace gives a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class VersionWatcher:
    """The current version under `root`, reloaded when current.json changes (module doc)."""

    def __init__(self, root: Path | str, *, poll_s: float = 1.0,
                 loader: Callable[[Pointer], Served] = load_version):
        self.root = Path(root)
        self.poll_s = poll_s
        self._loader = loader
        self._current_path = DataLayout(self.root).current
        self.current: Served | None = None  # the one reference requests read
        self.swaps = 0
        self.last_error: dict[str, Any] | None = None
        self._seen: tuple | None = None  # signature of the current.json last acted on
        self._lock = threading.Lock()  # one check (and load) at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------- checking

    def check(self) -> bool:
        """Load and swap in the published version if it changed; True if swapped."""
        with self._lock:
            sig = _signature(self._current_path)
            if sig == self._seen:
                return False
            self._seen = sig
            try:
                pointer = read_current(self.root)
            except NoCurrentVersion:
                if self.current is not None:  # keep serving what was loaded
                    log.error("%s disappeared; still serving ds=%s", self._current_path,
                              self.current.pointer.ds)
                return False
            except (OSError, ValueError) as e:  # unreadable or half-edited by hand
                self._failed(None, e)
                return False
            old = self.current
            if old is not None and _identity(old.pointer) == _identity(pointer):
                return False
            try:
                new = self._loader(pointer)
            except Exception as e:  # any failure to load keeps the old version serving
                self._failed(pointer, e)
                return False
            self.current = new  # the swap: one reference assignment
            self.swaps += 1
            self.last_error = None
            log.info("now serving ds=%s, model %s (loaded in %.1fs)%s", pointer.ds,
                     pointer.model_version, new.load_seconds,
                     f"; was ds={old.pointer.ds}, model {old.pointer.model_version}"
                     if old else "")
            if old is not None:
                weakref.finalize(old, log.info, "freed ds=%s, model %s", old.pointer.ds,
                                 old.pointer.model_version)
            return True

    def _failed(self, pointer: Pointer | None, e: Exception) -> None:
        what = f"ds={pointer.ds}, model {pointer.model_version}" if pointer else "current.json"
        still = (f"still serving ds={self.current.pointer.ds}, model "
                 f"{self.current.pointer.model_version}" if self.current else "nothing served")
        log.error("could not load %s: %s: %s; %s", what, type(e).__name__, e, still)
        self.last_error = {"version": pointer and {"ds": pointer.ds,
                                                   "model_version": pointer.model_version},
                           "error": f"{type(e).__name__}: {e}", "at": _now()}

    # --------------------------------------------------------------------- background

    def start(self) -> None:
        """Load the current version now, then poll in a daemon thread."""
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # never let the watcher die silently
                log.exception("version check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
