"""Job: the active catalogue's item embeddings -> a sharded FAISS index, checked before publish.

    extract   embeddings/ds=<ds>/items (ITEM_EMBEDDINGS) + a random sample of users' vectors
    build     index type by catalogue size (or a factory string), trained once, N shards
    gate      the shards are written to a staged folder, read back and searched like in
              serving (multi-interest, merged); recall@N of the sampled users against exact
              search must reach the threshold. nprobe (efSearch for HNSW) is the smallest
              value that does, unless fixed. Below it: QualityGateError, nothing published.
    load      index/ds=<ds>/{shard-000.faiss, ..., manifest.json}, renamed in one step

Making the index *served* is a separate step (`jobs.publish`).

    python -m jobs.build_index --data-root data --ds 2026-11-28 [--shards 4] [--factory ...]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import psutil

from artefacts import index as ix
from artefacts.cli import run_main
from artefacts.layout import MANIFEST, DataLayout
from artefacts.pointer import read_manifest
from artefacts.storage import staged_dir, write_json
from artefacts.vectors import read_item_embeddings, sample_user_vectors

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
    seed: int = 0

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        DataLayout(self.data_root).index(self.ds)  # validates ds
        for flag, value in (("--shards", self.n_shards), ("--recall-n", self.recall_n),
                            ("--recall-users", self.recall_users)):
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


def run(cfg: IndexConfig) -> dict[str, Any]:
    """Build, check and write index/ds=<ds>; returns its manifest. Raises QualityGateError."""
    layout, t0 = DataLayout(cfg.data_root), time.time()
    emb_dir = layout.embeddings(cfg.ds)
    emb_manifest = read_manifest(emb_dir)
    version = emb_manifest["model_version"]

    log.info("[1/4] reading item embeddings and a sample of user vectors from %s", emb_dir)
    items = read_item_embeddings(emb_dir / "items")
    if items.model_versions - {version}:
        raise ValueError(f"{emb_dir / 'items'} mixes model versions {items.model_versions}")
    n_items, dim = items.vectors.shape if len(items.item_idx) else (0, 0)
    if n_items == 0:
        raise ValueError(f"{emb_dir / 'items'} holds no items")
    users = sample_user_vectors(emb_dir / "users", cfg.recall_users, cfg.seed)
    if not len(users):
        raise ValueError(f"{emb_dir / 'users'} holds no users: the recall gate needs some")

    check_resources(cfg, n_items, sum(len(v) for v in users.vectors),
                    min(cfg.recall_n, n_items))
    factory = cfg.factory or ix.choose_factory(n_items, dim=dim, exact_below=cfg.exact_below)
    log.info("[2/4] building %s over %d items (d=%d) in %d shard(s)", factory, n_items, dim,
             cfg.n_shards)
    t_build = time.time()
    shards = ix.build_shards(items.vectors, items.item_idx, factory, cfg.n_shards,
                             train_size=cfg.train_size, seed=cfg.seed)
    build_s = time.time() - t_build

    with staged_dir(layout.index(cfg.ds)) as tmp:
        files = ix.write_shards(shards, tmp)
        del shards  # from here on, what is checked is what was written
        loaded = ix.read_shards(tmp, [f["file"] for f in files])
        index = ix.combine(loaded, merge=True)  # searched as CPU serving searches it
        n = min(cfg.recall_n, n_items)
        log.info("[3/4] recall gate: %d users, recall@%d >= %s", len(users), n,
                 cfg.recall_threshold)
        t_gate = time.time()
        exact = ix.exact_multi_interest(items.vectors, items.item_idx, users.vectors, n)
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
            "exact": ix.is_exact(loaded[0]), "n_shards": len(files), "shards": files,
            "bytes": sum(f["bytes"] for f in files), "search_params": params,
            "recall": {"n": n, "value": round(recall, 5), "threshold": cfg.recall_threshold,
                       "users": len(users), "tried": tried,
                       "seconds": round(time.time() - t_gate, 2)},
            "faiss_version": faiss.__version__,
            "seconds": {"build": round(build_s, 2), "total": round(time.time() - t0, 2)},
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
