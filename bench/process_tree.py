"""Run a job to completion while sampling its process tree (the job and every process it
starts: JVM, Python workers): wall seconds, peak summed RSS and CPU seconds. On a shared,
loaded machine CPU time says more about a job's cost than wall time.

Summed RSS counts a page shared by several processes (a forked PySpark worker and its
daemon, shared libraries) once per process, so the peak of summed PSS (each shared page
split between its sharers) is recorded next to it, with the processes at the RSS peak."""
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
    peak_pss_bytes: int = 0
    at_peak: list[dict] | None = None  # [{pid, name, rss_bytes, pss_bytes}] at the RSS peak


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
                   out["cpu_seconds"], out["peak_pss_bytes"], out["at_peak"])


def _sample(proc: subprocess.Popen, stop: threading.Event, out: dict, every: float) -> None:
    peak, peak_pss, at_peak, cpu = 0, 0, [], {}
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            procs = [p for p in [root, *root.children(recursive=True)] if p.is_running()]
            mem = [(p, p.memory_full_info()) for p in procs]  # rss and pss (Linux smaps)
            rss = sum(m.rss for _, m in mem)
            peak_pss = max(peak_pss, sum(getattr(m, "pss", m.rss) for _, m in mem))
            if rss > peak:
                peak = rss
                at_peak = [{"pid": p.pid, "name": _name(p), "rss_bytes": m.rss,
                            "pss_bytes": getattr(m, "pss", m.rss)} for p, m in mem]
            for p in procs:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        stop.wait(every)
    out["peak_rss_bytes"] = peak
    out["peak_pss_bytes"] = peak_pss
    out["at_peak"] = at_peak
    out["cpu_seconds"] = sum(cpu.values())


def _name(p: psutil.Process) -> str:
    """'java', 'python -m jobs.build_sequences', 'python -m pyspark.daemon', ..."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return p.name()
    if "-m" in cmd[:-1]:
        return f"{p.name()} -m {cmd[cmd.index('-m') + 1]}"
    return p.name()
