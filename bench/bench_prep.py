"""Benchmark of the build-sequences Spark job on generated logs.

For each size: generate Tmall-like logs, run the job as its own process (as
Airflow would), and record wall time, events/s, the peak resident memory of
the whole process tree (Python driver + JVM) and the bytes written per event.
Prints a table and writes JSON.

    python -m bench.bench_prep [--sizes 1000000,10000000] [--out bench/results/prep.json]
        [--variants before=/tmp/old-checkout,after=.] [--chunk-targets 50]

--variants runs the job of each checkout on the same generated logs, one after the
other, so that a before/after comparison comes from one machine state.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.process_tree import run_sampled
from ingest.sample_data import generate

END_DS = "2026-11-28"
DAYS = 7


_STAGE = re.compile(r"\[\d+/\d+\] (.*?) \(([\d.]+)s elapsed\)|wrote (\S+) in ([\d.]+)s")


def profile(output: str) -> dict[str, float]:
    """Seconds per stage of the job and per table written, from its log."""
    out, last = {}, None
    for m in _STAGE.finditer(output):
        if m.group(1):  # a stage starts: the previous one ends
            t = float(m.group(2))
            if last:
                out[f"stage: {last[0]}"] = round(t - last[1], 1)
            last = (m.group(1).split(" /")[0], t)
        else:
            out[f"write: {m.group(3)}"] = float(m.group(4))
    return out


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_job(raw: Path, data_root: Path, driver_memory: str, checkout: Path,
            extra: list[str]) -> dict:
    """The job of `checkout` on the logs under `raw`, writing under `data_root`."""
    cmd = [sys.executable, "-m", "jobs.build_sequences", "--data-root", str(data_root),
           "--events-dir", str(raw / "events"), "--profiles-dir", str(raw / "profiles"),
           "--ds", END_DS, "--lookback-days", str(DAYS),
           # local mode: the driver is the executor, so this bounds both
           "--conf", f"spark.driver.memory={driver_memory}",
           "--conf", "spark.ui.showConsoleProgress=false", *extra]
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    run = run_sampled(cmd, stderr=subprocess.STDOUT, cwd=checkout, env=env)
    output = run.stdout
    if run.returncode != 0:
        return {"failed": output[-2000:], "seconds": run.seconds,
                "peak_rss_bytes": run.peak_rss_bytes}
    out = data_root / "sequences" / f"ds={END_DS}"
    stats = json.loads((out / "stats.json").read_text())
    return {"seconds": run.seconds, "peak_rss_bytes": run.peak_rss_bytes, "stats": stats,
            "cpu_seconds": run.cpu_seconds, "peak_pss_bytes": run.peak_pss_bytes,
            "at_peak": run.at_peak,
            "bytes": folder_bytes(out), "train_bytes": folder_bytes(out / "train"),
            "profile": profile(output)}


def git_commit(checkout: Path) -> str:
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def result_row(n: int, gen_s: float, raw_bytes: int, variant: str, checkout: Path,
               r: dict) -> dict:
    row = {"events": n, "variant": variant, "commit": git_commit(checkout),
           "generate_seconds": round(gen_s, 1), "job_seconds": round(r["seconds"], 1),
           "peak_rss_gib": round(r["peak_rss_bytes"] / 2**30, 2)}
    if "failed" in r:
        return {**row, "failed": r["failed"]}
    c = r["stats"]["counts"]
    return {**row, "events_per_second": round(n / r["seconds"]),
            "cpu_seconds": round(r["cpu_seconds"], 1),
            "peak_pss_gib": round(r["peak_pss_bytes"] / 2**30, 2),
            "processes_at_peak_gib": {f"{p['name']} ({p['pid']})": [
                round(p["rss_bytes"] / 2**30, 2), round(p["pss_bytes"] / 2**30, 2)]
                for p in r["at_peak"]},  # [rss, pss]
            "bytes_written_per_event": round(r["bytes"] / n, 1),
            "train_bytes_per_raw_byte": round(r["train_bytes"] / raw_bytes, 3),
            "raw_bytes_per_event": round(raw_bytes / n, 1),
            "kept": c["kept"], "train_samples": r["stats"]["train_samples"],
            "train_chunks": r["stats"].get("train_chunks"),
            "users": r["stats"]["users"]["total"], "items": r["stats"]["items"],
            "job_seconds_inside": r["stats"]["seconds"], "profile": r["profile"]}


def scaling(results: list[dict]) -> dict[str, dict]:
    """Per variant: time ratio of each size to the previous one."""
    out: dict[str, dict] = {}
    for v in dict.fromkeys(r["variant"] for r in results):
        ok = [r for r in results if r["variant"] == v and "failed" not in r]
        out[v] = {f"{b['events'] // 10**6}M/{a['events'] // 10**6}M":
                  {"size_ratio": b["events"] / a["events"],
                   "time_ratio": round(b["job_seconds"] / a["job_seconds"], 2)}
                  for a, b in zip(ok, ok[1:])}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=os.environ.get("SIZES", "1000000,10000000"),
                   help="comma-separated event counts")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--variants", default="current=.",
                   help="comma-separated label=checkout: whose job to run (same logs)")
    p.add_argument("--chunk-targets", type=int, default=None,
                   help="pass --chunk-targets C to the job (checkouts that have it)")
    p.add_argument("--out", type=Path, default=Path("bench/results/prep.json"))
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where generated data goes (default: a temporary folder, removed)")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    variants = [(v.split("=", 1)[0], Path(v.split("=", 1)[1])) for v in a.variants.split(",")]
    extra = [] if a.chunk_targets is None else ["--chunk-targets", str(a.chunk_targets)]
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench-prep-"))
    results = []
    try:
        for n in sizes:
            raw = work / f"events-{n}" / "raw"
            t0 = time.perf_counter()
            generate(raw, end_ds=END_DS, days=DAYS, n_events=n, seed=0)
            gen_s = time.perf_counter() - t0
            raw_bytes = folder_bytes(raw / "events")
            print(f"generated {n:,} events in {gen_s:.1f}s", flush=True)
            for label, checkout in variants:
                root = work / f"events-{n}" / label
                r = run_job(raw, root, a.driver_memory, checkout, extra)
                row = result_row(n, gen_s, raw_bytes, label, checkout, r)
                results.append(row)
                if "failed" in row:
                    print(f"{n:>12,} events [{label}]: FAILED after {row['job_seconds']:.0f}s: "
                          f"{row['failed'][-300:]}", flush=True)
                else:
                    print(f"{n:>12,} events [{label} {row['commit']}]: {row['job_seconds']:>7.1f}s "
                          f"({row['cpu_seconds']:.0f} CPU s) "
                          f"{row['events_per_second']:>9,} events/s  peak "
                          f"{row['peak_rss_gib']:.2f} GiB (PSS {row['peak_pss_gib']:.2f})  "
                          f"{row['bytes_written_per_event']:.1f} "
                          f"B/event written (train {row['train_bytes_per_raw_byte']:.2f}x raw) "
                          f"-> {row['train_samples']:,} train samples", flush=True)
                shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(raw.parent, ignore_errors=True)
    finally:
        if a.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "build_sequences", "days": DAYS, "driver_memory": a.driver_memory,
              "chunk_targets": a.chunk_targets, "results": results, "scaling": scaling(results),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                          "load_average_at_end": os.getloadavg()}}
    for v, ratios in report["scaling"].items():
        for k, r in ratios.items():
            print(f"[{v}] {k}: {r['size_ratio']:.0f}x the events took {r['time_ratio']:.2f}x "
                  f"the time")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
