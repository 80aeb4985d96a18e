"""The embedding job's executor side: flat vectors, part files written by the Python
workers (atomic, one per partition), the task profile and torch threads per task."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artefacts.layout import DataLayout
from bench.bench_index import make_sequences
from jobs import embed_users
from jobs.embed_users import EmbedConfig
from jobs.embed_users import run as embed
from mind_model.inference import interest_vectors, interest_vectors_flat
from schemas import PROFILE_COLUMNS

DS = "2026-11-28"
USERS = 300


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Sequences of USERS users (histories of 0-50 of 400 items) + a random MIND (d=64, K=4)."""
    r = tmp_path_factory.mktemp("embed") / "data"
    make_sequences(r, USERS, 400)
    return r


def latest_batches(root: Path, rows: int) -> list[pa.RecordBatch]:
    t = pq.read_table(DataLayout(root).sequences(DS) / "latest")
    return t.to_batches(max_chunksize=rows)


def job_kw(root: Path, batch_size: int = 64) -> dict:
    layout = DataLayout(root)
    return dict(model_path=str(layout.model_file(DS)), seq_dir=str(layout.sequences(DS)),
                version="v1", ds=DS, batch_size=batch_size)


def reference(root: Path) -> dict[str, np.ndarray]:
    """user_id -> its (K'_u, D) vectors from `interest_vectors` (a list per user)."""
    t = pq.read_table(DataLayout(root).sequences(DS) / "latest")
    model = embed_users.load_for_catalogue(DataLayout(root).model_file(DS),
                                           DataLayout(root).sequences(DS))
    hist = np.stack(t.column("hist").to_pylist()).astype(np.int64)
    vectors, _ = interest_vectors(model, hist, t.column("hist_len").to_numpy(),
                                  {c: t.column(c).to_numpy() for c in PROFILE_COLUMNS})
    return dict(zip(t.column("user_id").to_pylist(), vectors))


def test_flat_vectors_are_the_per_user_vectors_one_after_another(root):
    layout = DataLayout(root)
    model = embed_users.load_for_catalogue(layout.model_file(DS), layout.sequences(DS))
    t = pq.read_table(layout.sequences(DS) / "latest").slice(0, 50)
    hist = np.stack(t.column("hist").to_pylist()).astype(np.int64)
    hl, prof = t.column("hist_len").to_numpy(), {c: t.column(c).to_numpy() for c in PROFILE_COLUMNS}
    per_user, k = interest_vectors(model, hist, hl, prof)
    flat, k2 = interest_vectors_flat(model, hist, hl, prof, model.behaviour_table())
    assert set(k) == {1, 2, 3, 4} and np.array_equal(k, k2) and flat.flags.c_contiguous
    assert flat.dtype == np.float32 and flat.shape == (k.sum(), 64)
    np.testing.assert_allclose(flat, np.concatenate(per_user), rtol=1e-6, atol=1e-6)
    empty, k0 = interest_vectors_flat(model, hist[:0], hl[:0], {c: v[:0] for c, v in prof.items()})
    assert empty.shape == (0, 64) and k0.shape == (0,)
    assert interest_vectors(model, hist[:0], hl[:0], {c: v[:0] for c, v in prof.items()})[0] == []


def test_vectors_array_rows_are_each_users_vectors():
    flat = np.arange(12, dtype=np.float32).reshape(6, 2)  # 6 vectors, D = 2
    arr = embed_users.vectors_array(flat, np.array([1, 3, 2], np.int32))
    assert arr.to_pylist() == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]


def test_a_task_writes_its_part_file_and_a_summary(root, tmp_path):
    """Outside Spark (partition 0, attempt 0): the part file holds every user's reference
    vectors, the summary counts them, and a second attempt replaces the file with the same
    bytes, leaving no temporary file."""
    out = tmp_path / "users"
    out.mkdir()
    kw = job_kw(root, batch_size=64)
    (summary,) = embed_users.write_users(iter(latest_batches(root, 100)), out_dir=str(out), **kw)
    s = summary.to_pylist()[0]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["part-00000.parquet"] and s["file"] == files[0]
    t = pq.read_table(out / files[0])
    ref = reference(root)
    assert s["users"] == t.num_rows == USERS and sorted(t.column("user_id").to_pylist()) == \
        sorted(ref)
    for u, v in zip(t.column("user_id").to_pylist(), t.column("vectors").to_pylist()):
        np.testing.assert_allclose(np.array(v, np.float32), ref[u], rtol=1e-5, atol=1e-6)
    k = np.array([len(v) for v in ref.values()])
    assert s["users_by_k"] == np.bincount(k).tolist()
    assert s["torch_threads"] == 1 and s["loads"] >= 1 and s["cpu_s"] > 0
    assert s["forward_s"] > 0 and s["task_s"] >= s["forward_s"]
    first = (out / files[0]).read_bytes()
    list(embed_users.write_users(iter(latest_batches(root, 37)), out_dir=str(out), **kw))
    assert sorted(p.name for p in out.iterdir()) == files
    assert (out / files[0]).read_bytes() == first  # same rows, same batches of 64: same bytes


