"""Run a job to completion while sampling its process tree (the job and every process it
starts: JVM, Python workers): wall seconds, peak summed RSS and CPU seconds. On a shared,
loaded machine CPU time says more about a job's cost than wall time."""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass
class TreeRun:
    returncode: int
    stdout: str
    stderr: str          # "" when stderr was sent to stdout
    seconds: float
    peak_rss_bytes: int
    cpu_seconds: float   # user + system, the last sample of each process


def run_sampled(cmd: list[str], *, every: float = 0.2, stderr: int = subprocess.PIPE,
                **popen_kw) -> TreeRun:
    """Run `cmd` (pipes read while it runs, so a chatty job cannot block) and sample its
    tree every `every` seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, **popen_kw)
    stop, out = threading.Event(), {}
    sampler = threading.Thread(target=_sample, args=(proc, stop, out, every), daemon=True)
    sampler.start()
    stdout, err = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return TreeRun(proc.returncode, stdout, err or "", seconds, out["peak_rss_bytes"],
                   out["cpu_seconds"])


def _sample(proc: subprocess.Popen, stop: threading.Event, out: dict, every: float) -> None:
    peak, cpu = 0, {}
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            for p in procs:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        stop.wait(every)
    out["peak_rss_bytes"] = peak
    out["cpu_seconds"] = sum(cpu.values())
