"""A prepared GPU check (`make gpu-check`): what the CPU-only suite cannot show, in one run.

On a machine with CUDA GPUs (a CUDA torch wheel; faiss-gpu for the index part):

1. NCCL DDP training: MIND on generated data (`bench.bench_train`'s set-up), one process
   per GPU, --steps steps per epoch for two epochs, the second timed;
2. FAISS on GPU: the default index over --items generated vectors, cloned across all GPUs
   sharded (`artefacts.index.to_gpus`), recall@1000 against exact search and K = 5,
   N = 1000 latency p50 / p99 (the GPU k limit, 2048, holds for N + history);
3. the service on GPU: `bench.bench_serve` (the service loads its index on the GPUs).

Each part has its own time limit (the whole fits in ~8 minutes on one large GPU) and its
failure is recorded, not fatal to the others. Timings go to bench/results/gpu.json.
Without a CUDA device it prints why, writes {"skipped": reason} and exits 0.

    python -m bench.gpu_check [--items 1000000] [--steps 200] [--out bench/results/gpu.json]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy / faiss / torch load

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check, or None."""
    import torch

    if not torch.cuda.is_available():
        return (f"no CUDA device visible to torch {torch.__version__} "
                f"(CPU build: {torch.version.cuda is None})")
    return None


def part(name: str, fn: Callable[[], dict], report: dict) -> None:
    """Run one part; its figures, or its error, go into the report."""
    t = time.perf_counter()
    print(f"[gpu-check] {name} ...", flush=True)
    try:
        report[name] = {**fn(), "seconds": round(time.perf_counter() - t, 1)}
    except Exception as e:  # one failing part must not hide the others' figures
        report[name] = {"error": f"{type(e).__name__}: {e}",
                        "trace": traceback.format_exc()[-2000:],
                        "seconds": round(time.perf_counter() - t, 1)}
    print(f"[gpu-check] {name}: {json.dumps(report[name])[:400]}", flush=True)


def ddp(work: Path, steps: int) -> dict:
    import torch

    from bench.bench_train import bench_training, prepare

    seq = prepare(work / "train", events=300_000, seed=0)
    n = torch.cuda.device_count()
    return {"gpus": n, "backend": "nccl",
            **bench_training(seq, work / "train" / "out", n, steps, batch_size=1024)}


def faiss_gpu(items: int, requests: int) -> dict:
    import faiss

    from artefacts import index as ix
    from bench.bench_index import generate, percentiles

    if faiss.get_num_gpus() == 0:
        return {"skipped": "faiss sees no GPU (faiss-cpu installed): install faiss-gpu==1.15.1 "
                           "(the pyproject extra `gpu`) instead of faiss-cpu"}
    x, ids, users = generate(items, 64, 2000)
    factory = ix.choose_factory(items, gpu=True)  # GPU FAISS has no PQ fast scan
    t = time.perf_counter()
    shards = ix.build_shards(x, ids, factory, 2)
    build_s = time.perf_counter() - t
    index, on_gpu = ix.to_gpus(shards)
    gate = users(300, 5, seed=7)
    exact = ix.exact_multi_interest(x, ids, gate, ix.SERVED_N)
    params, recall, tried = ix.tune(index, shards[0], gate, exact, ix.SERVED_N, 0.95, gpu=on_gpu)
    reqs = users(requests, 5, seed=105)
    ix.multi_interest_search(index, reqs[:1], ix.SERVED_N)
    times = []
    for u in reqs:
        t = time.perf_counter()
        ix.multi_interest_search(index, [u], ix.SERVED_N)
        times.append(time.perf_counter() - t)
    batch = users(4096, 5, seed=13)
    t = time.perf_counter()
    ix.multi_interest_search(index, batch, ix.SERVED_N)
    return {"gpus": faiss.get_num_gpus(), "on_gpu": on_gpu, "factory": factory, "items": items,
            "build_cpu_seconds": round(build_s, 1), "search_params": params,
            "recall@1000": round(recall, 4), "tried": tried,
            "K=5,N=1000": percentiles(times),
            "batch_users_per_s": round(len(batch) / (time.perf_counter() - t), 1)}


def serve(work: Path, items: int) -> dict:
    out = work / "serve.json"
    proc = subprocess.run([sys.executable, "-m", "bench.bench_serve", "--items", str(items),
                           "--seconds", "20", "--one-client-s", "10", "--out", str(out)],
                          capture_output=True, text=True, timeout=360)
    if not out.is_file():
        raise RuntimeError(f"bench_serve failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"exit_status": proc.returncode, **json.loads(out.read_text())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--serve-items", type=int, default=200_000)
    p.add_argument("--steps", type=int, default=200, help="training steps per epoch (2 epochs)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    a = p.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "gpu-check"}
    reason = no_gpu_reason()
    if reason:
        report["skipped"] = reason
        print(f"gpu-check skipped: {reason}")
    else:
        import torch

        report["devices"] = [torch.cuda.get_device_name(i)
                             for i in range(torch.cuda.device_count())]
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            work = Path(tmp)
            part("ddp_nccl", lambda: ddp(work, a.steps), report)
            part("faiss_gpu", lambda: faiss_gpu(a.items, a.requests), report)
            part("serve", lambda: serve(work, a.serve_items), report)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {a.out}")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
