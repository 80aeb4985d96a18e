"""The parallel index build's parts: shard assignment, shard-wise exact answers merged,
items read in parts and sampled, against brute force over the whole catalogue."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artefacts import index as ix
from artefacts.row_spans import plan_spans
from artefacts.vectors import (
    item_row_groups,
    read_item_embeddings,
    read_item_spans,
    sample_item_vectors,
)
from schemas import ITEM_EMBEDDINGS, USER_VECTORS
from tests.conftest import assert_main_error

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


def test_build_shards_holds_equal_runs_of_the_rows():
    x, ids = catalogue(500)
    shuffled = np.random.default_rng(0).permutation(len(ids))
    shards = ix.build_shards(x[shuffled], ids[shuffled], "Flat", 3)
    runs = np.split(ids[shuffled], [500 // 3, 1000 // 3])  # 166, 167, 167 rows
    for shard, run in zip(shards, runs):
        held = faiss.vector_to_array(faiss.downcast_index(shard).id_map)
        assert np.array_equal(held, run)


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_shards_exact_answers_merged_equal_brute_force(n_shards):
    x, ids = catalogue(2000)
    queries = np.random.default_rng(1).standard_normal((40, D)).astype(np.float32)
    k = 50
    parts = [ix.exact_topk(x[a:b], ids[a:b], queries, k) for a, b in ix.shard_rows(2000, n_shards)]
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
    parts = [ix.exact_topk(x[a:b], ids[a:b], queries, 30) for a, b in ix.shard_rows(1500, 4)]
    got = ix.users_hits(*ix.merge_topk(parts, 30), offsets, 30)
    ref = ix.exact_multi_interest(x, ids, users, 30)
    for g, r in zip(got, ref):
        assert np.array_equal(g.ids, r.ids) and np.array_equal(g.interest, r.interest)


def test_items_read_in_parts(tmp_path):
    x, ids = catalogue(1000)
    folder = write_items(tmp_path / "items", x, ids, files=3)
    groups = item_row_groups(folder)
    assert sum(rows for *_, rows in groups) == 1000
    assert {f for f, *_ in groups} == {p.name for p in folder.glob("*.parquet")}  # relative
    whole = read_item_embeddings(folder)
    assert np.array_equal(whole.item_idx, ids) and np.array_equal(whole.vectors, x)
    # write_items stores the rows in a shuffled order: each part comes back sorted by idx
    order = pq.read_table(folder, columns=["item_idx"]).column("item_idx").to_numpy()
    for (a, b), spans in zip(ix.shard_rows(1000, 3), plan_spans(groups, 3)):
        idx, v, versions = read_item_spans(folder, spans)
        mine = np.sort(order[a:b])
        assert np.array_equal(idx, mine) and np.array_equal(v, x[np.searchsorted(ids, mine)])
        assert versions == {"v1"}


def test_a_part_decodes_only_its_own_files(tmp_path):
    x, ids = catalogue(600)
    folder = write_items(tmp_path / "items", x, ids, files=2)  # 300 rows each
    first, second = plan_spans(item_row_groups(folder), 2)
    (folder / "part-00001.parquet").write_bytes(b"not parquet")  # the second half, broken
    idx, _, _ = read_item_spans(folder, first)
    assert len(idx) == 300
    with pytest.raises(Exception, match="part-00001"):
        read_item_spans(folder, second)


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
    assert [f["items"] for f in files] == [b - a for a, b in ix.shard_rows(900, 4)]
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


# ------------------------------------------------------------------ the build in stages

DS = "2026-11-28"
# an IVF (trained template, tuned nprobe) over 3 shards, a gate it passes
STAGED = ["--ds", DS, "--shards", "3", "--factory", "IVF16,Flat", "--recall-n", "50",
          "--recall-users", "40", "--recall-threshold", "0.9", "--seed", "1"]


def write_embeddings(root: Path, *, n_items: int = 3000, n_users: int = 60,
                     version: str = "v1") -> Path:
    """embeddings/ds=DS as the embedding job leaves it: items, users (1-4 interests) and the
    manifest naming the model version."""
    emb = root / "embeddings" / f"ds={DS}"
    x, ids = catalogue(n_items, seed=3)
    write_items(emb / "items", x, ids, files=2, version=version)
    rng = np.random.default_rng(4)
    vectors = [rng.standard_normal((k, D)).astype(np.float32).tolist()
               for k in rng.integers(1, 5, n_users)]
    (emb / "users").mkdir()
    pq.write_table(pa.table({
        "user_idx": pa.array(np.arange(2, n_users + 2, dtype=np.int32)),
        "user_id": pa.array([f"u{i}" for i in range(n_users)]),
        "vectors": pa.array(vectors, pa.list_(pa.list_(pa.float32()))),
        "n_interests": pa.array([len(v) for v in vectors], pa.int32()),
        "model_version": pa.array([version] * n_users),
        "ds": pa.array([DS] * n_users),
    }, schema=USER_VECTORS.arrow_schema()), emb / "users" / "part-00000.parquet")
    (emb / "manifest.json").write_text(json.dumps({"model_version": version}))
    return root


def build(root: Path, *argv: str, flags: list[str] = STAGED) -> int:
    from jobs.build_index import main

    return main(["--data-root", str(root), *flags, *argv])


def build_error(capsys, root: Path, *argv: str, flags: list[str] = STAGED) -> str:
    """The job's one-line `error: ...` (exit 2, no traceback) for these arguments."""
    from jobs.build_index import main

    line = assert_main_error(capsys, main, ["--data-root", str(root), *flags, *argv])
    assert line.startswith("error: "), line
    return line


