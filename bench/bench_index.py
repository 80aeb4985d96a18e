"""Benchmark of the item index, multi-interest retrieval and the user-embedding job.

On generated item vectors (default 1M, d = 64) and user vectors drawn near the same
clusters — 2000 cluster centres, noise of 0.8x a centre's scale, item norms varied
(log-normal, sigma 0.25) as popularity does to learnt embeddings — for the exact index
and the default ANN index (`artefacts.index.choose_factory`), both in 2 shards searched
together:

- build time, index size (bytes written) and process memory growth;
- single-user multi-interest retrieval latency p50/p99 for K = 1, 3, 5 at N = 50, 1000;
- batch throughput (users/s, K = 3, N = 50), recall@50 / @1000 against exact search;
- the ANN index at the nprobe a gate at recall@100 >= 0.95 picks (the index job's default
  before the service), and at the one the gate picks now: recall@1000 >= 0.95, the N the
  service returns (`artefacts.index.SERVED_N`); recall at 50, 100 and 1000 for each;
- f_user (user extraction) latency of a MIND model, and end to end (extraction + search,
  K = 5, N = 1000), next to the paper's figure;
- users/s of the Spark embedding job (`jobs.embed_users`) on local[1] and local[2].

torch and faiss each bring an OpenMP runtime; with the default (active) wait policy
the threads of one spin while the other works, which made f_user 30x slower right
after a search on 2 cores. A process doing both — this benchmark, a retrieval
service computing vectors on the fly — should run with OMP_WAIT_POLICY=PASSIVE
(set below, before the libraries load, unless already set).

    python -m bench.bench_index [--items 1000000] [--out bench/results/index.json]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy / faiss / torch load

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from artefacts import index as ix  # noqa: E402
from bench.process_tree import run_sampled  # noqa: E402

DS = "2026-11-28"
PAPER = ("MIND paper (Tmall, CIKM 2019): thousands of candidates from a pool of ~1 billion "
         "items in under 15 ms per request, user extraction included (production serving "
         "cluster)")
NOISE = 0.8
# Index types compared with the default (IVF4096,PQ64x4fs,RFlat at 1M items) at the served N
# (issue 17): the default before (flat IVF, HNSW coarse quantiser); a flat IVF; 8-bit scalar
# quantisation
CANDIDATES = ("IVF4096_HNSW32,Flat", "IVF4096,Flat", "IVF4096,SQ8")


def rss() -> int:
    return psutil.Process().memory_info().rss


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def generate(n_items: int, dim: int, n_clusters: int, seed: int = 0, *,
             labels_out: list | None = None):
    """Clustered item vectors and a function drawing users' K interest vectors; each
    item's cluster is appended to `labels_out` when given."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    x = np.empty((n_items, dim), np.float32)
    labels = np.empty(n_items, np.int64)  # (N,) cluster of each item
    step = 1 << 18
    for a in range(0, n_items, step):  # chunked: bounded temporaries
        b = min(a + step, n_items)
        labels[a:b] = rng.integers(0, n_clusters, b - a)
        x[a:b] = centres[labels[a:b]] + \
            NOISE * rng.standard_normal((b - a, dim), dtype=np.float32)
        x[a:b] *= rng.lognormal(0.0, 0.25, (b - a, 1)).astype(np.float32)
    if labels_out is not None:
        labels_out.append(labels)

    def users(n: int, k: int, seed: int) -> list[np.ndarray]:
        r = np.random.default_rng(seed)
        return [(centres[r.integers(0, n_clusters, k)]
                 + NOISE * r.standard_normal((k, dim), dtype=np.float32)).astype(np.float32)
                for _ in range(n)]

    return x, np.arange(2, n_items + 2, dtype=np.int64), users


