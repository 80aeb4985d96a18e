"""Job: the active catalogue's item embeddings -> a sharded FAISS index, checked before publish.

    extract   the item count, a training sample of embeddings/ds=<ds>/items (ITEM_EMBEDDINGS)
              and a random sample of users' vectors; no process reads the whole catalogue
    build     index type by catalogue size (or a factory string), trained once on the
              sample; then each of the N shards is filled by a task of its own
              (`fill_shard_task`: its items = its run of the items table's rows, planned
              from the Parquet footers, so that it decodes only its own row groups), run
              by --workers processes: the build time falls with workers. Each task also
              computes the exact top N of the gate's users over its items.
    gate      the shards are written to a work folder, read back and searched like in
              serving (multi-interest, merged); recall@N of the sampled users against exact
              search (the shards' exact answers merged) must reach the threshold. nprobe
              (efSearch for HNSW) is the smallest value that does, unless fixed. Below
              it: QualityGateError, nothing published.
    load      index/ds=<ds>/{shard-000.faiss, ..., manifest.json}, renamed in one step

Stages (`--stage`, default `all`: every stage in this process, in a staged folder). The
same build can run as separate processes, e.g. the pods of Kubernetes Jobs
(`orchestration.k8s`), sharing index/_build-ds=<ds>/ (`DataLayout.index_build`, which no
reader takes for an index):

    plan      extract + train; writes the template, the gate's queries and _plan.json
              (a rerun starts the build over)
    fill      one shard (--shard I, else $JOB_COMPLETION_INDEX: one pod of an Indexed Job
              per shard), written atomically; a rerun replaces it
    finish    every shard present, gate, manifest, and the build folder renamed to
              index/ds=<ds> in one step (a failed gate removes it: nothing published)

fill and finish take every setting from the plan. Making the index *served* is a separate
step (`jobs.publish`).

    python -m jobs.build_index --data-root data --ds 2026-11-28 [--shards 4] [--factory ...]
    python -m jobs.build_index --data-root data --ds 2026-11-28 --shards 4 --stage plan
    python -m jobs.build_index --data-root data --ds 2026-11-28 --stage fill --shard 0  # .. 3
    python -m jobs.build_index --data-root data --ds 2026-11-28 --stage finish
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, astuple, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from artefacts import index as ix
from artefacts.cli import run_main
from artefacts.layout import MANIFEST, DataLayout
from artefacts.pointer import read_manifest
from artefacts.row_spans import RowSpan, plan_spans
from artefacts.storage import (
    atomic_path,
    config_record,
    fresh_dir,
    publish_dir,
    staged_dir,
    write_json,
)
from artefacts.vectors import (
    item_row_groups,
    read_item_spans,
    sample_item_vectors,
    sample_user_vectors,
)

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


# ------------------------------------------------------------------- build files

PLAN_FILE = "_plan.json"                 # scratch files of the build, removed before publish
TEMPLATE_FILE = "_template.faiss"
QUERIES_FILE = "_gate-queries.npy"
OFFSETS_FILE = "_gate-offsets.npy"
EXACT_FILE = "_exact-{:03d}.npz"
DONE_FILE = "_shard-{:03d}.json"         # written last by a shard's task: the shard is whole
STAGES = ("all", "plan", "fill", "finish")
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"   # set in each pod of a Kubernetes Indexed Job


@dataclass(frozen=True)
class BuildPlan:
    """What `plan` decided (_plan.json): every shard task and `finish` read it, so the
    stages of one build agree whatever flags they are given."""

    build_id: str           # fresh per plan: finish accepts only shards filled for it
    ds: str
    model_version: str
    factory: str
    n_items: int
    n: int                  # N of the gate's recall@N = the exact top k per gate query
    dim: int
    spans: list[list[list]]  # per shard, its rows: [[file in items/, row group, start, stop]]
    users: int              # users sampled for the gate
    config: dict[str, Any]  # the IndexConfig used (JSON values)
    started_at: float       # time.time() at the start of the build
    planned_at: float       # ... once the template was written
    train_seconds: float

    def settings(self) -> IndexConfig:
        return IndexConfig(**self.config)

    @property
    def n_shards(self) -> int:
        return len(self.spans)

    def shard_spans(self) -> list[tuple[RowSpan, ...]]:
        return [tuple(RowSpan(*span) for span in shard) for shard in self.spans]


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard's worker needs (paths, so that it pickles small)."""

    items_dir: str      # embeddings/ds=<ds>/items
    model_version: str  # every item must carry it
    work_dir: str       # the build folder: template and gate queries in, shard out
    shard: int
    n_shards: int
    spans: tuple[RowSpan, ...]  # the shard's rows of the items table (files relative to it)
    k: int              # exact top k per gate query
    threads: int = 0    # FAISS OpenMP threads; 0 = leave FAISS's default
    build_id: str = ""  # the plan's, written into the shard's done file


