"""Progress lines of `make local-pipeline`: wall-clock time and time since the start."""
from __future__ import annotations

import time

T0 = time.time()


def say(msg: str) -> None:
    el = time.time() - T0
    print(f"[{time.strftime('%H:%M:%S')} +{int(el // 60):02d}:{int(el % 60):02d}] {msg}",
          flush=True)
