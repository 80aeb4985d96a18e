"""Benchmark of MIND training and evaluation throughput on generated data of a fixed size.

Generates Tmall-like logs (`ingest.sample_data`, default 300k events, seed 0) and runs the
build-sequences job once (cached under --work; reused when its stats.json exists), then:

- training samples/s of MIND (K = 4, d = 64, batch 256 per process, 1024 shared
  negatives) with 1 process and with 2 processes (DDP over gloo, `elastic_launch`):
  the SAME PER-PROCESS batch, so the 2-process run steps with a global batch of 512;
  one intra-op thread per process in both runs; two epochs of --steps steps each, the
  second one measured (the first is the warm-up), no evaluation during training. Also
  the share of each step spent waiting for data (the reader must not starve the model).
- evaluation users/s: `evaluate.evaluate` (paper protocol, top-100 over the whole
  catalogue, one thread) of the trained model on the held-out users, repeated and
  the median taken; `recommend` alone is timed.

Writes bench/results/train.json and prints the figures.

Profile (cProfile and torch.profiler, 1 process, 1 thread, MIND K=4 d=64, batch 256, 1024
negatives, gen200k): ~26-34 ms per step, of which waiting for the petastorm reader is 2-7 %
(the reader keeps up), backward ~40 %, aten::mm (the (B, D) x (D, 1024) sampled-softmax
logits and their gradients, and the tower) 33 % of self CPU, embedding lookups and their
dense backward ~15 %, Adam ~8 % (foreach=True: no measurable gain). No obvious waste was
found to remove: the step is dominated by the sampled softmax's matrix products, as it
should be.

    python -m bench.bench_train [--events 300000] [--steps 300] [--out bench/results/train.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from artefacts.storage import write_json

END_DS = "2026-11-28"
DAYS = 7


def prepare(work: Path, events: int, seed: int) -> Path:
    """Generated logs -> sequences (cached: rerun only when the output is missing)."""
    from ingest.sample_data import generate

    seq = work / "sequences" / f"ds={END_DS}"
    if (seq / "stats.json").is_file():
        return seq
    generate(work / "raw", end_ds=END_DS, days=DAYS, n_events=events, seed=seed)
    cmd = [sys.executable, "-m", "jobs.build_sequences", "--data-root", str(work), "--ds", END_DS,
           "--lookback-days", str(DAYS), "--conf", "spark.ui.showConsoleProgress=false"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"build_sequences failed:\n{out.stdout[-4000:]}")
    return seq


def bench_training(seq: Path, out_dir: Path, nproc: int, steps: int, batch_size: int) -> dict:
    """samples/s of the second of two epochs of `steps` steps (the first is the warm-up:
    reader start-up, allocator, DDP buckets)."""
    from mind_model.launch import run_training
    from mind_model.train import TrainConfig

    cfg = TrainConfig(data_dir=str(seq), out_dir=str(out_dir), variant="mind", epochs=2,
                      steps_per_epoch=steps, batch_size=batch_size, eval_every_epoch=False,
                      test_at_end=False, progress=False, resume=False, threads=1,
                      log_every=steps)
    t0 = time.perf_counter()
    res = run_training(cfg, nproc)
    h = res["history"][-1]
    return {"processes": nproc, "batch_per_process": batch_size, "global_batch": batch_size * nproc,
            "steps": h["steps"], "samples_per_s": h["samples_per_s"],
            "ms_per_step": h["train_s"] / h["steps"] * 1e3,
            "data_wait_share": h["data_wait_s"] / h["train_s"], "final_loss": h["loss"],
            "wall_s": time.perf_counter() - t0, "best": res["best"]}


def bench_eval(seq: Path, checkpoint: str, repeats: int = 3) -> dict:
    import torch

    from mind_model.checkpoint import load_model
    from mind_model.data import load_meta, read_eval
    from mind_model.evaluate import ModelRecommender, evaluate

    torch.set_num_threads(1)
    meta = load_meta(seq)
    samples = read_eval(seq, "test")
    model = load_model(checkpoint)
    rec = ModelRecommender(model, meta.active_items)
    runs = [evaluate(rec, samples, batch_size=512) for _ in range(repeats)]
    ups = [r["users_per_s"] for r in runs]
    return {"users": runs[0]["users"], "catalogue": rec.n_candidates, "top_n": 100,
            "users_per_s": float(np.median(ups)), "users_per_s_runs": ups, "threads": 1,
            "hr@50": runs[0]["hr@50"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300,
                   help="steps per epoch (2 epochs, the second measured)")
    p.add_argument("--batch-size", type=int, default=256, help="per process")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mind-bench-train",
                   help="generated data (cached between runs)")
    p.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    import logging
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    seq = prepare(a.work, a.events, a.seed)
    stats = json.loads((seq / "stats.json").read_text())
    print(f"data: {a.events:,} events -> {stats['train_samples']:,} training samples, "
          f"{stats['items']:,} items ({time.perf_counter() - t0:.0f}s)", flush=True)
    runs = a.work / "runs"
    train = {}
    for nproc in (1, 2):
        r = bench_training(seq, runs / f"p{nproc}", nproc, a.steps, a.batch_size)
        train[f"{nproc}_process"] = r
        print(f"train, {nproc} process(es) x batch {a.batch_size}: "
              f"{r['samples_per_s']:,.0f} samples/s "
              f"({r['ms_per_step']:.1f} ms/step, data wait {r['data_wait_share']:.1%})", flush=True)
    ev = bench_eval(seq, train["1_process"]["best"])
    print(f"eval: {ev['users_per_s']:,.0f} users/s ({ev['users']} users, top-100 of "
          f"{ev['catalogue']:,} items, 1 thread)")
    speedup = train["2_process"]["samples_per_s"] / train["1_process"]["samples_per_s"]
    print(f"2-process speed-up: {speedup:.2f}x (same per-process batch; {os.cpu_count()} CPUs)")
    result = {"events": a.events, "seed": a.seed, "train_samples": stats["train_samples"],
              "items": stats["items"], "train": train, "speedup_2_vs_1": speedup, "eval": ev,
              "note": "same per-process batch (global batch doubles with 2 processes); "
                      "1 intra-op thread per process",
              "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "loadavg": os.getloadavg()},
              "wall_s": time.perf_counter() - t0}
    for r in train.values():
        r.pop("best", None)
    write_json(a.out, result, sort_keys=False)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
