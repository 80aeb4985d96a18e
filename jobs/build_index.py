"""Job: the active catalogue's item embeddings -> a sharded FAISS index, checked before publish.

    extract   the item count, a training sample of embeddings/ds=<ds>/items (ITEM_EMBEDDINGS)
              and a random sample of users' vectors; no process reads the whole catalogue
    build     index type by catalogue size (or a factory string), trained once on the
              sample; then each of the N shards is filled by a task of its own
              (`fill_shard_task`: its items = item idx mod N, read a batch at a time), run by
              --workers processes: the build time falls with workers. Each task also
              computes the exact top N of the gate's users over its items.
    gate      the shards are written to a staged folder, read back and searched like in
              serving (multi-interest, merged); recall@N of the sampled users against exact
              search (the shards' exact answers merged) must reach the threshold. nprobe
              (efSearch for HNSW) is the smallest value that does, unless fixed. Below
              it: QualityGateError, nothing published.
    load      index/ds=<ds>/{shard-000.faiss, ..., manifest.json}, renamed in one step

Making the index *served* is a separate step (`jobs.publish`).

    python -m jobs.build_index --data-root data --ds 2026-11-28 [--shards 4] [--factory ...]
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import psutil

from artefacts import index as ix
from artefacts.cli import run_main
from artefacts.layout import MANIFEST, DataLayout
from artefacts.pointer import read_manifest
from artefacts.storage import staged_dir, write_json
from artefacts.vectors import count_items, read_item_part, sample_item_vectors, sample_user_vectors

log = logging.getLogger(__name__)


class QualityGateError(RuntimeError):
    """ANN recall below the threshold: the index is not published."""

    def __init__(self, recall: float, threshold: float, n: int, detail: str):
        self.recall, self.threshold, self.n = recall, threshold, n
        super().__init__(f"ANN recall@{n} = {recall:.4f} is below the threshold {threshold} "
                         f"({detail}); nothing was published. Allow a larger nprobe/efSearch, "
                         f"use more inverted lists, or an exact index.")


@dataclass
class IndexConfig:
    """Parameters of the index job (defaults: exact below 100k items, else IVF + HNSW)."""

    data_root: Path
    ds: str
    n_shards: int = 2                   # index files searched together (and GPUs shard them)
    factory: str | None = None          # FAISS factory string; None = by catalogue size
    exact_below: int = ix.DEFAULT_EXACT_BELOW
    nprobe: int | None = None           # IVF nprobe / HNSW efSearch; None = smallest that passes
    max_nprobe: int | None = None       # upper bound of the search for nprobe
    recall_n: int = ix.SERVED_N         # N of the recall@N gate: the N the service returns
                                        # (clipped to the catalogue)
    recall_threshold: float = 0.95
    recall_users: int = 1000            # users sampled for the gate
    train_size: int | None = None       # vectors used to train an IVF (default 64 per list)
    workers: int = 1                    # processes filling shards (1: in this process, FAISS
                                        # threads on every core); at most --shards
    seed: int = 0

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        DataLayout(self.data_root).index(self.ds)  # validates ds
        for flag, value in (("--shards", self.n_shards), ("--recall-n", self.recall_n),
                            ("--recall-users", self.recall_users), ("--workers", self.workers)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if not 0.0 <= self.recall_threshold <= 1.0:
            raise ValueError(f"--recall-threshold must lie in [0, 1], got {self.recall_threshold}")
        for flag, value in (("--nprobe", self.nprobe), ("--max-nprobe", self.max_nprobe),
                            ("--train-size", self.train_size)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")


# Bytes per (query, result) pair of one shard's answer: float32 score + int64 id.
RESULT_BYTES = 12


def check_resources(cfg: IndexConfig, n_items: int, n_queries: int, k: int,
                    available: int | None = None) -> None:
    """Refuse, before any work, settings the catalogue or the machine cannot hold.

    Every shard holds at least one item. The recall gate searches all shards at once:
    faiss.IndexShards keeps each shard's (queries, k) answers before merging them, so it
    needs about shards x queries x k x 12 bytes; that must fit in half the memory
    available now (`available`, bytes; default psutil's).
    """
    if cfg.n_shards > n_items:
        raise ValueError(f"--shards {cfg.n_shards} is more than the {n_items:,} items of the "
                         f"catalogue: every shard needs items (a few shards per GPU is the "
                         f"useful range)")
    need = cfg.n_shards * n_queries * k * RESULT_BYTES
    available = psutil.virtual_memory().available if available is None else available
    if need > available // 2:
        raise ValueError(
            f"--shards {cfg.n_shards} with --recall-users {cfg.recall_users} ({n_queries:,} "
            f"interest vectors) and recall@{k} needs about {need / 2**30:.1f} GiB for the "
            f"recall gate, more than half of the {available / 2**30:.1f} GiB available: "
            f"use fewer --shards or --recall-users")


# ------------------------------------------------------------------- shard tasks

TEMPLATE_FILE = "_template.faiss"        # scratch files of the build, removed before publish
QUERIES_FILE = "_gate-queries.npy"
EXACT_FILE = "_exact-{:03d}.npz"


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard's worker needs (paths, so that it pickles small)."""

    items_dir: str      # embeddings/ds=<ds>/items
    model_version: str  # every item must carry it
    work_dir: str       # the staged index folder: template and gate queries in, shard out
    shard: int
    n_shards: int
    k: int              # exact top k per gate query
    threads: int = 0    # FAISS OpenMP threads; 0 = leave FAISS's default


def fill_shard_task(task: ShardTask) -> dict[str, Any]:
    """Fill one shard from its items and answer the gate's queries exactly over them.

    Writes <work_dir>/shard-NNN.faiss and _exact-NNN.npz (scores, ids (Q, k')); returns
    {file, items, bytes, seconds}. Memory: this shard's items plus one record batch.
    """
    t0 = time.perf_counter()
    if task.threads:
        faiss.omp_set_num_threads(task.threads)
    work = Path(task.work_dir)
    idx, vectors, versions = read_item_part(
        task.items_dir, lambda i: ix.shard_of(i, task.n_shards) == task.shard,
        threads=task.threads != 1)
    check_version(task.items_dir, versions, task.model_version)
    shard = ix.fill_shard(faiss.read_index(str(work / TEMPLATE_FILE)), vectors, idx)
    path = work / ix.SHARD_FILE.format(task.shard)
    faiss.write_index(shard, str(path))
    queries = np.load(work / QUERIES_FILE)  # (Q, D)
    if len(idx):
        D, I = ix.exact_topk(vectors, idx, queries, task.k)
    else:  # an empty shard answers nothing
        D, I = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    np.savez(work / EXACT_FILE.format(task.shard), D=D, I=I)
    seconds = time.perf_counter() - t0
    log.info("shard %d/%d: %d items in %.1fs", task.shard + 1, task.n_shards, len(idx), seconds)
    return {"file": path.name, "items": int(len(idx)), "bytes": path.stat().st_size,
            "seconds": round(seconds, 2)}


def check_version(items_dir: str | Path, versions: set[str], version: str) -> None:
    """Every item read must come from the model the users' vectors came from."""
    if versions - {version}:
        raise ValueError(f"{items_dir} mixes model versions {sorted(versions | {version})}")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_shard_tasks(tasks: Sequence[ShardTask], workers: int) -> list[dict[str, Any]]:
    """Run the tasks in `workers` fresh processes (1: in this one); results in task order."""
    if workers <= 1:
        return [fill_shard_task(t) for t in tasks]
    # spawn, not fork: the parent may hold OpenMP / Spark / Airflow threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fill_shard_task, tasks))


def build_files(items_dir: Path, model_version: str, template: faiss.Index,
                queries: np.ndarray, k: int, work_dir: Path, n_shards: int, workers: int, *,
                threads: int | None = None
                ) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    """Write every shard into `work_dir` with `workers` processes, each with `threads`
    FAISS threads (default: its share of the cores; 1 worker runs here with FAISS's
    default); returns the shards' [{file, items, bytes, seconds}] and the exact top k of
    `queries` (Q, D) over all items, merged from the shards' answers."""
    workers = max(1, min(workers, n_shards))
    faiss.write_index(template, str(work_dir / TEMPLATE_FILE))
    np.save(work_dir / QUERIES_FILE, np.ascontiguousarray(queries, dtype=np.float32))
    if threads is None:
        threads = 0 if workers == 1 else max(1, usable_cores() // workers)
    tasks = [ShardTask(str(items_dir), model_version, str(work_dir), s, n_shards, k, threads)
             for s in range(n_shards)]
    files = run_shard_tasks(tasks, workers)
    parts = []
    for s in range(n_shards):
        with np.load(work_dir / EXACT_FILE.format(s)) as z:
            parts.append((z["D"], z["I"]))
        (work_dir / EXACT_FILE.format(s)).unlink()
    (work_dir / TEMPLATE_FILE).unlink()
    (work_dir / QUERIES_FILE).unlink()
    return files, ix.merge_topk(parts, k)


# --------------------------------------------------------------------------------- run


def run(cfg: IndexConfig) -> dict[str, Any]:
    """Build, check and write index/ds=<ds>; returns its manifest. Raises QualityGateError."""
    layout, t0 = DataLayout(cfg.data_root), time.time()
    emb_dir = layout.embeddings(cfg.ds)
    emb_manifest = read_manifest(emb_dir)
    version = emb_manifest["model_version"]
    items_dir = emb_dir / "items"

    log.info("[1/4] counting items, sampling users' vectors from %s", emb_dir)
    n_items = count_items(items_dir)
    if n_items == 0:
        raise ValueError(f"{items_dir} holds no items")
    users = sample_user_vectors(emb_dir / "users", cfg.recall_users, cfg.seed)
    if not len(users):
        raise ValueError(f"{emb_dir / 'users'} holds no users: the recall gate needs some")
    queries, offsets = ix.flatten(users.vectors)  # (Q, D), (U+1,)
    dim = queries.shape[1]
    n = min(cfg.recall_n, n_items)
    check_resources(cfg, n_items, len(queries), n)

    factory = cfg.factory or ix.choose_factory(n_items, dim=dim, exact_below=cfg.exact_below)
    t_build = time.time()
    n_train = min(ix.training_size(factory, dim, cfg.train_size), n_items)
    if n_train:
        _, sample, versions = sample_item_vectors(items_dir, n_train, n_items, cfg.seed)
        check_version(items_dir, versions, version)
        if sample.shape[1] != dim:
            raise ValueError(f"{items_dir}: items have d={sample.shape[1]}, users d={dim}")
    else:
        sample = np.zeros((0, dim), np.float32)
    log.info("[2/4] building %s over %d items (d=%d): trained on %d, %d shard(s) filled by "
             "%d worker(s)", factory, n_items, dim, len(sample), cfg.n_shards,
             min(cfg.workers, cfg.n_shards))
    template = ix.train_template(sample, factory, seed=cfg.seed)
    train_s = time.time() - t_build
    del sample

    with staged_dir(layout.index(cfg.ds)) as tmp:
        t_fill = time.time()
        files, (exact_D, exact_I) = build_files(items_dir, version, template, queries, n, tmp,
                                                cfg.n_shards, cfg.workers)
        fill_s = time.time() - t_fill
        if sum(f["items"] for f in files) != n_items:
            raise ValueError(f"{items_dir}: the shards hold {sum(f['items'] for f in files)} "
                             f"items, the table {n_items} (duplicate item_idx?)")
        # from here on, what is checked is what was written
        loaded = ix.read_shards(tmp, [f["file"] for f in files])
        index = ix.combine(loaded, merge=True)  # searched as CPU serving searches it
        log.info("[3/4] recall gate: %d users, recall@%d >= %s", len(users), n,
                 cfg.recall_threshold)
        t_gate = time.time()
        exact = ix.users_hits(exact_D, exact_I, offsets, n)
        params, recall, tried = ix.tune(index, loaded[0], users.vectors, exact, n,
                                        cfg.recall_threshold, value=cfg.nprobe,
                                        max_value=cfg.max_nprobe)
        if recall < cfg.recall_threshold:
            raise QualityGateError(recall, cfg.recall_threshold, n,
                                   f"{factory}, {params or 'exact'}, {len(users)} users; tried "
                                   f"{tried}")
        manifest = {
            "ds": cfg.ds, "model_version": version, "metric": "inner_product",
            "ids": "item_idx", "dim": int(dim), "items": int(n_items), "factory": factory,
            "exact": ix.is_exact(loaded[0]), "n_shards": len(files),
            "shards": [{k: f[k] for k in ("file", "items", "bytes")} for f in files],
            "bytes": sum(f["bytes"] for f in files), "search_params": params,
            "recall": {"n": n, "value": round(recall, 5), "threshold": cfg.recall_threshold,
                       "users": len(users), "tried": tried,
                       "seconds": round(time.time() - t_gate, 2)},
            "faiss_version": faiss.__version__,
            "seconds": {"train": round(train_s, 2), "fill": round(fill_s, 2),
                        "build": round(train_s + fill_s, 2),
                        "shards": [f["seconds"] for f in files],
                        "total": round(time.time() - t0, 2)},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        }
        log.info("[4/4] writing %s", layout.index(cfg.ds))
        write_json(tmp / MANIFEST, manifest)
    log.info("ds=%s: %s over %d items in %d shard(s), recall@%d = %.4f %s, %.1fs", cfg.ds,
             factory, n_items, len(files), n, recall, params, time.time() - t0)
    return manifest


def parse_args(argv: list[str] | None = None) -> IndexConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = IndexConfig(data_root=Path("."), ds="2000-01-01")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--ds", required=True)
    p.add_argument("--shards", dest="n_shards", type=int, default=d.n_shards)
    p.add_argument("--factory", default=None, help="FAISS factory string (default: Flat below "
                   "--exact-below items, else IVF<4 sqrt N>,PQ<d>x4fs,RFlat: PQ fast scan, "
                   "exact re-ranking; artefacts.index.choose_factory)")
    p.add_argument("--exact-below", type=int, default=d.exact_below)
    p.add_argument("--nprobe", type=int, default=None,
                   help="fixed nprobe (efSearch for HNSW); default: smallest passing the gate")
    p.add_argument("--max-nprobe", type=int, default=None)
    p.add_argument("--recall-n", type=int, default=d.recall_n)
    p.add_argument("--recall-threshold", type=float, default=d.recall_threshold)
    p.add_argument("--recall-users", type=int, default=d.recall_users)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=d.workers,
                   help="processes filling the shards (each gets cores / workers FAISS threads)")
    p.add_argument("--seed", type=int, default=d.seed)
    return IndexConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = parse_args(argv)
    try:
        m = run(cfg)
    except QualityGateError as e:  # a failed gate is not bad input: its own status
        log.error("%s", e)
        return 3
    print(f"ds={cfg.ds}: {m['factory']} over {m['items']:,} items, {m['n_shards']} shard(s), "
          f"{m['bytes'] / 2**20:.1f} MiB, recall@{m['recall']['n']} = {m['recall']['value']} "
          f"{m['search_params']} -> {DataLayout(cfg.data_root).index(cfg.ds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
