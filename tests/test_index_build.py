"""The parallel index build's parts: shard assignment, shard-wise exact answers merged,
items read in parts and sampled, against brute force over the whole catalogue."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artefacts import index as ix
from artefacts.vectors import count_items, read_item_embeddings, read_item_part, sample_item_vectors
from schemas import ITEM_EMBEDDINGS

D = 8


def catalogue(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(2, 4 * n), n, replace=False)).astype(np.int64)
    return rng.standard_normal((n, D)).astype(np.float32), ids


def write_items(folder: Path, x: np.ndarray, ids: np.ndarray, *, files: int,
                version: str = "v1") -> Path:
    """ITEM_EMBEDDINGS in `files` Parquet files of shuffled rows (small row groups)."""
    folder.mkdir(parents=True)
    order = np.random.default_rng(7).permutation(len(ids))
    for f, rows in enumerate(np.array_split(order, files)):
        pq.write_table(pa.table({
            "item_idx": pa.array(ids[rows].astype(np.int32)),
            "item_id": pa.array([f"i{i}" for i in ids[rows]]),
            "embedding": pa.array([list(v) for v in x[rows]], pa.list_(pa.float32())),
            "model_version": pa.array([version] * len(rows)),
            "ds": pa.array(["2026-11-28"] * len(rows)),
        }, schema=ITEM_EMBEDDINGS.arrow_schema()), folder / f"part-{f:05d}.parquet",
            row_group_size=97)
    return folder


def test_build_shards_deals_items_by_id_modulo():
    x, ids = catalogue(500)
    shards = ix.build_shards(x, ids, "Flat", 3)
    for s, shard in enumerate(shards):
        held = faiss.vector_to_array(faiss.downcast_index(shard).id_map)
        assert np.array_equal(np.sort(held), ids[ids % 3 == s])


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_shards_exact_answers_merged_equal_brute_force(n_shards):
    x, ids = catalogue(2000)
    queries = np.random.default_rng(1).standard_normal((40, D)).astype(np.float32)
    k = 50
    where = ix.shard_of(ids, n_shards)
    parts = [ix.exact_topk(x[where == s], ids[where == s], queries, k) for s in range(n_shards)]
    got_D, got_I = ix.merge_topk(parts, k)
    # brute force in numpy over the whole catalogue
    scores = queries @ x.T
    ref = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert np.array_equal(got_I, ids[ref])
    np.testing.assert_allclose(got_D, np.take_along_axis(scores, ref, 1), rtol=1e-5, atol=1e-5)


def test_users_hits_from_merged_parts_equal_exact_multi_interest():
    x, ids = catalogue(1500)
    rng = np.random.default_rng(2)
    users = [rng.standard_normal((k, D)).astype(np.float32) for k in rng.integers(1, 5, 30)]
    queries, offsets = ix.flatten(users)
    where = ix.shard_of(ids, 4)
    parts = [ix.exact_topk(x[where == s], ids[where == s], queries, 30) for s in range(4)]
    got = ix.users_hits(*ix.merge_topk(parts, 30), offsets, 30)
    ref = ix.exact_multi_interest(x, ids, users, 30)
    for g, r in zip(got, ref):
        assert np.array_equal(g.ids, r.ids) and np.array_equal(g.interest, r.interest)


def test_items_read_in_parts(tmp_path):
    x, ids = catalogue(1000)
    folder = write_items(tmp_path / "items", x, ids, files=3)
    assert count_items(folder) == 1000
    whole = read_item_embeddings(folder)
    assert np.array_equal(whole.item_idx, ids) and np.array_equal(whole.vectors, x)
    for s in range(3):
        idx, v, versions = read_item_part(folder, lambda i, s=s: i % 3 == s)
        assert np.array_equal(idx, ids[ids % 3 == s]) and np.array_equal(v, x[ids % 3 == s])
        assert versions == {"v1"}


def test_training_sample_is_seeded_and_independent_of_the_files(tmp_path):
    x, ids = catalogue(4000)
    one = write_items(tmp_path / "one", x, ids, files=1)
    five = write_items(tmp_path / "five", x, ids, files=5)
    a_idx, a_v, _ = sample_item_vectors(one, 1000, 4000, seed=3)
    b_idx, b_v, _ = sample_item_vectors(five, 1000, 4000, seed=3)
    c_idx, _, _ = sample_item_vectors(one, 1000, 4000, seed=4)
    assert np.array_equal(a_idx, b_idx) and np.array_equal(a_v, b_v)
    assert np.array_equal(a_v, x[np.searchsorted(ids, a_idx)])  # the items' own vectors
    assert 850 <= len(a_idx) <= 1150  # about n: a hash, not an exact count
    assert len(np.intersect1d(a_idx, c_idx)) < 0.5 * len(a_idx)  # another seed, another draw
    all_idx, _, _ = sample_item_vectors(one, 5000, 4000)
    assert np.array_equal(all_idx, ids)


def test_build_files_writes_the_shards_and_the_exact_answers(tmp_path):
    from jobs.build_index import build_files

    x, ids = catalogue(900)
    folder = write_items(tmp_path / "items", x, ids, files=2)
    queries = np.random.default_rng(5).standard_normal((12, D)).astype(np.float32)
    work = tmp_path / "work"
    work.mkdir()
    template = ix.train_template(x[:0], "Flat")
    files, (got_D, got_I) = build_files(folder, "v1", template, queries, 20, work, 4, 1)
    assert [f["items"] for f in files] == [int((ids % 4 == s).sum()) for s in range(4)]
    assert sorted(p.name for p in work.iterdir()) == [f["file"] for f in files]  # no scratch
    ref_D, ref_I = ix.exact_topk(x, ids, queries, 20)
    assert np.array_equal(got_I, ref_I)
    index = ix.combine(ix.read_shards(work, [f["file"] for f in files]), merge=True)
    assert np.array_equal(index.search(queries, 20)[1], ref_I)


def test_a_shard_with_another_model_version_stops_the_build(tmp_path):
    from jobs.build_index import build_files

    x, ids = catalogue(300)
    folder = write_items(tmp_path / "items", x, ids, files=1)
    write_items(tmp_path / "other", x[:5], ids[:5] * 0 + 10**6 + np.arange(5), files=1,
                version="v2")
    (tmp_path / "other" / "part-00000.parquet").rename(folder / "part-00009.parquet")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ValueError, match="mixes model versions"):
        build_files(folder, "v1", ix.train_template(x[:0], "Flat"), x[:3], 5, work, 2, 1)
