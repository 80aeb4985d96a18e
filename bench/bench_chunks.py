"""Choosing C, the training targets per stored row, by measurement.

Generates logs, runs the build-sequences job's stages up to the user sequences once
(one Spark session), then writes the training table for each C as the job does and
reads it back as training does: rows, bytes, write seconds (and CPU seconds of the
JVM, steadier than wall time on a shared machine), and the reader's expansion rate.
C = 1 is the per-position layout the job wrote before chunks (one row per target).

    python -m bench.bench_chunks [--events 300000] [--chunks 1,10,25,50,100]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil

from bench.bench_prep import DAYS, END_DS, folder_bytes
from ingest.sample_data import generate
from jobs import build_sequences as bs
from jobs.spark import start_spark
from mind_model.data import read_train
from schemas import TRAIN_CHUNKS


def jvm_cpu_seconds() -> float:
    """CPU seconds of this process's children (the Spark JVM)."""
    return sum(p.cpu_times().user + p.cpu_times().system
               for p in psutil.Process().children(recursive=True))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--chunks", default="1,10,25,50,100")
    p.add_argument("--out", type=Path, default=Path("bench/results/chunks.json"))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    generate(work / "raw", end_ds=END_DS, days=DAYS, n_events=a.events, seed=0)
    raw_bytes = folder_bytes(work / "raw" / "events")
    spark = start_spark("bench-chunks", "local[*]", {"spark.driver.memory": "2g"})
    cfg = bs.PrepConfig(data_root=work, ds=END_DS, lookback_days=DAYS)
    inputs = bs.extract(spark, cfg)
    annotated, by_reason = bs.quarantine(inputs.events, cfg.window_days()[0])
    kept, _ = bs.deduplicate_and_filter(annotated, by_reason, cfg, work / "scratch")
    out = bs.transform(kept, inputs.profiles, inputs.prev_vocab, cfg)
    sizes = bs.split_sizes(out["seqs"], 1)
    samples = sizes["train"]["samples"]
    rows = []
    for c in (int(x) for x in a.chunks.split(",")):
        folder = work / f"c{c}" / "train"
        cpu0, t0 = jvm_cpu_seconds(), time.perf_counter()
        bs.write_table(bs.training_chunks(out["seqs"], cfg.max_len, c), folder, TRAIN_CHUNKS,
                       files=bs.n_files(samples, cfg, cfg.min_row_groups),
                       sort_by=["user_idx", "t"])
        write_s, cpu = time.perf_counter() - t0, jvm_cpu_seconds() - cpu0
        t0 = time.perf_counter()
        n = len(read_train(folder.parent)["target"])  # read + expand, as the reader does
        read_s = time.perf_counter() - t0
        assert n == samples, (n, samples)
        b = folder_bytes(folder)
        rows.append({"C": c, "rows": bs.split_sizes(out["seqs"], c)["train"]["chunks"],
                     "bytes": b, "bytes_per_sample": round(b / samples, 2),
                     "train_bytes_per_raw_byte": round(b / raw_bytes, 3),
                     "write_seconds": round(write_s, 1), "write_cpu_seconds": round(cpu, 1),
                     "read_expand_samples_per_s": round(samples / read_s)})
        print(json.dumps(rows[-1]), flush=True)
    spark.stop()
    report = {"benchmark": "train_chunks", "events": a.events, "train_samples": samples,
              "max_len": cfg.max_len, "results": rows,
              "load_average_at_end": psutil.getloadavg()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