def test_a_failed_task_leaves_no_file(root, tmp_path):
    def broken():
        yield from latest_batches(root, 100)[:1]
        raise RuntimeError("executor lost")

    out = tmp_path / "users"
    out.mkdir()
    with pytest.raises(RuntimeError, match="executor lost"):
        list(embed_users.write_users(broken(), out_dir=str(out), **job_kw(root)))
    assert list(out.iterdir()) == []


@pytest.mark.spark
def test_job_profile_and_one_file_per_partition(root, spark, tmp_path):
    m = embed(EmbedConfig(data_root=root, ds=DS, batch_size=50, partitions=3), spark)
    users = DataLayout(root).user_vectors(DS)
    assert sorted(p.name for p in users.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    t = pq.read_table(users)
    assert t.num_rows == USERS and len(set(t.column("user_idx").to_pylist())) == USERS
    p = m["profile"]
    assert p["tasks"] == 3 and p["torch_threads_per_task"] == [m["task_cpus"]] == [1]
    assert 1 <= p["python_workers"] <= 2 and p["model_loads"] <= p["python_workers"]
    steps = p["task_seconds_by_step"]
    assert steps["forward"] > 0 and steps["task"] >= steps["forward"] + steps["write"]
    assert m["users_by_n_interests"] == {
        str(k): int(n) for k, n in enumerate(np.bincount(t.column("n_interests").to_numpy())) if n}


@pytest.mark.spark
@pytest.mark.slow
def test_torch_threads_per_task_follow_spark_task_cpus(root, tmp_path):
    """local[2] with spark.task.cpus=2: one task at a time, each with 2 intra-op threads."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.embed_users", "--data-root", str(root), "--ds", DS,
         "--master", "local[2]", "--partitions", "2", "--conf", "spark.task.cpus=2",
         "--conf", "spark.ui.showConsoleProgress=false"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((DataLayout(root).embeddings(DS) / "manifest.json").read_text())
    assert m["task_cpus"] == 2 and m["profile"]["torch_threads_per_task"] == [2]
    assert embed_users.QUICK_JIT in m["driver_java_options"]  # the JVM it started itself


def test_items_are_written_in_spread_order_each_run_a_sample_of_every_popularity(root, tmp_path):
    """The index's shards are runs of the items' rows: in item_idx order (most frequent
    first) the first shard would hold the popular items. Rows stay whole: id, idx and
    embedding of one item together."""
    import torch

    layout = DataLayout(root)
    model = embed_users.load_for_catalogue(layout.model_file(DS), layout.sequences(DS))
    embed_users.export_items(model, layout.sequences(DS), tmp_path / "items", version="v1",
                             ds=DS, chunk=64)
    got = pq.read_table(tmp_path / "items")
    want = pq.read_table(layout.sequences(DS) / "items", columns=["item_idx", "item_id"])
    idx = got.column("item_idx").to_numpy().astype(np.int64)
    assert sorted(zip(idx.tolist(), got.column("item_id").to_pylist())) == sorted(
        zip(want.column("item_idx").to_pylist(), want.column("item_id").to_pylist()))
    with torch.no_grad():
        ref = model.item_embeddings(torch.from_numpy(idx)).numpy()
    np.testing.assert_allclose(np.stack(got.column("embedding").to_pylist()), ref, rtol=1e-6)
    runs = np.array_split(idx, 4)  # 4 shards' rows
    spread = idx.max() - idx.min()
    assert all(abs(r.mean() - idx.mean()) < 0.1 * spread for r in runs)  # sorted: 0.375
    assert all(r.min() - idx.min() < 0.1 * spread and idx.max() - r.max() < 0.1 * spread
               for r in runs)


def test_quick_jit_only_for_a_driver_the_job_starts(monkeypatch):
    key = "spark.driver.extraJavaOptions"
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert embed_users.jvm_options({}) == {key: embed_users.QUICK_JIT}
    assert embed_users.jvm_options({key: "-Xss4m"}) == {}  # the caller's option wins
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")  # under spark-submit
    assert embed_users.jvm_options({}) == {}