def published(root: Path) -> tuple[dict, dict[str, bytes]]:
    """index/ds=DS: its manifest without timings or the root, and its shard files' bytes."""
    folder = root / "index" / f"ds={DS}"
    m = json.loads((folder / "manifest.json").read_text())
    m.pop("seconds"), m["recall"].pop("seconds"), m["config"].pop("data_root")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}
    return m, files


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[dict, dict[str, bytes]]:
    """The reference: the same build with `--stage all` (one process)."""
    root = write_embeddings(tmp_path_factory.mktemp("all"))
    assert build(root) == 0
    assert sorted(p.name for p in (root / "index").iterdir()) == [f"ds={DS}"]
    return published(root)


def build_folder(root: Path) -> Path:
    return root / "index" / f"_build-ds={DS}"


def test_staged_build_equals_the_one_process_build(tmp_path, one_process):
    root = write_embeddings(tmp_path)
    assert build(root, "--stage", "plan") == 0
    assert not (root / "index" / f"ds={DS}").exists()  # a plan is no index
    for shard in (2, 0, 1):  # any order, as pods finish
        assert build(root, "--stage", "fill", "--shard", str(shard)) == 0
    assert build(root, "--stage", "finish") == 0
    manifest, files = published(root)
    ref_manifest, ref_files = one_process
    assert manifest == ref_manifest
    assert manifest["search_params"] and not manifest["exact"]  # a tuned IVF was checked
    assert sorted(files) == ["shard-000.faiss", "shard-001.faiss", "shard-002.faiss"]
    assert files == ref_files  # byte for byte: nothing else is published either
    assert sorted(p.name for p in (root / "index").iterdir()) == [f"ds={DS}"]  # build gone


def test_fill_takes_the_shard_from_the_indexed_job(tmp_path, capsys, monkeypatch):
    root = write_embeddings(tmp_path)
    assert build(root, "--stage", "plan") == 0
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert build(root, "--stage", "fill") == 0
    work = build_folder(root)
    assert sorted(p.name for p in work.glob("shard-*")) == ["shard-001.faiss"]
    held = _ids_of(work / "shard-001.faiss")
    stored = pq.read_table(root / "embeddings" / f"ds={DS}" / "items",  # in file order
                           columns=["item_idx"]).column("item_idx").to_numpy()
    assert np.array_equal(np.sort(held), np.sort(stored[1000:2000]))  # rows of shard 1 of 3
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    line = build_error(capsys, root, "--stage", "fill")
    assert "--shard 3 is out of range" in line and str(work) in line
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert "JOB_COMPLETION_INDEX" in build_error(capsys, root, "--stage", "fill")


def _ids_of(path: Path) -> np.ndarray:
    """The item ids an IVF shard file holds (every inverted list)."""
    index = faiss.read_index(str(path))
    ivf = faiss.extract_index_ivf(index)  # a view into `index`: keep that alive
    lists = ivf.invlists
    return np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                           for i in range(ivf.nlist)])