def fill_shard_task(task: ShardTask) -> dict[str, Any]:
    """Fill one shard from its items and answer the gate's queries exactly over them.

    Writes <work_dir>/shard-NNN.faiss and _exact-NNN.npz (scores, ids (Q, k')), each
    atomically, then _shard-NNN.json {build_id, file, items, bytes, seconds}, which
    it returns: a task killed at any point leaves no done file, a rerun replaces all
    three. Memory: this shard's items plus one record batch.
    """
    t0 = time.perf_counter()
    if task.threads:
        faiss.omp_set_num_threads(task.threads)
    work = Path(task.work_dir)
    (work / DONE_FILE.format(task.shard)).unlink(missing_ok=True)  # not whole until rewritten
    idx, vectors, versions = read_item_spans(task.items_dir, task.spans,
                                             threads=task.threads != 1)
    check_version(task.items_dir, versions, task.model_version)
    shard = ix.fill_shard(faiss.read_index(str(work / TEMPLATE_FILE)), vectors, idx)
    path = work / ix.SHARD_FILE.format(task.shard)
    with atomic_path(path) as tmp:
        faiss.write_index(shard, str(tmp))
    queries = np.load(work / QUERIES_FILE)  # (Q, D)
    if len(idx):
        with threadpool_limits(task.threads or None):  # numpy's BLAS: the task's share too
            D, I = ix.exact_topk(vectors, idx, queries, task.k)
    else:  # an empty shard answers nothing
        D, I = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    with atomic_path(work / EXACT_FILE.format(task.shard)) as tmp, open(tmp, "wb") as f:
        np.savez(f, D=D, I=I)  # a file object: np.savez would append .npz to the name
    seconds = time.perf_counter() - t0
    log.info("shard %d/%d: %d items in %.1fs", task.shard + 1, task.n_shards, len(idx), seconds)
    result = {"file": path.name, "items": int(len(idx)), "bytes": path.stat().st_size,
              "seconds": round(seconds, 2)}
    write_json(work / DONE_FILE.format(task.shard), {"build_id": task.build_id, **result})
    return result


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


def write_inputs(work_dir: Path, template: faiss.Index, queries: np.ndarray) -> None:
    """What every shard task reads: the trained, empty index and the gate's queries (Q, D)."""
    faiss.write_index(template, str(work_dir / TEMPLATE_FILE))
    np.save(work_dir / QUERIES_FILE, np.ascontiguousarray(queries, dtype=np.float32))


