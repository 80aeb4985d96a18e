"""Benchmark of the build-sequences Spark job on generated logs.

For each size: generate Tmall-like logs, run the job as its own process (as
Airflow would), and record wall time, events/s and the peak resident memory of
the whole process tree (Python driver + JVM). Prints a table and writes JSON.

    python -m bench.bench_prep [--sizes 1000000,10000000] [--out bench/results/prep.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from ingest.sample_data import generate

END_DS = "2026-11-28"
DAYS = 7


def peak_rss_of_tree(proc: subprocess.Popen, stop: threading.Event, out: dict) -> None:
    """Sample the summed RSS of `proc` and its descendants until `stop` is set."""
    peak = 0
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        stop.wait(0.2)
    out["peak_rss_bytes"] = peak


def run_job(data_root: Path, driver_memory: str) -> dict:
    cmd = [sys.executable, "-m", "jobs.build_sequences", "--data-root", str(data_root),
           "--ds", END_DS, "--lookback-days", str(DAYS),
           "--conf", f"spark.driver.memory={driver_memory}",
           "--conf", "spark.ui.showConsoleProgress=false"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, mem = threading.Event(), {}
    sampler = threading.Thread(target=peak_rss_of_tree, args=(proc, stop, mem), daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"build_sequences failed:\n{output[-4000:]}")
    stats = json.loads((data_root / "sequences" / f"ds={END_DS}" / "stats.json").read_text())
    return {"seconds": seconds, "peak_rss_bytes": mem["peak_rss_bytes"], "stats": stats}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=os.environ.get("SIZES", "1000000,10000000"),
                   help="comma-separated event counts")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--out", type=Path, default=Path("bench/results/prep.json"))
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where generated data goes (default: a temporary folder, removed)")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench-prep-"))
    results = []
    try:
        for n in sizes:
            root = work / f"events-{n}"
            t0 = time.perf_counter()
            generate(root / "raw", end_ds=END_DS, days=DAYS, n_events=n, seed=0)
            gen_s = time.perf_counter() - t0
            print(f"generated {n:,} events in {gen_s:.1f}s; running the job ...", flush=True)
            r = run_job(root, a.driver_memory)
            c = r["stats"]["counts"]
            row = {
                "events": n, "generate_seconds": round(gen_s, 1),
                "job_seconds": round(r["seconds"], 1),
                "events_per_second": round(n / r["seconds"]),
                "peak_rss_gib": round(r["peak_rss_bytes"] / 2**30, 2),
                "kept": c["kept"], "train_samples": r["stats"]["train_samples"],
                "users": r["stats"]["users"]["total"], "items": r["stats"]["items"],
            }
            results.append(row)
            print(f"{n:>12,} events: {row['job_seconds']:>7.1f}s  {row['events_per_second']:>9,} "
                  f"events/s  peak {row['peak_rss_gib']:.2f} GiB  -> {row['train_samples']:,} "
                  f"train samples", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        if a.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "build_sequences", "days": DAYS, "results": results,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}}
    if len(results) >= 2:
        a0, b0 = results[0], results[-1]
        report["scaling"] = {
            "size_ratio": b0["events"] / a0["events"],
            "time_ratio": round(b0["job_seconds"] / a0["job_seconds"], 2),
            "throughput_ratio": round(b0["events_per_second"] / a0["events_per_second"], 2),
        }
        s = report["scaling"]
        print(f"{s['size_ratio']:.0f}x the events took {s['time_ratio']:.2f}x the time "
              f"(throughput x{s['throughput_ratio']:.2f})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