def test_finish_with_a_missing_shard_names_it_and_publishes_nothing(tmp_path, capsys):
    root = write_embeddings(tmp_path)
    assert build(root, "--stage", "plan") == 0
    for shard in (0, 2):
        assert build(root, "--stage", "fill", "--shard", str(shard)) == 0
    work = build_folder(root)
    # what a pod killed while writing shard 1 leaves: its temporary file, no done file
    (work / ".shard-001.faiss.0123abcd.tmp").write_bytes(b"half a shard")
    line = build_error(capsys, root, "--stage", "finish")
    assert "shard(s) 1 of 3 not filled" in line and str(work) in line
    assert not (root / "index" / f"ds={DS}").exists()
    # a shard file without its done file (killed between the two) is not accepted either
    assert build(root, "--stage", "fill", "--shard", "1") == 0
    (work / "_shard-001.json").unlink()
    assert "shard(s) 1 of 3" in build_error(capsys, root, "--stage", "finish")
    assert build(root, "--stage", "fill", "--shard", "1") == 0
    assert build(root, "--stage", "finish") == 0
    assert sorted(p.name for p in (root / "index" / f"ds={DS}").iterdir()) == [
        "manifest.json", "shard-000.faiss", "shard-001.faiss", "shard-002.faiss"]


def test_fill_and_finish_without_a_matching_plan_refuse(tmp_path, capsys):
    root = write_embeddings(tmp_path)
    work = build_folder(root)
    for stage in ("fill", "finish"):
        argv = ["--stage", stage] + (["--shard", "0"] if stage == "fill" else [])
        line = build_error(capsys, root, *argv)
        assert str(work) in line and "--stage plan" in line, line
    assert "--shard goes with --stage fill" in build_error(capsys, root, "--stage", "plan",
                                                           "--shard", "0")
    # a plan for embeddings that were replaced since (another model) is refused
    assert build(root, "--stage", "plan") == 0
    # a setting given to fill / finish that differs from the plan's is refused, not ignored
    # (the plan's own values, as STAGED passes them to every stage, are fine)
    line = build_error(capsys, root, "--stage", "fill", "--shard", "0", "--shards", "8",
                       "--factory", "Flat")
    assert "was planned with --shards 3 (given: 8), --factory IVF16,Flat (given: Flat)" in line
    assert "--recall-n" in build_error(capsys, root, "--stage", "finish", "--recall-n", "5")
    emb = root / "embeddings" / f"ds={DS}" / "manifest.json"
    emb.write_text(json.dumps({"model_version": "v2"}))
    line = build_error(capsys, root, "--stage", "fill", "--shard", "0")
    assert str(work) in line and "model v1" in line and "model v2" in line
    assert not list(work.glob("shard-*"))
    (work / "_plan.json").write_text(json.dumps({"ds": DS}))  # another version's plan
    line = build_error(capsys, root, "--stage", "finish")
    assert f"{work / '_plan.json'} is not a plan of this version" in line


def test_rerunning_a_fill_replaces_its_shard_and_a_new_plan_starts_over(tmp_path):
    root = write_embeddings(tmp_path)
    assert build(root, "--stage", "plan") == 0
    work = build_folder(root)
    assert build(root, "--stage", "fill", "--shard", "0") == 0
    good = (work / "shard-000.faiss").read_bytes()
    (work / "shard-000.faiss").write_bytes(good[: len(good) // 2])  # a damaged file
    assert build(root, "--stage", "fill", "--shard", "0") == 0
    assert (work / "shard-000.faiss").read_bytes() == good
    assert json.loads((work / "_shard-000.json").read_text())["bytes"] == len(good)
    plan = json.loads((work / "_plan.json").read_text())
    assert build(root, "--stage", "plan") == 0  # a rerun of plan: the shards are gone
    assert not list(work.glob("shard-*")) and not list(work.glob("_shard-*"))
    assert json.loads((work / "_plan.json").read_text())["build_id"] != plan["build_id"]


def test_a_failed_gate_in_finish_publishes_nothing_and_removes_the_build(tmp_path, caplog):
    root = write_embeddings(tmp_path)
    flags = [*STAGED[:-4], "--recall-threshold", "1.0", "--nprobe", "1", "--seed", "1"]
    assert build(root, "--stage", "plan", flags=flags) == 0
    for shard in range(3):
        assert build(root, "--stage", "fill", "--shard", str(shard), flags=flags) == 0
    assert build(root, "--stage", "finish", flags=flags) == 3
    assert "is below the threshold 1.0" in caplog.text
    assert not (root / "index" / f"ds={DS}").exists() and not build_folder(root).exists()
