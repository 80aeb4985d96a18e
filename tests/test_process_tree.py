"""bench.process_tree: the sampled tree's peak RSS counts pages shared after a fork once per
process; its peak PSS counts them once."""
from __future__ import annotations

import sys

from bench.process_tree import run_sampled

# 400 MiB touched, then a fork: parent and child share every page until one writes
CHILD = """
import os, time
block = bytearray(400 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
pid = os.fork()
time.sleep(2.5)
if pid:
    os.waitpid(pid, 0)
"""


def test_peak_rss_double_counts_forked_pages_and_pss_does_not():
    run = run_sampled([sys.executable, "-c", CHILD], every=0.1)
    assert run.returncode == 0, run.stderr
    mib = 1 << 20
    assert run.peak_rss_bytes > 780 * mib  # 2 x 400 MiB: each process shows the pages
    assert 390 * mib < run.peak_pss_bytes < 560 * mib  # once, plus two interpreters
    assert len(run.at_peak) == 2 and all(p["name"].startswith("python") for p in run.at_peak)
    assert sum(p["rss_bytes"] for p in run.at_peak) == run.peak_rss_bytes