def fill_shards(items_dir: Path, model_version: str, work_dir: Path,
                spans: Sequence[tuple[RowSpan, ...]], k: int, workers: int, *,
                threads: int | None = None, build_id: str = "") -> None:
    """Every shard's task (shard s reads `spans[s]`), in `workers` processes, each with
    `threads` FAISS threads (default: its share of the cores; 1 worker runs here with
    FAISS's default)."""
    n_shards = len(spans)
    workers = max(1, min(workers, n_shards))
    if threads is None:
        threads = 0 if workers == 1 else max(1, usable_cores() // workers)
    run_shard_tasks([ShardTask(str(items_dir), model_version, str(work_dir), s, n_shards,
                               spans[s], k, threads, build_id) for s in range(n_shards)],
                    workers)


def collect_shards(work_dir: Path, n_shards: int, k: int, build_id: str = ""
                   ) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    """The shards' [{file, items, bytes, seconds}] and the exact top k of the gate's queries
    over all items, merged from their answers. FileNotFoundError naming every shard that
    is not whole: no done file of this build, or a shard file other than the one it wrote."""
    files = [shard_done(work_dir, s, build_id) for s in range(n_shards)]
    missing = [s for s, f in enumerate(files) if f is None]
    if missing:
        raise FileNotFoundError(
            f"{work_dir}: shard(s) {', '.join(map(str, missing))} of {n_shards} not filled "
            f"(or not completely): run `--stage fill --shard I` for each, then finish again")
    parts = []
    for s in range(n_shards):
        with np.load(work_dir / EXACT_FILE.format(s)) as z:
            parts.append((z["D"], z["I"]))
    return files, ix.merge_topk(parts, k)


def shard_done(work_dir: Path, shard: int, build_id: str) -> dict[str, Any] | None:
    """Shard `shard`'s result if its task completed for `build_id`, else None."""
    done = work_dir / DONE_FILE.format(shard)
    if not done.is_file():
        return None
    result = json.loads(done.read_text())
    path = work_dir / result.pop("file")
    if (result.pop("build_id") != build_id or not path.is_file()
            or path.stat().st_size != result["bytes"]
            or not (work_dir / EXACT_FILE.format(shard)).is_file()):
        return None
    return {"file": path.name, **result}


def remove_scratch(work_dir: Path, keep: set[str]) -> None:
    """Only `keep` stays in `work_dir`: the build's scratch files, and a killed writer's
    temporary files, are never published."""
    for p in work_dir.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def build_files(items_dir: Path, model_version: str, template: faiss.Index,
                queries: np.ndarray, k: int, work_dir: Path, n_shards: int, workers: int, *,
                threads: int | None = None
                ) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    """The fill of a build without its plan and gate (bench.bench_index_build): every shard
    into `work_dir` (`fill_shards`); returns the shards' [{file, items, bytes, seconds}] and
    the exact top k of `queries` (Q, D) over all items. Only the shard files stay."""
    write_inputs(work_dir, template, queries)
    spans = plan_spans(item_row_groups(items_dir), n_shards)
    fill_shards(items_dir, model_version, work_dir, spans, k, workers, threads=threads)
    files, exact = collect_shards(work_dir, n_shards, k)
    remove_scratch(work_dir, {f["file"] for f in files})
    return files, exact


# --------------------------------------------------------------------------------- stages


def embeddings_version(layout: DataLayout, ds: str) -> str:
    """The model version of embeddings/ds=<ds> (its items and users carry it)."""
    return read_manifest(layout.embeddings(ds))["model_version"]


def prepare(cfg: IndexConfig) -> tuple[BuildPlan, faiss.Index, np.ndarray, np.ndarray]:
    """Everything up to the shards, in memory (nothing is written): count the items, sample
    the gate's users, check the resources, train the template. Returns the plan, the
    template, the gate's queries (Q, D) and each user's offsets into them (U+1,)."""
    layout, t0 = DataLayout(cfg.data_root), time.time()
    emb_dir = layout.embeddings(cfg.ds)
    version = embeddings_version(layout, cfg.ds)
    items_dir = emb_dir / "items"

    log.info("[1/4] counting items, sampling users' vectors from %s", emb_dir)
    row_groups = item_row_groups(items_dir)  # footers only
    n_items = sum(rows for *_, rows in row_groups)
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
    log.info("[2/4] building %s over %d items (d=%d): trained on %d, %d shard(s)", factory,
             n_items, dim, len(sample), cfg.n_shards)
    template = ix.train_template(sample, factory, seed=cfg.seed)
    plan = BuildPlan(
        build_id=uuid.uuid4().hex, ds=cfg.ds, model_version=version, factory=factory,
        n_items=int(n_items), n=int(n), dim=int(dim),
        spans=[[list(astuple(sp)) for sp in shard]
               for shard in plan_spans(row_groups, cfg.n_shards)],
        users=len(users), config=config_record(cfg),
        started_at=t0, planned_at=0.0, train_seconds=round(time.time() - t_build, 2))
    return plan, template, queries, offsets


def write_plan(work_dir: Path, plan: BuildPlan, template: faiss.Index, queries: np.ndarray,
               offsets: np.ndarray) -> BuildPlan:
    """The plan's files in `work_dir`, _plan.json last: a plan that is there is whole."""
    write_inputs(work_dir, template, queries)
    np.save(work_dir / OFFSETS_FILE, offsets)
    plan = replace(plan, planned_at=time.time())
    write_json(work_dir / PLAN_FILE, asdict(plan))
    return plan


def read_plan(work_dir: Path, cfg: IndexConfig) -> BuildPlan:
    """The plan in `work_dir`, checked against this run: its ds, and the model version of
    the embeddings now (a plan for replaced embeddings would mix two models)."""
    path = work_dir / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{work_dir}: no build plan ({PLAN_FILE}) for ds={cfg.ds}: "
                                f"run `--stage plan` first")
    try:
        plan = BuildPlan(**json.loads(path.read_text()))
    except TypeError:  # fields added or dropped since it was written
        raise ValueError(f"{path} is not a plan of this version: run `--stage plan` again") \
            from None
    conflicts = plan_conflicts(cfg, plan)
    if conflicts:  # fill and finish use the plan's: a different flag would be ignored
        raise ValueError(f"{path} was planned with {', '.join(conflicts)}: fill and finish "
                         f"take every setting from the plan (drop the flag, or plan again)")
    version = embeddings_version(DataLayout(cfg.data_root), cfg.ds)
    if (plan.ds, plan.model_version) != (cfg.ds, version):
        raise ValueError(f"{work_dir}: the plan is for ds={plan.ds}, model {plan.model_version}, "
                         f"not ds={cfg.ds}, model {version}: run `--stage plan` again")
    return plan


