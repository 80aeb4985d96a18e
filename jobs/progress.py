"""Progress of a long job: one log line as each stage starts, with the time elapsed."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Stage:
    """Logs the start and duration of each stage (progress for long runs)."""

    def __init__(self, total: int, logger: logging.Logger = log) -> None:
        self.total, self.k, self.t0, self.log = total, 0, time.time(), logger

    def __call__(self, name: str) -> None:
        self.k += 1
        self.log.info("[%d/%d] %s (%.1fs elapsed)", self.k, self.total, name,
                      time.time() - self.t0)
