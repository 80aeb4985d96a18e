"""Spark job: every user's interest vectors + the active catalogue's item embeddings, for one ds.

    extract(spark, seq_dir)      LATEST_SEQUENCES: its schema checked, its files' row groups
                                 (footers read by Spark tasks) cut into P runs of equal rows
    transform(spark, plans, ...) one Spark task per run: it reads its rows with pyarrow, runs
                                 f_user of the trained model (the K'_u ACTIVE vectors per user,
                                 inactive ones dropped) and writes users/part-<partition>.parquet
    load                         items/ (driver, pyarrow), manifest.json (with the tasks'
                                 profile), all under <root>/embeddings/ds=<ds>/, published in
                                 one rename

On the executors, each Python worker loads the model once (a module-level cache
keyed by the checkpoint's path, mtime and size; Spark reuses Python workers across
tasks), maps the catalogue once through the routing map S (`MIND.behaviour_table`: a
batch then gathers S e_i instead of embedding and mapping every behaviour, about 30 %
less CPU per user, same vectors) and runs torch with as many threads as the task has
cores (`spark.task.cpus`; more would fight the other tasks' workers). Spark hands out
only the plan (which rows of which row groups a task owns): the task reads them with
pyarrow and writes Parquet from one numpy buffer per batch, so no user row passes
through the JVM. (A shuffle by user_idx feeding `mapInArrow` had to finish before any
model ran, and Spark's own writer converted every nested float to a JVM row: together
more CPU than the model.) Each task yields one summary row (users, K'_u counts, seconds
by step); the driver only collects those. The model is in eval mode, so routing is
deterministic: the same inputs give the same vectors (bit for bit with the same
settings; within float rounding whatever batch or partition a user lands in), and a
retried task reads the same rows and rewrites its part file whole. The data root must
be visible to the executors (as for every job's Parquet).

    python -m jobs.embed_users --data-root data --ds 2026-11-28 [--model PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from artefacts.cli import run_main
from artefacts.layout import MANIFEST, DataLayout
from artefacts.pointer import model_version
from artefacts.row_spans import RowSpan, plan_spans, read_spans, row_group_rows
from artefacts.storage import config_record, staged_dir, write_json
from artefacts.vectors import spread_order
from jobs.progress import Stage
from jobs.spark import add_spark_arguments, split_spark_arguments, start_spark
from jobs.validation import InputError, check_schema
from schemas import ITEM_EMBEDDINGS, LATEST_SEQUENCES, PROFILE_COLUMNS, UNK_IDX, USER_VECTORS

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """Parameters of the embedding job."""

    data_root: Path
    ds: str                           # the sequences' ds; output goes to embeddings/ds=<ds>
    model_path: Path | None = None    # default <root>/models/ds=<ds>/model.pt
    batch_size: int = 1024            # users per Arrow batch and per forward pass
    partitions: int | None = None     # default: max(parallelism, users / users_per_partition)
    users_per_partition: int = 50_000
    item_chunk: int = 1 << 18         # items embedded per step of the catalogue export
    master: str | None = None         # Spark master URL; None -> MIND_SPARK_MASTER or local[*]
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        self.layout.sequences(self.ds)  # validates ds
        if self.batch_size < 1 or self.users_per_partition < 1:
            raise ValueError(f"--batch-size ({self.batch_size}) and --users-per-partition "
                             f"({self.users_per_partition}) must be >= 1")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"--partitions must be >= 1, got {self.partitions}")

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_root)

    @property
    def model_file(self) -> Path:
        return Path(self.model_path) if self.model_path else self.layout.model_file(self.ds)


# ------------------------------------------------------------- executor side (per worker)

_MODELS: dict[tuple[str, int, int, str], Any] = {}  # one model per Python worker process
_LOADS = 0

ROW_GROUP_USERS = 16_384  # users per Parquet row group of a part file (~12 MB at K'=3, d=64)


def load_for_catalogue(path: str | Path, seq_dir: str | Path):
    """The model at `path` with its catalogue extended to the items of `seq_dir`: items
    newer than the model (in histories and in the index) count by their side features."""
    from mind_model.checkpoint import load_model
    from mind_model.data import load_meta
    from mind_model.inference import fit_catalogue

    model = load_model(path)
    meta = load_meta(seq_dir)
    added = fit_catalogue(model, meta.item_category, meta.item_brand)
    if added:
        log.info("%d item id(s) newer than the model are scored by their side features", added)
    return model


def cached_model(path: str, seq_dir: str):
    """`load_for_catalogue`, once per process (again if the model file changes)."""
    return _cached(path, seq_dir)[0]


def cached_model_and_table(path: str, seq_dir: str):
    """(model, its `behaviour_table()` (n_catalogue, D)), once per process."""
    return _cached(path, seq_dir)


def _cached(path: str, seq_dir: str):
    global _LOADS
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, str(seq_dir))
    entry = _MODELS.get(key)
    if entry is None:
        _MODELS.clear()  # a new checkpoint replaces the old one: keep one model in memory
        model = load_for_catalogue(path, seq_dir)
        entry = _MODELS[key] = (model, model.behaviour_table())
        _LOADS += 1
        log.info("pid %d loaded %s (load #%d)", os.getpid(), path, _LOADS)
    return entry


def model_loads() -> tuple[int, int]:
    """(pid, models loaded so far by this process): for tests of the per-worker cache."""
    return os.getpid(), _LOADS


def task_cpus() -> int:
    """Cores given to the running Spark task (1 outside a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return max(1, int(ctx.cpus())) if ctx is not None else 1


def task_attempt() -> tuple[int, int]:
    """(partition id, attempt number) of the running Spark task ((0, 0) outside a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return (ctx.partitionId(), ctx.attemptNumber()) if ctx is not None else (0, 0)


class Clock:
    """Wall seconds of this task by step, summed over the task's batches."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - t

    def timed(self, items: Iterator[Any], step: str) -> Iterator[Any]:
        """`items`, with the time spent waiting for each (the JVM feeding Arrow batches)."""
        it = iter(items)
        while True:
            with self(step):
                item = next(it, _END)
            if item is _END:
                return
            yield item


_END = object()


def _hist_matrix(col: pa.Array, rows: int) -> np.ndarray:
    """A list<int32> column of equal-length rows -> (rows, L) int64, without a Python loop."""
    flat = col.flatten().to_numpy(zero_copy_only=False)
    width = len(flat) // rows if rows else 0
    if rows and len(flat) == rows * width and (col.value_lengths().to_numpy() == width).all():
        return flat.reshape(rows, -1).astype(np.int64)
    raise ValueError("hist must hold exactly L ids in every row (padded), as LATEST_SEQUENCES does")


def vectors_array(flat: np.ndarray, k: np.ndarray) -> pa.ListArray:
    """Users' vectors one after another, (sum k, D), and k (B,) -> list<list<float32>>
    (user b: rows [sum k[:b], sum k[:b+1])), from the one buffer: no per-user objects."""
    dim = flat.shape[1]
    inner = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(flat, dtype=np.float32).reshape(-1)), dim
    ).cast(pa.list_(pa.float32()))
    offsets = pa.array(np.concatenate([[0], np.cumsum(k)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, inner)


def embed_batches(batches: Iterator[pa.RecordBatch], *, model_path: str, seq_dir: str,
                  version: str, ds: str, batch_size: int,
                  clock: Clock | None = None) -> Iterator[pa.RecordBatch]:
    """LATEST_SEQUENCES record batches -> USER_VECTORS record batches, one forward pass per
    `batch_size` users. Arrow in and out, no pandas: the nested vectors column is built
    from one numpy buffer and offsets, which matters at ~200 floats per user."""
    import torch

    from mind_model.inference import interest_vectors_flat

    clock = clock or Clock()
    torch.set_num_threads(task_cpus())  # one task per core: intra-op threads would fight
    with clock("load"):
        model, table = cached_model_and_table(model_path, seq_dir)
    schema = user_vectors_arrow_schema()
    for rb in batches:
        for start in range(0, rb.num_rows, batch_size):
            with clock("arrow"):
                b = rb.slice(start, batch_size)
                n, names = b.num_rows, b.schema.names
                hist = _hist_matrix(b.column(names.index("hist")), n)  # (B, L)
                profile = {c: b.column(names.index(c)).to_numpy(zero_copy_only=False)
                           for c in PROFILE_COLUMNS if c in names}
                hist_len = b.column(names.index("hist_len")).to_numpy(zero_copy_only=False)
            with clock("forward"):
                flat, k = interest_vectors_flat(model, hist, hist_len, profile, table)
            with clock("arrow"):
                out = pa.RecordBatch.from_arrays([
                    b.column(names.index("user_idx")).cast(pa.int32()),
                    b.column(names.index("user_id")).cast(pa.string()),
                    vectors_array(flat, k).cast(schema.field("vectors").type),
                    pa.array(k, pa.int32()),
                    pa.array([version] * n, pa.string()),
                    pa.array([ds] * n, pa.string()),
                ], schema=schema)
            yield out


@functools.lru_cache(maxsize=1)
def user_vectors_arrow_schema() -> pa.Schema:
    """USER_VECTORS as Spark writes it (not-null list elements): part files written here
    have the Parquet schema of a Spark-written folder."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(USER_VECTORS.spark_schema())


def write_users(batches: Iterator[pa.RecordBatch], *, out_dir: str, **embed_kw: Any
                ) -> Iterator[pa.RecordBatch]:
    """A task's body: its users' vectors -> <out_dir>/part-<partition>.parquet, written
    here by pyarrow; yields one summary row (`task_summary`).

    Writing in the Python worker skips the JVM's Arrow -> row conversion and its
    row-by-row Parquet writer of nested float lists, which cost more CPU than the model
    (see README). The file appears by an atomic rename, under a name that depends on the
    partition only: a retried or speculative attempt writes the same rows in the same
    order (its plan depends on the input files only, and f_user is deterministic) and
    replaces it whole. `out_dir` must be visible to the
    executors (as for every job's Parquet).
    """
    t0, c0, loads_before = time.perf_counter(), time.process_time(), _LOADS
    clock, (partition, attempt) = Clock(), task_attempt()
    final = Path(out_dir) / f"part-{partition:05d}.parquet"
    tmp = final.with_name(f".{final.name}.attempt-{attempt}.tmp")  # hidden: readers skip it
    schema = user_vectors_arrow_schema()
    users, by_k, pending = 0, np.zeros(0, np.int64), []
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for out in embed_batches(clock.timed(batches, "input"), clock=clock, **embed_kw):
                users += out.num_rows
                k = out.column(3).to_numpy()
                by_k = _add_counts(by_k, np.bincount(k))
                pending.append(out)
                if sum(b.num_rows for b in pending) >= ROW_GROUP_USERS:
                    with clock("write"):
                        writer.write_table(pa.Table.from_batches(pending, schema))
                    pending = []
            with clock("write"):
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, schema))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    yield task_summary(partition, final.name, users, by_k, clock,
                       time.perf_counter() - t0, time.process_time() - c0, loads_before)


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise a + b of two count vectors of possibly different lengths."""
    out = np.zeros(max(len(a), len(b)), np.int64)
    out[:len(a)] += a
    out[:len(b)] += b
    return out


def task_summary(partition: int, file: str, users: int, by_k: np.ndarray, clock: Clock,
                 task_s: float, cpu_s: float, loads_before: int = 0) -> pa.RecordBatch:
    """One row per task, collected by the driver: what the task wrote and where its time
    went (the job's profile, in the manifest). `loads`: models this Python worker has
    loaded in its life, `loads_before` of them before this task (workers outlive jobs)."""
    import torch

    sec = {s: [clock.seconds.get(s, 0.0)] for s in ("load", "input", "forward", "arrow",
                                                     "write")}
    return pa.RecordBatch.from_pydict({
        "partition": pa.array([partition], pa.int32()), "file": [file],
        "users": pa.array([users], pa.int64()),
        "users_by_k": pa.array([by_k.tolist()], pa.list_(pa.int64())),
        "torch_threads": pa.array([torch.get_num_threads()], pa.int32()),
        "pid": pa.array([os.getpid()], pa.int64()), "loads": pa.array([_LOADS], pa.int32()),
        "loads_before": pa.array([loads_before], pa.int32()),
        **{f"{s}_s": pa.array(v, pa.float64()) for s, v in sec.items()},
        "task_s": pa.array([task_s], pa.float64()), "cpu_s": pa.array([cpu_s], pa.float64()),
    })


# ------------------------------------------------------------------------------- extract


def extract(spark: SparkSession, seq_dir: Path) -> list[tuple[str, int, int]]:
    """The latest table's row groups in file order, (file, row group, rows), after its
    schema is checked. Footers are read by Spark tasks (one per file at most), not here."""
    import pyarrow.dataset as pads

    path = Path(seq_dir) / "latest"
    if not path.is_dir():
        raise InputError(f"{path} not found: run build_sequences for this ds first")
    check_schema(spark.read.parquet(str(path)).schema, LATEST_SEQUENCES, str(path))
    files = sorted(pads.dataset(str(path), format="parquet").files)  # hidden / _ files skipped
    if not files:
        return []
    sc = spark.sparkContext
    return sc.parallelize(files, min(len(files), 4 * sc.defaultParallelism)).flatMap(
        row_group_rows).collect()


# ----------------------------------------------------------------------------- transform


def embed_task(part: Iterator[tuple[int, list[RowSpan]]], *, out_dir: str,
               **embed_kw: Any) -> Iterator[dict[str, Any]]:
    """One partition of the plan: read its rows, write its part file, yield its summary."""
    for _, spans in part:
        batches = read_spans(spans, embed_kw["batch_size"], columns=LATEST_SEQUENCES.names)
        for summary in write_users(batches, out_dir=out_dir, **embed_kw):
            yield summary.to_pylist()[0]


def transform(spark: SparkSession, plans: list[list[RowSpan]], *, out_dir: str,
              model_path: str, seq_dir: str, version: str, ds: str,
              batch_size: int) -> list[dict[str, Any]]:
    """Run one task per plan (partition p writes part-<p>.parquet); returns the tasks'
    summaries. Only the plans (file names and row ranges) travel through Spark."""
    # By module name, not this module's globals: run as a script (`python -m`, spark-submit)
    # this module is __main__, whose functions cloudpickle ships by value, each task with a
    # fresh copy of the model cache. Imported by name, workers import it once and keep it.
    from jobs import embed_users as importable

    fn = functools.partial(importable.embed_task, out_dir=out_dir, model_path=model_path,
                           seq_dir=seq_dir, version=version, ds=ds, batch_size=batch_size)
    return spark.sparkContext.parallelize(list(enumerate(plans)), len(plans)).mapPartitions(
        fn).collect()  # one small dict per partition


def task_profile(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The users stage's TASK_SUMMARY rows -> the manifest's profile: seconds by step summed
    over tasks, Python workers, model loads, torch threads per task."""
    steps = ("load", "input", "forward", "arrow", "write", "task")
    return {"tasks": len(tasks), "python_workers": len({t["pid"] for t in tasks}),
            "model_loads": sum(  # by this job: a reused worker may have loaded others before
                max(t["loads"] for t in mine) - min(t["loads_before"] for t in mine)
                for mine in ([t for t in tasks if t["pid"] == pid]
                             for pid in {t["pid"] for t in tasks})),
            "torch_threads_per_task": sorted({t["torch_threads"] for t in tasks}),
            "task_seconds_by_step": {s: round(sum(t[f"{s}_s"] for t in tasks), 2)
                                     for s in steps},
            "task_cpu_seconds": round(sum(t["cpu_s"] for t in tasks), 2)}


# ---------------------------------------------------------------------------------- load


def export_items(model, seq_dir: Path, out_dir: Path, *, version: str, ds: str,
                 chunk: int) -> dict[str, int]:
    """Embeddings of today's active items (ITEM_EMBEDDINGS) in one Parquet file: every
    item, rare ones and ones newer than the model included (`model` is extended to the
    catalogue by `load_for_catalogue`; those items are embedded through their side ids).
    Rows in `spread_order`: each run of rows (an index shard) is a sample of every
    popularity."""
    import torch

    items = pq.read_table(Path(seq_dir) / "items", columns=["item_idx", "item_id"])
    idx = items.column("item_idx").to_numpy().astype(np.int64)
    order = spread_order(idx)
    items, idx = items.take(order), idx[order]
    if len(idx) and idx.max() >= model.n_catalogue:  # cannot happen after load_for_catalogue
        raise ValueError(f"{seq_dir}/items has ids beyond the model's catalogue")
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = ITEM_EMBEDDINGS.arrow_schema()
    with pq.ParquetWriter(out_dir / "part-00000.parquet", schema) as writer:
        for start in range(0, len(idx), chunk):
            ids = idx[start:start + chunk]
            with torch.inference_mode():
                emb = model.item_embeddings(torch.from_numpy(ids)).float().numpy()  # (C, D)
            n, d = emb.shape
            writer.write_table(pa.table({
                "item_idx": pa.array(ids.astype(np.int32)),
                "item_id": items.column("item_id").slice(start, n).combine_chunks(),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(emb.reshape(-1)), d).cast(pa.list_(pa.float32())),
                "model_version": pa.array([version] * n, pa.string()),
                "ds": pa.array([ds] * n, pa.string()),
            }, schema=schema))
    return {"items": int(len(idx)), "items_newer_than_model": int((idx >= model.cfg.n_items).sum()),
            "items_sharing_unknown_id": int((model.items.item_row[torch.from_numpy(idx)]
                                             == UNK_IDX).sum())}


# ----------------------------------------------------------------------------------- run


def run(cfg: EmbedConfig, spark: SparkSession | None = None) -> dict[str, Any]:
    """Compute embeddings/ds=<ds>/; returns the manifest written there."""
    layout, t0 = cfg.layout, time.time()
    stage = Stage(4, log)
    stage("checking inputs")
    seq_dir, model_file = layout.sequences(cfg.ds), cfg.model_file.resolve()
    if not model_file.is_file():
        raise InputError(f"model {model_file} not found: train the model for ds={cfg.ds} first "
                         f"(or pass --model)")
    if not (seq_dir / "latest").is_dir():
        raise InputError(f"{seq_dir / 'latest'} not found: run build_sequences for "
                         f"ds={cfg.ds} first")
    version = model_version(model_file)
    model = load_for_catalogue(model_file, seq_dir)  # fails here, before executors, if unreadable
    check_batch_memory(cfg.batch_size, model.cfg)
    t_spark = time.time()
    spark = spark or start_spark("mind-embed-users", cfg.master,
                                 {**jvm_options(cfg.spark_conf), **cfg.spark_conf})
    spark_s = time.time() - t_spark  # ~0 when the caller passes a running session
    groups = extract(spark, seq_dir)
    n_users = sum(rows for *_, rows in groups)
    if n_users == 0:
        raise InputError(f"{seq_dir / 'latest'} holds no users")
    partitions = cfg.partitions or max(spark.sparkContext.defaultParallelism,
                                       math.ceil(n_users / cfg.users_per_partition))
    log.info("ds=%s: %d users, model %s (%s), %d partition(s), batches of %d", cfg.ds, n_users,
             version, model_file, partitions, cfg.batch_size)
    with staged_dir(layout.embeddings(cfg.ds)) as tmp:
        stage(f"user vectors of {n_users:,} users")
        (tmp / "users").mkdir()
        t_users = time.time()
        tasks = transform(spark, plan_spans(groups, partitions), out_dir=str(tmp / "users"),
                          model_path=str(model_file), seq_dir=str(seq_dir), version=version,
                          ds=cfg.ds, batch_size=cfg.batch_size)
        users_s = time.time() - t_users
        hist = users_by_k(tasks)
        if sum(hist.values()) != n_users:  # cannot happen unless a batch lost rows
            raise AssertionError(f"{sum(hist.values())} user vectors written for {n_users} users")

        stage("item embeddings of the active catalogue")
        t_items = time.time()
        item_counts = export_items(model, seq_dir, tmp / "items", version=version, ds=cfg.ds,
                                   chunk=cfg.item_chunk)
        manifest = {
            "ds": cfg.ds, "model_version": version, "model": str(model_file),
            "dim": model.cfg.embed_dim, "n_interests_max": model.cfg.n_interests,
            "users": n_users, "vectors": sum(k * n for k, n in hist.items()),
            "users_by_n_interests": {str(k): hist[k] for k in sorted(hist)},
            **item_counts,
            "partitions": partitions, "input_row_groups": len(groups),
            "batch_size": cfg.batch_size,
            "task_cpus": int(spark.sparkContext.getConf().get("spark.task.cpus", "1")),
            "master": spark.sparkContext.master,
            "driver_java_options": spark.sparkContext.getConf().get(
                "spark.driver.extraJavaOptions", ""),
            "seconds": {"spark_start": round(spark_s, 2), "users": round(users_s, 2),
                        "items": round(time.time() - t_items, 2),
                        "total": round(time.time() - t0, 2)},
            "users_per_second": round(n_users / max(users_s, 1e-9), 1),  # the users stage
            "profile": task_profile(tasks),
            "config": config_record(cfg),
        }
        stage("manifest")
        write_json(tmp / MANIFEST, manifest)
    log.info("ds=%s: %d users -> %d vectors (%s), %d items, in %.1fs -> %s", cfg.ds, n_users,
             manifest["vectors"], manifest["users_by_n_interests"], manifest["items"],
             time.time() - t0, layout.embeddings(cfg.ds))
    return manifest


# The JVM only feeds Arrow batches here (the model and the writer run in Python): C2's
# compilations cost ~4.4 of 17 CPU seconds on 200k users and made nothing faster.
QUICK_JIT = "-XX:TieredStopAtLevel=1"


def jvm_options(conf: dict[str, str]) -> dict[str, str]:
    """spark.driver.extraJavaOptions for a driver this job starts itself: C1 JIT only,
    unless the caller sets the option (under spark-submit the JVM is already running)."""
    from jobs.spark import under_spark_submit

    key = "spark.driver.extraJavaOptions"
    return {} if under_spark_submit() or key in conf else {key: QUICK_JIT}


def users_by_k(tasks: list[dict[str, Any]]) -> dict[int, int]:
    """{K'_u: users} summed over the tasks' `users_by_k` counts (index = K'_u)."""
    out: dict[int, int] = {}
    for t in tasks:
        for k, n in enumerate(t["users_by_k"]):
            if n:
                out[k] = out.get(k, 0) + int(n)
    return out


def check_batch_memory(batch_size: int, mcfg, available: int | None = None) -> None:
    """Refuse a --batch-size whose forward pass would not fit in this machine's memory.

    One pass holds about batch x L x d floats per behaviour embedding and per routing
    copy of each of the K interests (x2 for the routing temporaries): an estimate, with
    half the available memory as the limit (the Python workers of Spark run on it too).
    """
    need = batch_size * mcfg.max_len * mcfg.embed_dim * 4 * (mcfg.n_interests + 2) * 2
    available = psutil.virtual_memory().available if available is None else available
    if need > available // 2:
        raise ValueError(f"--batch-size {batch_size} needs about {need / 2**30:.1f} GiB per "
                         f"forward pass (L={mcfg.max_len}, d={mcfg.embed_dim}, "
                         f"K={mcfg.n_interests}), more than half of the "
                         f"{available / 2**30:.1f} GiB available: use a smaller --batch-size")


def parse_args(argv: list[str] | None = None) -> EmbedConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = EmbedConfig(data_root=Path("."), ds="2000-01-01")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--ds", required=True, help="ds of the sequences (YYYY-MM-DD)")
    p.add_argument("--model", dest="model_path", type=Path, default=None,
                   help="checkpoint (default <root>/models/ds=<ds>/model.pt)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument("--users-per-partition", type=int, default=d.users_per_partition)
    add_spark_arguments(p)
    options, conf = split_spark_arguments(p.parse_args(argv))
    return EmbedConfig(**options, spark_conf=conf)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = parse_args(argv)
    m = run(cfg)
    print(f"ds={cfg.ds}: {m['users']:,} users -> {m['vectors']:,} interest vectors "
          f"{m['users_by_n_interests']}, {m['items']:,} item embeddings, model "
          f"{m['model_version']}, {m['users_per_second']:,.0f} users/s "
          f"-> {cfg.layout.embeddings(cfg.ds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
