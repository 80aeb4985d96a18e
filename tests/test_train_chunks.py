"""Training data as sequence chunks: the samples the reader yields over one pass equal,
as a multiset, the per-position samples computed by brute force from the raw events."""
from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingest.sample_data import generate
from jobs.build_sequences import PrepConfig, run
from mind_model.data import expand_chunks, read_train
from mind_model.reader import shard_samples, shuffled_batches, train_batches
from schemas import PAD_IDX, PROFILE_COLUMNS
from tests.conftest import import_beauty

pytestmark = pytest.mark.spark

KEY = ("event_time", "item_idx", "behavior")  # the job's order of a user's events


def reference_samples(root: Path, out: Path, max_len: int, min_user: int) -> Counter:
    """(user_idx, hist, hist_len, target, *profile ids) of every position t >= 1 of every
    training user, from the raw events with pandas (well-formed logs: no quarantine)."""
    ev = pd.read_parquet(root / "raw" / "events")
    ev["behavior"] = ev["behavior"].str.strip().str.lower()
    cols = ["user_id", "item_id", "category_id", "brand_id", "behavior", "event_time"]
    ev = ev.drop_duplicates(cols)
    ev = ev[ev.groupby("user_id")["user_id"].transform("size") >= min_user]
    item = pd.read_parquet(out / "vocab" / "item").set_index("value")["idx"]
    users = pd.read_parquet(out / "users").set_index("user_id")
    ev = ev.assign(item_idx=ev["item_id"].map(item))
    ev = ev[ev["user_id"].map(users["split"]) == "train"].sort_values(["user_id", *KEY])
    want: Counter = Counter()
    for user, seq in ev.groupby("user_id", sort=False)["item_idx"]:
        seq, u = seq.tolist(), users.loc[user]
        profile = tuple(int(u[c]) for c in PROFILE_COLUMNS)
        for t in range(1, len(seq)):
            h = seq[max(0, t - max_len):t]
            want[(int(u["user_idx"]), tuple(h + [PAD_IDX] * (max_len - len(h))), len(h),
                  seq[t], *profile)] += 1
    return want


def as_counter(cols: dict) -> Counter:
    return Counter(zip(cols["user_idx"].tolist(), map(tuple, cols["hist"].tolist()),
                       cols["hist_len"].tolist(), cols["target"].tolist(),
                       *(cols[c].tolist() for c in PROFILE_COLUMNS)))


def one_pass_of_reader(train_dir: Path, world_size: int, context: str = "past") -> Counter:
    """Every rank's stream for exactly its shard's number of samples (batch size 1)."""
    got: Counter = Counter()
    for rank in range(world_size):
        n = shard_samples(train_dir, rank, world_size)
        with contextlib.closing(train_batches(train_dir, rank=rank, world_size=world_size,
                                              batch_size=1, seed=11, shuffle_buffer=500,
                                              context=context)) as it:
            batches = [next(it) for _ in range(n)]
        got += as_counter({k: np.concatenate([b[k].numpy() for b in batches])
                           for k in batches[0]})
    return got


def check(root: Path, stats: dict, max_len: int, min_user: int) -> None:
    out = root / "sequences" / f"ds={stats['ds']}"
    want = reference_samples(root, out, max_len, min_user)
    assert sum(want.values()) == stats["train_samples"] > stats["train_chunks"]
    assert as_counter(read_train(out)) == want
    assert one_pass_of_reader(out / "train", 2) == want
    # the reader passes its context on: the same samples as expanding every chunk at once
    chunk_context = as_counter(read_train(out, "chunk"))
    assert chunk_context != want and sum(chunk_context.values()) == sum(want.values())
    assert one_pass_of_reader(out / "train", 2, "chunk") == chunk_context


def test_generated_logs(spark, tmp_path):
    generate(tmp_path / "raw", end_ds="2026-11-28", days=2, n_events=20_000, seed=5)
    stats = run(PrepConfig(data_root=tmp_path, ds="2026-11-28", lookback_days=2, max_len=8,
                           chunk_targets=5, min_row_groups=4), spark)
    check(tmp_path, stats, max_len=8, min_user=5)


