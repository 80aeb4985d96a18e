"""Job: switch the served version (`<root>/current.json`) — publish a ds, roll back, or show.

    python -m jobs.publish --data-root ROOT --ds 2026-11-28     # make ds current
    python -m jobs.publish --data-root ROOT --rollback           # back to the previous one
    python -m jobs.publish --data-root ROOT --show

What the pointer holds and how it is switched atomically: `artefacts.pointer`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from artefacts.cli import run_main
from artefacts.pointer import PublishError, publish, read_current, rollback

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, expected=(PublishError,))


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="Switch the served version (current.json)")
    p.add_argument("--data-root", required=True, type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ds", help="publish this ds (YYYY-MM-DD)")
    g.add_argument("--rollback", action="store_true", help="back to the previous version")
    g.add_argument("--show", action="store_true", help="print the current pointer")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if a.show:
        pointer = read_current(a.data_root)
    elif a.rollback:
        pointer = rollback(a.data_root)
    else:
        pointer = publish(a.data_root, a.ds)
    print(json.dumps(pointer.data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