def plan_conflicts(cfg: IndexConfig, plan: BuildPlan) -> list[str]:
    """'--FLAG X (given: Y)' for each setting given on this command line (not its default)
    that differs from the plan's."""
    default = config_record(IndexConfig(data_root=cfg.data_root, ds=cfg.ds))
    out = []
    for k, v in config_record(cfg).items():
        if k in ("data_root", "ds", "workers") or v == default[k]:
            continue
        if plan.config.get(k) != v:
            flag = "--shards" if k == "n_shards" else f"--{k.replace('_', '-')}"
            out.append(f"{flag} {plan.config.get(k)} (given: {v})")
    return out


def finish_build(work_dir: Path, plan: BuildPlan) -> dict[str, Any]:
    """Check the filled shards in `work_dir` and write their manifest: the shards' exact
    answers merged, the recall gate over the files written (searched like in serving),
    then only the shards and manifest.json left. Raises QualityGateError below the gate."""
    cfg, t_fill_end = plan.settings(), time.time()
    files, (exact_D, exact_I) = collect_shards(work_dir, plan.n_shards, plan.n, plan.build_id)
    if sum(f["items"] for f in files) != plan.n_items:
        raise ValueError(f"{work_dir}: the shards hold {sum(f['items'] for f in files)} items, "
                         f"the table {plan.n_items} (duplicate item_idx?)")
    queries, offsets = np.load(work_dir / QUERIES_FILE), np.load(work_dir / OFFSETS_FILE)
    users = [queries[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    # from here on, what is checked is what was written
    loaded = ix.read_shards(work_dir, [f["file"] for f in files])
    index = ix.combine(loaded, merge=True)  # searched as CPU serving searches it
    n = plan.n
    log.info("[3/4] recall gate: %d users, recall@%d >= %s", plan.users, n, cfg.recall_threshold)
    t_gate = time.time()
    exact = ix.users_hits(exact_D, exact_I, offsets, n)
    params, recall, tried = ix.tune(index, loaded[0], users, exact, n, cfg.recall_threshold,
                                    value=cfg.nprobe, max_value=cfg.max_nprobe)
    if recall < cfg.recall_threshold:
        raise QualityGateError(recall, cfg.recall_threshold, n,
                               f"{plan.factory}, {params or 'exact'}, {plan.users} users; tried "
                               f"{tried}")
    fill_s = t_fill_end - plan.planned_at  # wall time of the fill, however it was run
    manifest = {
        "ds": plan.ds, "model_version": plan.model_version, "metric": "inner_product",
        "ids": "item_idx", "dim": plan.dim, "items": plan.n_items, "factory": plan.factory,
        "exact": ix.is_exact(loaded[0]), "n_shards": len(files),
        "shards": [{k: f[k] for k in ("file", "items", "bytes")} for f in files],
        "bytes": sum(f["bytes"] for f in files), "search_params": params,
        "recall": {"n": n, "value": round(recall, 5), "threshold": cfg.recall_threshold,
                   "users": plan.users, "tried": tried,
                   "seconds": round(time.time() - t_gate, 2)},
        "faiss_version": faiss.__version__,
        "seconds": {"train": plan.train_seconds, "fill": round(fill_s, 2),
                    "build": round(plan.train_seconds + fill_s, 2),
                    "shards": [f["seconds"] for f in files],
                    "total": round(time.time() - plan.started_at, 2)},
        "config": plan.config,
    }
    log.info("[4/4] writing the manifest of %d shard(s)", len(files))
    remove_scratch(work_dir, {f["file"] for f in files})
    write_json(work_dir / MANIFEST, manifest)
    return manifest


def run(cfg: IndexConfig) -> dict[str, Any]:
    """Build, check and write index/ds=<ds> in this process (`--stage all`): the stages'
    functions in a staged folder. Returns the manifest. Raises QualityGateError."""
    plan, template, queries, offsets = prepare(cfg)
    layout = DataLayout(cfg.data_root)
    final = layout.index(cfg.ds)
    with staged_dir(final) as tmp:
        plan = write_plan(tmp, plan, template, queries, offsets)
        del template
        fill_shards(layout.item_embeddings(cfg.ds), plan.model_version, tmp, plan.shard_spans(),
                    plan.n, cfg.workers, build_id=plan.build_id)
        manifest = finish_build(tmp, plan)
    log_done(manifest, final)
    return manifest


def run_plan(cfg: IndexConfig) -> BuildPlan:
    """`--stage plan`: a fresh build folder with the plan (a rerun starts the build over)."""
    plan, template, queries, offsets = prepare(cfg)
    work = fresh_dir(DataLayout(cfg.data_root).index_build(cfg.ds))
    plan = write_plan(work, plan, template, queries, offsets)
    log.info("planned %s over %d items in %d shard(s): %s", plan.factory, plan.n_items,
             plan.n_shards, work)
    return plan


def run_fill(cfg: IndexConfig, shard: int | None = None) -> dict[str, Any]:
    """`--stage fill`: shard `shard` (else JOB_COMPLETION_INDEX) of the planned build."""
    layout = DataLayout(cfg.data_root)
    work = layout.index_build(cfg.ds)
    plan = read_plan(work, cfg)
    shard = shard_number(shard, plan.n_shards, work)
    return fill_shard_task(ShardTask(str(layout.item_embeddings(cfg.ds)), plan.model_version,
                                     str(work), shard, plan.n_shards, plan.shard_spans()[shard],
                                     plan.n, build_id=plan.build_id))


def shard_number(shard: int | None, n_shards: int, work_dir: Path) -> int:
    """--shard, else the pod's index in a Kubernetes Indexed Job; within the plan's shards."""
    if shard is None:
        value = os.environ.get(JOB_INDEX_ENV, "")
        if not value.strip().isdigit():
            raise ValueError(f"--stage fill needs --shard I or {JOB_INDEX_ENV} (set by a "
                             f"Kubernetes Indexed Job), got {JOB_INDEX_ENV}={value!r}")
        shard = int(value)
    if not 0 <= shard < n_shards:
        raise ValueError(f"--shard {shard} is out of range: the plan in {work_dir} has "
                         f"{n_shards} shard(s), 0..{n_shards - 1}")
    return shard


def run_finish(cfg: IndexConfig) -> dict[str, Any]:
    """`--stage finish`: gate the filled build and publish it as index/ds=<ds> (one rename,
    the build folder becomes the index). A failed gate removes the build: nothing is
    published and nothing is left; a missing shard keeps it, to fill that shard again."""
    layout = DataLayout(cfg.data_root)
    work, final = layout.index_build(cfg.ds), layout.index(cfg.ds)
    plan = read_plan(work, cfg)
    try:
        manifest = finish_build(work, plan)
    except QualityGateError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish_dir(work, final)
    log_done(manifest, final)
    return manifest


def log_done(m: dict[str, Any], final: Path) -> None:
    log.info("ds=%s: %s over %d items in %d shard(s), recall@%d = %.4f %s, %.1fs -> %s",
             m["ds"], m["factory"], m["items"], m["n_shards"], m["recall"]["n"],
             m["recall"]["value"], m["search_params"], m["seconds"]["total"], final)


def parse_args(argv: list[str] | None = None) -> tuple[IndexConfig, str, int | None]:
    """(settings, stage, shard) from the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = IndexConfig(data_root=Path("."), ds="2000-01-01")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--ds", required=True)
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="all: the whole build here; plan, fill, finish: one stage of a build "
                        "run by several processes (fill and finish use the plan's settings)")
    p.add_argument("--shard", type=int, default=None,
                   help=f"with --stage fill: the shard to fill (default: ${JOB_INDEX_ENV})")
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
    a = vars(p.parse_args(argv))
    stage, shard = a.pop("stage"), a.pop("shard")
    if shard is not None and stage != "fill":
        raise ValueError(f"--shard goes with --stage fill, not --stage {stage}")
    return IndexConfig(**a), stage, shard


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg, stage, shard = parse_args(argv)
    layout = DataLayout(cfg.data_root)
    if stage == "plan":
        plan = run_plan(cfg)
        print(f"ds={cfg.ds}: planned {plan.factory} over {plan.n_items:,} items in "
              f"{plan.n_shards} shard(s) -> {layout.index_build(cfg.ds)}")
        return 0
    if stage == "fill":
        r = run_fill(cfg, shard)
        print(f"ds={cfg.ds}: {r['file']}: {r['items']:,} items, {r['bytes'] / 2**20:.1f} MiB "
              f"-> {layout.index_build(cfg.ds)}")
        return 0
    try:
        m = run(cfg) if stage == "all" else run_finish(cfg)
    except QualityGateError as e:  # a failed gate is not bad input: its own status
        log.error("%s", e)
        return 3
    print(f"ds={cfg.ds}: {m['factory']} over {m['items']:,} items, {m['n_shards']} shard(s), "
          f"{m['bytes'] / 2**20:.1f} MiB, recall@{m['recall']['n']} = {m['recall']['value']} "
          f"{m['search_params']} -> {layout.index(cfg.ds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