def build(kind: str, x, ids, a, work: Path, factory: str | None = None
          ) -> tuple[dict, list, object]:
    factory = factory or ("Flat" if kind == "exact" else ix.choose_factory(len(ids),
                                                                         dim=x.shape[1]))
    print(f"[{kind}] building {factory} over {len(ids):,} items in {a.shards} shards ...",
          flush=True)
    m0, t0 = rss(), time.perf_counter()
    shards = ix.build_shards(x, ids, factory, a.shards)
    build_s = time.perf_counter() - t0
    mem = rss() - m0
    files = ix.write_shards(shards, work / kind)
    shutil.rmtree(work / kind, ignore_errors=True)
    out = {"factory": factory, "shards": a.shards, "build_seconds": round(build_s, 2),
           "index_bytes": sum(f["bytes"] for f in files), "rss_growth_bytes": int(mem)}
    print(f"[{kind}] built in {build_s:.1f}s, {out['index_bytes'] / 2**20:.0f} MiB", flush=True)
    return out, shards, ix.combine(shards, merge=True)  # searched as CPU serving does


def measure(name: str, index, shards, x, ids, users, a, *, tune_n: int,
            ns: tuple[int, ...] = (50, 1000), ks: tuple[int, ...] = (1, 3, 5)) -> dict:
    """Tune like the index job (recall@tune_n >= 0.95), then recall, latency, throughput."""
    out: dict = {}
    gate_users = users(a.gate_users, 3, seed=7)
    t0 = time.perf_counter()
    gate_exact = ix.exact_multi_interest(x, ids, gate_users, tune_n)
    params, gate_recall, tried = ix.tune(index, shards[0], gate_users, gate_exact, tune_n, 0.95)
    out["search_params"] = params
    out["tuning"] = {f"recall@{tune_n}": round(gate_recall, 4), "tried": tried,
                     "seconds": round(time.perf_counter() - t0, 1)}
    exact_kind = not params
    # an exact index has recall 1 by construction: fewer users suffice to check the shards
    rec_users = users(a.recall_users // 4 if exact_kind else a.recall_users, 3, seed=11)
    out["recall"] = {}
    for n in sorted({*ns, 100, ix.SERVED_N}):  # recall at the old gate N and the served N
        exact = ix.exact_multi_interest(x, ids, rec_users, n)
        out["recall"][f"@{n}"] = round(ix.recall(ix.multi_interest_search(index, rec_users, n),
                                                 exact), 4)
    n_req = max(20, a.requests // 5) if exact_kind else a.requests
    out["latency"] = {}
    for k in ks:
        reqs = users(n_req, k, seed=100 + k)
        for n in ns:
            ix.multi_interest_search(index, reqs[:1], n)  # warm-up
            times, cpu = [], []
            for u in reqs:
                t, c = time.perf_counter(), time.process_time()
                ix.multi_interest_search(index, [u], n)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            # CPU time (all threads) is the steadier figure on a shared, loaded machine
            out["latency"][f"K={k},N={n}"] = {**percentiles(times), "cpu_ms_mean": round(
                float(np.mean(cpu)) * 1e3, 3)}
    if 50 in ns:
        batch = users(a.batch_users // 8 if exact_kind else a.batch_users, 3, seed=13)
        t = time.perf_counter()
        for s in range(0, len(batch), 256):
            ix.multi_interest_search(index, batch[s:s + 256], 50)
        out["batch_users_per_second"] = round(len(batch) / (time.perf_counter() - t), 1)
    print(f"[{name}] params {params}, recall {out['recall']}, latency {out['latency']}, "
          f"batch {out.get('batch_users_per_second')} users/s", flush=True)
    return out


def omp_threads(index, users, requests: int, n: int = 1000) -> dict:
    """K = 5, N = n requests with FAISS on 1 and 2 OpenMP threads, interleaved in blocks of
    20 (a request's 5 queries are one search; is a second thread worth its overhead?)."""
    import faiss

    before = faiss.omp_get_max_threads()
    reqs = users(requests, 5, seed=105)
    times: dict[int, list] = {1: [], 2: []}
    cpu: dict[int, list] = {1: [], 2: []}
    for s in range(0, len(reqs), 20):
        for th in (1, 2):
            faiss.omp_set_num_threads(th)
            for u in reqs[s:s + 20]:
                t, c = time.perf_counter(), time.process_time()
                ix.multi_interest_search(index, [u], n)
                times[th].append(time.perf_counter() - t)
                cpu[th].append(time.process_time() - c)
    faiss.omp_set_num_threads(before)
    return {f"{th}_threads": {**percentiles(times[th]), "cpu_ms_mean": round(
        float(np.mean(cpu[th])) * 1e3, 3)} for th in (1, 2)}


def bench_extraction(n_items: int, dim: int, index, requests: int) -> dict:
    """f_user latency of a MIND model (L = 50, K = 5) and extraction + ANN, N = 1000."""
    import torch

    from mind_model.config import ModelConfig
    from mind_model.inference import interest_vectors
    from mind_model.model import MIND

    torch.manual_seed(0)
    cfg = ModelConfig(n_items=n_items + 2, n_categories=1000, n_brands=5000,
                      profile_vocab={"gender": 4, "age_bucket": 9, "city_tier": 7},
                      embed_dim=dim, max_len=50, n_interests=5)
    model = MIND(cfg).eval()
    rng = np.random.default_rng(3)
    reqs = [(rng.integers(2, n_items + 2, (1, 50)), np.array([50]),
             {"gender_idx": np.array([2]), "age_bucket_idx": np.array([3]),
              "city_tier_idx": np.array([4])}) for _ in range(requests)]
    interest_vectors(model, *reqs[0])
    extract, total = [], []
    for hist, hist_len, prof in reqs:
        t = time.perf_counter()
        vectors, _ = interest_vectors(model, hist, hist_len, prof)
        t1 = time.perf_counter()
        ix.multi_interest_search(index, vectors, 1000, [hist[0]])
        t2 = time.perf_counter()
        extract.append(t1 - t)
        total.append(t2 - t)
    return {"user_extraction": percentiles(extract),
            "end_to_end_K=5_N=1000": percentiles(total),
            "torch_threads": torch.get_num_threads()}


def make_sequences(root: Path, n_users: int, n_items: int, L: int = 50, seed: int = 0, *,
                   ds: str = DS, labels: np.ndarray | None = None) -> None:
    """A minimal sequences/ds=<ds> folder (latest/, items/, stats.json) + a MIND checkpoint.

    labels: (n_items,) a cluster per item; then each user's history is drawn from 1-5
    clusters (multi-interest users) instead of uniformly."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from artefacts.layout import DataLayout
    from artefacts.storage import write_json
    from mind_model.checkpoint import save_checkpoint
    from mind_model.data import load_meta
    from mind_model.model import MIND
    from schemas import ITEM_FEATURES, LATEST_SEQUENCES, VOCAB

    layout = DataLayout(root)
    seq = layout.sequences(ds)
    rng = np.random.default_rng(seed)
    lens = np.minimum(rng.geometric(1 / 30, n_users), L).astype(np.int32)
    if labels is None:
        hist = rng.integers(2, n_items + 2, (n_users, L)).astype(np.int32)
    else:
        hist = clustered_histories(rng, labels, n_users, L)
    hist[np.arange(L)[None, :] >= lens[:, None]] = 0
    (seq / "latest").mkdir(parents=True)
    table = pa.table({
        "user_idx": pa.array(np.arange(2, n_users + 2, dtype=np.int32)),
        "hist": pa.FixedSizeListArray.from_arrays(pa.array(hist.reshape(-1)), L).cast(
            pa.list_(pa.int32())),
        "hist_len": pa.array(lens),
        "user_id": pa.array([f"u{i}" for i in range(n_users)]),
        **{c: pa.array(rng.integers(1, 5, n_users).astype(np.int32))
           for c in ("gender_idx", "age_bucket_idx", "city_tier_idx")},
    }, schema=LATEST_SEQUENCES.arrow_schema())
    pq.write_table(table, seq / "latest" / "part-00000.parquet", row_group_size=50_000)
    (seq / "items").mkdir()
    idx = np.arange(2, n_items + 2, dtype=np.int32)
    (seq / "vocab" / "item").mkdir(parents=True)  # raw item ids "i<idx>" for on-the-fly requests
    pq.write_table(pa.table({"value": pa.array([f"i{i}" for i in idx]), "idx": idx,
                             "first_ds": pa.array([ds] * len(idx))},
                            schema=VOCAB.arrow_schema()), seq / "vocab" / "item" / "part-0.parquet")
    pq.write_table(pa.table({
        "item_idx": idx, "item_id": pa.array([f"i{i}" for i in idx]),
        "category_idx": np.ones_like(idx), "brand_idx": np.ones_like(idx),
        "interactions": np.ones(len(idx), np.int64),
        "train_interactions": np.ones(len(idx), np.int64),
        "id_embedding": np.ones(len(idx), bool)}, schema=ITEM_FEATURES.arrow_schema()),
        seq / "items" / "part-00000.parquet")
    write_json(seq / "stats.json", {"vocab_sizes": {
        "item": n_items + 2, "category": 2, "brand": 2, "gender": 5, "age_bucket": 5,
        "city_tier": 5}, "train_samples": 0})
    torch.manual_seed(0)
    model = MIND(load_meta(seq).model_config(embed_dim=64, n_interests=4))
    save_checkpoint(layout.model_file(ds), model=model.eval(), model_config=model.cfg)


def clustered_histories(rng: np.random.Generator, labels: np.ndarray, n_users: int,
                        L: int) -> np.ndarray:
    """(n_users, L) item idx: each user picks 1-5 clusters, each position an item of one."""
    order = np.argsort(labels, kind="stable")  # item positions grouped by cluster
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_clusters = len(counts)
    user_clusters = rng.integers(0, n_clusters, (n_users, 5))  # (U, 5)
    k = rng.integers(1, 6, (n_users, 1))  # (U, 1) clusters per user
    c = np.take_along_axis(user_clusters, rng.integers(0, 5, (n_users, L)) % k, 1)  # (U, L)
    pos = starts[c] + (rng.random((n_users, L)) * np.maximum(counts[c], 1)).astype(np.int64)
    return (order[np.minimum(pos, len(order) - 1)] + 2).astype(np.int32)  # idx = position + 2


def bench_embedding_job(work: Path, n_users: int, n_items: int,
                        checkouts: dict[str, Path] | None = None, batch_size: int = 1024,
                        cores: tuple[int, ...] = (1, 2)) -> dict:
    """users/s of `jobs.embed_users` at local[c] for each c in `cores` and each checkout
    (name -> repository root; default this one), all on the same data in this one run.

    users_per_second is the manifest's: users / wall of the users stage (after the JVM
    started and the input was counted). Each run also reports the job's wall with Spark's
    start-up, the CPU seconds of its whole process tree (driver, JVM, Python workers;
    polled, so the machine's other load does not count) and users per CPU-second."""
    root = work / "embed"
    make_sequences(root, n_users, n_items)
    checkouts = checkouts or {"after": Path(".")}
    out: dict = {"users": n_users, "items": n_items, "batch_size": batch_size,
                 "model": "MIND d=64, K=4, L=50, tower (256,)",
                 "forward_in_one_process": bench_forward(root, min(n_users, 50_000),
                                                         batch_size)}
    for name, repo in checkouts.items():
        runs = {f"local[{c}]": run_embed_job(root, Path(repo), c, batch_size) for c in cores}
        first, last = runs[f"local[{cores[0]}]"], runs[f"local[{cores[-1]}]"]
        runs[f"ratio_local[{cores[-1]}]_to_local[{cores[0]}]"] = round(
            last["users_per_second"] / first["users_per_second"], 2)
        out[name] = runs
        print(f"[embed] {name}: local[{cores[-1]}] / local[{cores[0]}] = "
              f"{runs[f'ratio_local[{cores[-1]}]_to_local[{cores[0]}]']}", flush=True)
    return out


def run_embed_job(root: Path, repo: Path, cores: int, batch_size: int) -> dict:
    """One `python -m jobs.embed_users` at local[cores] from the checkout `repo`."""
    cmd = [sys.executable, "-m", "jobs.embed_users", "--data-root", str(root.resolve()),
           "--ds", DS, "--master", f"local[{cores}]", "--batch-size", str(batch_size),
           "--conf", "spark.ui.showConsoleProgress=false"]
    env = {**os.environ, "PYTHONPATH": str(repo.resolve())}
    load = os.getloadavg()[0]
    run = run_sampled(cmd, cwd=repo, env=env)
    wall, cpu = run.seconds, run.cpu_seconds
    if run.returncode != 0:
        raise RuntimeError(f"embed_users failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    m = json.loads((root / "embeddings" / f"ds={DS}" / "manifest.json").read_text())
    r = {"users_per_second": m["users_per_second"],  # the users stage alone
         "stage_seconds": m["seconds"]["users"], "job_seconds_with_spark_start": round(wall, 1),
         "job_users_per_second_with_spark_start": round(m["users"] / wall, 1),
         "cpu_seconds_process_tree": round(cpu, 1),
         "users_per_cpu_second": round(m["users"] / max(cpu, 1e-9), 1),
         "partitions": m["partitions"], "load_average_before": round(load, 2),
         "load_average_after": round(os.getloadavg()[0], 2)}
    if "profile" in m:
        r["profile"] = m["profile"]
    print(f"[embed] {repo} local[{cores}]: {r['users_per_second']:,.0f} users/s "
          f"({r['stage_seconds']}s for {m['users']:,} users; {wall:.0f}s with Spark start; "
          f"{cpu:.0f} CPU s, {r['users_per_cpu_second']:,.0f} users per CPU s; load "
          f"{load:.1f})", flush=True)
    return r


def bench_forward(root: Path, n_users: int, batch_size: int) -> dict:
    """The ceiling of the job: f_user alone in this process, one torch thread, batches of
    `batch_size` users of the job's data, as the job runs it (behaviour table) and without
    the table (the forward before issue 17)."""
    import pyarrow.parquet as pq
    import torch

    from jobs.embed_users import _hist_matrix, load_for_catalogue
    from mind_model.inference import interest_vectors_flat
    from schemas import PROFILE_COLUMNS

    seq = root / "sequences" / f"ds={DS}"
    model = load_for_catalogue(root / "models" / f"ds={DS}" / "model.pt", seq)
    t = pq.read_table(seq / "latest").slice(0, n_users)
    hist = _hist_matrix(t.column("hist").combine_chunks(), t.num_rows)  # (U, L)
    hist_len = t.column("hist_len").to_numpy()
    prof = {c: t.column(c).to_numpy() for c in PROFILE_COLUMNS}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"users": t.num_rows, "torch_threads": 1}
    try:
        for name, table in (("with_behaviour_table", model.behaviour_table()),
                            ("without_table", None)):
            def one_pass(rows: int = t.num_rows):
                for s in range(0, rows, batch_size):
                    interest_vectors_flat(model, hist[s:s + batch_size],
                                          hist_len[s:s + batch_size],
                                          {c: v[s:s + batch_size] for c, v in prof.items()},
                                          table)
            one_pass(2 * batch_size)  # warm-up
            w, c = time.perf_counter(), time.process_time()
            one_pass()
            w, c = time.perf_counter() - w, time.process_time() - c
            out[name] = {"users_per_second": round(t.num_rows / w, 1),
                         "users_per_cpu_second": round(t.num_rows / c, 1)}
            print(f"[embed] f_user alone, 1 thread, batch {batch_size} ({name}): "
                  f"{t.num_rows / w:,.0f} users/s, {t.num_rows / c:,.0f} users per CPU s",
                  flush=True)
    finally:
        torch.set_num_threads(threads)
    return out


def parse_checkouts(spec: str) -> dict[str, Path]:
    """'before=/old/checkout,after=.' -> {name: path}."""
    out = {}
    for part in filter(None, spec.split(",")):
        name, sep, path = part.partition("=")
        if not sep or not name or not (Path(path) / "jobs" / "embed_users.py").is_file():
            raise SystemExit(f"--embed-checkouts: {part!r} is not NAME=PATH of a checkout "
                             f"with jobs/embed_users.py")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--requests", type=int, default=300, help="single-user requests per setting")
    p.add_argument("--batch-users", type=int, default=2048)
    p.add_argument("--recall-users", type=int, default=200)
    p.add_argument("--gate-users", type=int, default=300)
    p.add_argument("--embed-users", type=int, default=200_000)
    p.add_argument("--embed-items", type=int, default=100_000)
    p.add_argument("--skip-embedding-job", action="store_true")
    p.add_argument("--embed-only", action="store_true",
                   help="only the embedding job (and its f_user ceiling): no index")
    p.add_argument("--embed-batch-size", type=int, default=1024)
    p.add_argument("--embed-checkouts", default="after=.",
                   help="NAME=PATH,... checkouts whose embedding job is timed on the same "
                        "data, e.g. before=/tmp/old,after=.")
    p.add_argument("--candidates", default=";".join(CANDIDATES),
                   help="more FAISS factories, each tuned to recall@1000 >= 0.95 and timed at "
                        "K=5, N=1000, separated by ; ('' for none)")
    p.add_argument("--out", type=Path, default=Path("bench/results/index.json"))
    a = p.parse_args(argv)
    if a.embed_only:
        return embed_only(a)
    import faiss

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    t_all = time.perf_counter()
    try:
        t0 = time.perf_counter()
        x, ids, users = generate(a.items, a.dim, a.clusters)
        print(f"generated {a.items:,} x {a.dim} item vectors in {time.perf_counter() - t0:.1f}s",
              flush=True)
        info, shards, index = build("exact", x, ids, a, work)
        exact = {**info, **measure("exact", index, shards, x, ids, users, a,
                                   tune_n=ix.SERVED_N)}
        print("[extraction] f_user + exact search end to end ...", flush=True)
        e2e_exact = bench_extraction(a.items, a.dim, index, max(20, a.requests // 5))
        del index, shards
        info, shards, index = build("ann", x, ids, a, work)
        # the gate's N before issue 17 (100) and now (the served N, 1000)
        ann = {**info, **measure("ann (gate N=100)", index, shards, x, ids, users, a,
                                 tune_n=100)}
        ann_1000 = measure(f"ann (gate N={ix.SERVED_N})", index, shards, x, ids, users, a,
                           tune_n=ix.SERVED_N, ns=(ix.SERVED_N,))
        ann_1000["omp_threads_K=5,N=1000"] = omp_threads(index, users, a.requests)
        print(f"[ann] OpenMP threads: {ann_1000['omp_threads_K=5,N=1000']}", flush=True)
        print("[extraction] f_user + ANN (tuned for N=1000) end to end ...", flush=True)
        e2e = bench_extraction(a.items, a.dim, index, a.requests)
        del index, shards
        candidates = {}
        for factory in filter(None, a.candidates.split(";")):
            info, shards, index = build(factory, x, ids, a, work, factory)
            candidates[factory] = {**info, **measure(
                factory, index, shards, x, ids, users, a, tune_n=ix.SERVED_N,
                ns=(ix.SERVED_N,), ks=(5,))}
            del index, shards
        embed = None if a.skip_embedding_job else bench_embedding_job(
            work, a.embed_users, a.embed_items, parse_checkouts(a.embed_checkouts),
            a.embed_batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "index", "items": a.items, "dim": a.dim, "clusters": a.clusters,
        "generator": {"clusters": a.clusters, "noise": NOISE, "norm_lognormal_sigma": 0.25},
        "exact": exact, "ann": ann, "ann_tuned_for_n1000": ann_1000, "candidates": candidates,
        "serving": {"ann_tuned_for_n1000": e2e, "exact": e2e_exact, "paper": PAPER},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "embedding_job": embed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    print(f"wrote {a.out}")


def embed_only(a: argparse.Namespace) -> None:
    """--embed-only: the embedding job's figures, written to `a.out` (default
    bench/results/embed.json, so that index.json keeps the full run's)."""
    out = a.out if a.out != Path("bench/results/index.json") else Path("bench/results/embed.json")
    checkouts = parse_checkouts(a.embed_checkouts)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    t = time.perf_counter()
    try:
        embed = bench_embedding_job(work, a.embed_users, a.embed_items, checkouts,
                                    a.embed_batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "embedding_job", "embedding_job": embed,
              "checkouts": {k: str(v) for k, v in checkouts.items()},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_before": [round(v, 2) for v in load_before],
                          "load_average_after": [round(v, 2) for v in os.getloadavg()]},
              "seconds": round(time.perf_counter() - t, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_embedding(embed)
    print(f"wrote {out}")


def print_embedding(j: dict) -> None:
    f = j["forward_in_one_process"]
    print(f"\nembedding job ({j['users']:,} users, batch {j['batch_size']}); ceiling, f_user "
          f"alone on 1 thread: {f['with_behaviour_table']['users_per_second']:,.0f} users/s "
          f"({f['with_behaviour_table']['users_per_cpu_second']:,.0f} per CPU s)")
    for name, runs in j.items():
        if not isinstance(runs, dict) or "local[1]" not in runs:
            continue
        cells = [f"{k} {v['users_per_second']:,.0f} users/s ({v['users_per_cpu_second']:,.0f} "
                 f"per CPU s)" for k, v in runs.items() if isinstance(v, dict)]
        ratio = [v for k, v in runs.items() if k.startswith("ratio")]
        print(f"  {name}: " + ", ".join(cells) + f"; ratio {ratio[0] if ratio else '-'}")


def print_summary(r: dict) -> None:
    m = r["machine"]
    print(f"\n{r['items']:,} items, d={r['dim']} ({m['cpus']} cores, load average "
          f"{m['load_average_before'][0]} -> {m['load_average_after'][0]})")
    cols = (("exact", r["exact"]), ("ann (gate N=100)", r["ann"]),
            ("ann (gate N=1000)", r["ann_tuned_for_n1000"]))
    print(f"{'':22}" + "".join(f"{c:>26}" for c, _ in cols))

    def row(name, fn):
        cells = []
        for _, d in cols:
            try:
                cells.append(str(fn(d)))
            except KeyError:
                cells.append("")
        print(f"{name:22}" + "".join(f"{c:>26}" for c in cells))

    row("factory", lambda d: d.get("factory", r["ann"]["factory"]))
    row("search params", lambda d: d["search_params"] or "-")
    row("build s", lambda d: d["build_seconds"])
    row("index MiB", lambda d: round(d["index_bytes"] / 2**20))
    row("recall@50", lambda d: d["recall"]["@50"])
    row("recall@100", lambda d: d["recall"]["@100"])
    row("recall@1000", lambda d: d["recall"]["@1000"])
    row("batch users/s (K=3)", lambda d: d["batch_users_per_second"])
    for k in (1, 3, 5):
        for n in (50, 1000):
            key = f"K={k},N={n}"
            row(f"{key} p50/p99 ms", lambda d, key=key: f"{d['latency'][key]['p50_ms']:.2f}/"
                f"{d['latency'][key]['p99_ms']:.2f}")
    s = r["serving"]
    for name, key in (("f_user", "user_extraction"), ("e2e K=5 N=1000", "end_to_end_K=5_N=1000")):
        e, a = s["exact"][key], s["ann_tuned_for_n1000"][key]
        print(f"{name + ' p50/p99 ms':22}{e['p50_ms']:>20.2f}/{e['p99_ms']:<5.1f}"
              f"{'':26}{a['p50_ms']:>20.2f}/{a['p99_ms']:<5.1f}")
    print(f"paper: {s['paper']}")
    th = r["ann_tuned_for_n1000"].get("omp_threads_K=5,N=1000")
    if th:
        print("ANN K=5,N=1000 by FAISS OpenMP threads: " + ", ".join(
            f"{k}: p50/p99 {v['p50_ms']:.2f}/{v['p99_ms']:.2f} ms, cpu {v['cpu_ms_mean']} ms"
            for k, v in th.items()))
    if r.get("candidates"):
        print(f"\n{'at recall@1000 >= 0.95':34}{'params':>34}{'recall':>8}{'MiB':>6}"
              f"{'K=5,N=1000 p50/p99 ms':>24}{'cpu ms':>8}")
        for name, d in (("default " + r["ann"]["factory"], r["ann_tuned_for_n1000"]),
                        *r["candidates"].items()):
            lat = d["latency"]["K=5,N=1000"]
            mib = round(d.get("index_bytes", r["ann"]["index_bytes"]) / 2**20)
            print(f"{name:34}{str(d['search_params']):>34}{d['recall']['@1000']:>8}{mib:>6}"
                  f"{lat['p50_ms']:>15.2f}/{lat['p99_ms']:<8.2f}{lat['cpu_ms_mean']:>8}")
    if r["embedding_job"]:
        print_embedding(r["embedding_job"])


if __name__ == "__main__":
    main()
