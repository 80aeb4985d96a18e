"""Benchmark of the index job's shard-parallel build: the same catalogue filled by 1 and
by 2 worker processes (one FAISS thread each: a worker stands for one core of a Spark
task or a k8s pod), and by 1 process using every core (the job's default on one machine).

The catalogue is written as the embedding job writes it (ITEM_EMBEDDINGS Parquet); each
run trains nothing (the quantiser is trained once, timed separately) and does what the
job does per shard: read its run of rows (its row groups only), fill a copy of the trained
index, write it, answer the recall gate's queries exactly over its items.

    python -m bench.bench_index_build [--items 1000000] [--shards 4]
        [--out bench/results/index_build.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artefacts import index as ix
from jobs.build_index import build_files, usable_cores
from schemas import ITEM_EMBEDDINGS

VERSION = "bench"


def write_catalogue(folder: Path, x: np.ndarray, ids: np.ndarray, files: int = 4) -> Path:
    """(N, D) vectors as ITEM_EMBEDDINGS Parquet, `files` files of 2^18-row groups."""
    folder.mkdir(parents=True)
    for f, rows in enumerate(np.array_split(np.arange(len(ids)), files)):
        n, d = len(rows), x.shape[1]
        pq.write_table(pa.table({
            "item_idx": pa.array(ids[rows].astype(np.int32)),
            "item_id": pa.array(ids[rows].astype(str)),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(x[rows].reshape(-1)), d).cast(pa.list_(pa.float32())),
            "model_version": pa.array([VERSION] * n, pa.string()),
            "ds": pa.array(["2026-11-28"] * n, pa.string()),
        }, schema=ITEM_EMBEDDINGS.arrow_schema()), folder / f"part-{f:05d}.parquet",
            row_group_size=1 << 18)
    return folder


def bench_parallel_build(x: np.ndarray, ids: np.ndarray, work: Path, *, shards: int,
                         gate_queries: int, k: int, factory: str | None = None,
                         seed: int = 0) -> dict:
    """Train once, then fill `shards` shards with each (workers, threads) setting."""
    factory = factory or ix.choose_factory(len(ids))
    items = write_catalogue(work / "items", x, ids)
    queries = np.random.default_rng(seed).standard_normal(
        (gate_queries, x.shape[1])).astype(np.float32)
    n_train = min(ix.training_size(factory, x.shape[1]), len(x))
    sample = x[np.sort(np.random.default_rng(seed).choice(len(x), n_train, replace=False))]
    t0 = time.perf_counter()
    template = ix.train_template(sample, factory, seed=seed)
    train_s = time.perf_counter() - t0
    print(f"[build] {factory}: trained on {n_train:,} vectors in {train_s:.1f}s", flush=True)
    cores = usable_cores()
    runs = {}
    for name, workers, threads in (("1 worker x 1 thread", 1, 1),
                                   ("2 workers x 1 thread", 2, 1),
                                   (f"1 process x {cores} threads (default)", 1, 0)):
        out = work / name.split(" (")[0].replace(" ", "_")
        out.mkdir()
        c0, t0 = os.times(), time.perf_counter()
        files, _ = build_files(items, VERSION, template, queries, k, out, shards, workers,
                               threads=threads)
        wall, c1 = time.perf_counter() - t0, os.times()
        faiss.omp_set_num_threads(cores)  # an in-process run with 1 thread changed it
        cpu = (c1.user - c0.user) + (c1.system - c0.system) + \
              (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        runs[name] = {"workers": workers, "threads_per_worker": threads or cores,
                      "fill_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                      "shard_seconds": [f["seconds"] for f in files],
                      "items": sum(f["items"] for f in files)}
        print(f"[build] {name}: {shards} shards filled in {wall:.1f}s "
              f"(CPU {cpu:.1f}s, load {os.getloadavg()[0]:.1f})", flush=True)
        shutil.rmtree(out)
    one, two = runs["1 worker x 1 thread"], runs["2 workers x 1 thread"]
    return {"factory": factory, "items": len(ids), "shards": shards,
            "gate_queries": gate_queries, "k": k, "train_seconds": round(train_s, 2),
            "train_vectors": n_train, "runs": runs,
            "speedup_2_workers": round(one["fill_seconds"] / two["fill_seconds"], 2)}


def main(argv: list[str] | None = None) -> None:
    from bench.bench_index import generate

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--gate-queries", type=int, default=1000, help="interest vectors of the gate")
    p.add_argument("--k", type=int, default=ix.SERVED_N)
    p.add_argument("--factory", default=None)
    p.add_argument("--out", type=Path, default=Path("bench/results/index_build.json"))
    a = p.parse_args(argv)
    load_before = os.getloadavg()
    x, ids, _ = generate(a.items, a.dim, 2000)
    work = Path(tempfile.mkdtemp(prefix="bench-index-build-"))
    try:
        r = bench_parallel_build(x, ids, work, shards=a.shards, gate_queries=a.gate_queries,
                                 k=a.k, factory=a.factory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"2 workers vs 1: {r['speedup_2_workers']}x (fill); wrote {a.out}")


if __name__ == "__main__":
    main()