@pytest.mark.slow
def test_amazon_beauty(spark, shared_datasets, tmp_path):
    ds = import_beauty(shared_datasets, tmp_path / "raw")
    stats = run(PrepConfig(data_root=tmp_path, ds=ds, lookback_days=1, min_row_groups=4), spark)
    check(tmp_path, stats, max_len=50, min_user=5)


def test_expand_chunks_by_hand():
    # one user 10..16 (7 events), L = 3, C = 2: targets 11 | 12 13 | 14 15 | 16
    chunks = {"user_idx": np.array([7, 7, 7, 7]), "hist_len": np.array([1, 2, 3, 3]),
              "hist": np.array([[10, 0, 0], [10, 11, 0], [11, 12, 13], [13, 14, 15]]),
              "targets": np.array([[11, 0], [12, 13], [14, 15], [16, 0]]),
              "n_targets": np.array([1, 2, 2, 1]),
              **{c: np.full(4, 1) for c in PROFILE_COLUMNS}}
    s = expand_chunks(chunks)
    assert s["target"].tolist() == [11, 12, 13, 14, 15, 16]
    assert s["hist_len"].tolist() == [1, 2, 3, 3, 3, 3]
    assert s["hist"].tolist() == [[10, 0, 0], [10, 11, 0], [10, 11, 12], [11, 12, 13],
                                  [12, 13, 14], [13, 14, 15]]


def test_expand_chunks_chunk_context_by_hand():
    # one user 10..16, L = 3, C = 3: targets 11 12 13 | 14 15 16; with context "chunk" a
    # target's history is the chunk's other items, those after it included (last 3 kept)
    chunks = {"user_idx": np.array([7, 7]), "hist_len": np.array([1, 3]),
              "hist": np.array([[10, 0, 0], [11, 12, 13]]),
              "targets": np.array([[11, 12, 13], [14, 15, 16]]),
              "n_targets": np.array([3, 3]),
              **{c: np.full(2, 1) for c in PROFILE_COLUMNS}}
    s = expand_chunks(chunks, "chunk")
    assert s["target"].tolist() == [11, 12, 13, 14, 15, 16]
    assert s["hist"].tolist() == [[10, 12, 13], [10, 11, 13], [10, 11, 12],
                                  [13, 15, 16], [13, 14, 16], [13, 14, 15]]
    assert s["hist_len"].tolist() == [3] * 6
    with pytest.raises(ValueError, match="context"):
        expand_chunks(chunks, "future")


@pytest.mark.parametrize("context", ["past", "chunk"])
def test_expand_chunks_against_brute_force(context):
    rng = np.random.default_rng(3)
    L, C, n = 5, 4, 400
    hist_len, n_t = rng.integers(0, L + 1, n), rng.integers(1, C + 1, n)
    hist, targets = np.zeros((n, L), np.int64), np.zeros((n, C), np.int64)
    want = []
    for i in range(n):
        h, t = rng.integers(2, 50, hist_len[i]), rng.integers(2, 50, n_t[i])
        hist[i, :hist_len[i]], targets[i, :n_t[i]] = h, t
        for j in range(n_t[i]):
            after = list(t[j + 1:]) if context == "chunk" else []
            ctx = (list(h) + list(t[:j]) + after)[-L:]
            want.append((i, tuple(ctx + [PAD_IDX] * (L - len(ctx))), len(ctx), int(t[j])))
    s = expand_chunks({"user_idx": np.arange(n), "hist": hist, "hist_len": hist_len,
                       "targets": targets, "n_targets": n_t,
                       **{c: np.zeros(n, np.int64) for c in PROFILE_COLUMNS}}, context)
    got = list(zip(s["user_idx"].tolist(), map(tuple, s["hist"].tolist()),
                   s["hist_len"].tolist(), s["target"].tolist()))
    assert got == want


def test_shuffle_buffer_yields_each_sample_once_and_mixes():
    parts = [{"target": np.arange(k * 100, (k + 1) * 100)} for k in range(10)]
    got = [int(x) for b in shuffled_batches(iter(parts), 7, 150, np.random.default_rng(0))
           for x in b["target"]]
    assert len(got) == 1000 // 7 * 7 and len(set(got)) == len(got)
    assert got[:100] != sorted(got[:100])
    ordered = [int(x) for b in shuffled_batches(iter(parts), 7, 0, None) for x in b["target"]]
    assert ordered == list(range(1000 // 7 * 7))
