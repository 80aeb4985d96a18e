"""Hostile-but-fair input and faults (issue 15): every command either does its job or stops
with ONE line naming the file, column or flag (exit 2), prints no traceback, and loses or
overwrites nothing valid.

Importers run as real subprocesses (what a user types; a C callback's "Exception ignored"
would only show there); the Spark and index jobs run in-process on a small generated
data root shared by the module, through the same `main()` the command line calls.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from artefacts import cli
from artefacts.layout import DataLayout
from artefacts.pointer import CorruptPointer, publish, read_current
from artefacts.storage import remove_stale_temporaries, scratch_dir, staged_dir
from jobs import build_index as build_index_job
from jobs import build_sequences as build_sequences_job
from jobs import embed_users as embed_users_job
from jobs import publish as publish_job
from jobs.build_index import IndexConfig, check_resources
from jobs.validation import InputError
from mind_model.checkpoint import CheckpointError, load_model
from orchestration import local_pipeline as local_pipeline_job
from orchestration import steps
from serving import retrieval
from serving.retrieval import NoKnownItems, Retriever
from tests.conftest import REPO_ROOT, assert_main_error, build_published_root, no_traceback

DS = "2026-11-28"
PY = sys.executable


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO_ROOT)


def assert_one_line_error(r: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no traceback, and a last stderr line `error: ...` naming each of `names`."""
    no_traceback(r.stdout + r.stderr)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), r.stderr[-2000:]
    for name in names:
        assert name in line, (name, line)
    return line


def read_events(out: Path) -> pd.DataFrame:
    parts = sorted((out / "events").glob("ds=*/*.parquet"))
    if not parts:
        return pd.DataFrame(columns=["user_id", "item_id"])
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


# ------------------------------------------------------------------------ importers

GOOD = {  # format -> {file name: content}; the first file is the one made hostile
    "taobao": {"UserBehavior.csv": "1,10,3,pv,1511544070\n1,11,3,buy,1511544080\n"
                                   "2,10,3,cart,1511544090\n2,12,4,fav,1511544100\n"},
    "amazon-ratings": {"ratings.csv": "A1,B1,5.0,1400000000\nA1,B2,2.0,1400000100\n"
                                      "A2,B1,4.0,1400000200\nA2,B3,3.0,1400000300\n"},
    "movielens": {"ratings.csv": "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n"
                                 "1,11,3.0,964982704\n2,10,5.0,964982705\n2,12,1.0,964982706\n",
                  "movies.csv": "movieId,title,genres\n10,A (1995),Comedy|Drama\n"
                                "11,B (1995),Drama\n12,C (1996),(no genres listed)\n"},
    "amazon-seq": {"Beauty.txt": "u1 i1 i2 i3\nu2 i2 i4\nu3 i1 i4 i5\nu4 i3 i5\n",
                   "Beauty_item2attributes.json": json.dumps(
                       {"i1": [40, 17], "i2": [17], "i3": [41, 4], "i4": [], "i5": [4]})},
}
GOOD_ROWS = {"taobao": 4, "amazon-ratings": 4, "movielens": 4, "amazon-seq": 10}
KINDS = ("empty", "binary", "non-utf8", "wrong-types")


def binary_bytes(seed: int = 0) -> bytes:
    """A binary file (a PNG header, then bytes >= 0x80 in short lines): no line is text."""
    rng = random.Random(seed)
    body = b"\n".join(bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(5, 60)))
                      for _ in range(40))
    return b"\x89PNG\r\n\x1a\n" + body


def hostile(fmt: str, kind: str, good: str) -> bytes:
    if kind == "empty":
        return b""
    if kind == "binary":
        return binary_bytes()
    lines = good.encode().splitlines(keepends=True)
    bad = 1 if fmt == "movielens" else 0  # after the header
    if kind == "non-utf8":  # one byte of Latin-1 in one line: that line only is lost
        lines[bad] = lines[bad].replace(b"1", b"\x8c", 1)
        return b"".join(lines)
    # wrong types: every timestamp is text (amazon-seq: items are not a list in the JSON)
    if fmt == "amazon-seq":
        return good.encode()
    head = lines[:1] if fmt == "movielens" else []
    body = lines[1:] if fmt == "movielens" else lines
    return b"".join(head + [ln.rsplit(b",", 1)[0] + b",yesterday\n" for ln in body])


def write_inputs(folder: Path, fmt: str, kind: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (name, text) in enumerate(GOOD[fmt].items()):
        data = text.encode()
        if kind is not None and k == 0:
            data = hostile(fmt, kind, text)
        if kind == "wrong-types" and fmt == "amazon-seq" and name.endswith(".json"):
            data = json.dumps([["i1", 40]]).encode()  # a list, not {item: [attributes]}
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_importer_bad_file(tmp_path, fmt, kind):
    """Per importer x bad-file kind: a clear outcome, nothing valid lost."""
    out = tmp_path / "out"
    # an earlier good import of other rows into the same partitions must survive anything
    (tmp_path / "earlier").mkdir()
    earlier = write_inputs(tmp_path / "earlier", fmt)
    assert run_cli("ingest.importers.cli", fmt, "--out", str(out), *map(str, earlier),
                   "--snapshot-ds", DS).returncode == 0
    before = read_events(out)
    assert len(before) == GOOD_ROWS[fmt]

    paths = write_inputs(tmp_path / "in", fmt, kind)
    r = run_cli("ingest.importers.cli", fmt, "--out", str(out), *map(str, paths),
                "--snapshot-ds", DS)
    no_traceback(r.stdout + r.stderr)
    after = read_events(out)
    if kind == "non-utf8":  # one malformed line, counted and shown with file:line
        assert r.returncode == 0, r.stderr[-2000:]
        lost = 1 if fmt != "amazon-seq" else 3  # amazon-seq: the line is one user's 3 items
        assert len(after) == 2 * GOOD_ROWS[fmt] - lost
        assert "malformed lines skipped: 1" in r.stdout
        line_no = 2 if fmt == "movielens" else 1
        assert f"{paths[0]}:{line_no}:" in r.stdout and "not UTF-8" in r.stdout
        assert "appended to 1 existing partition" in r.stdout
    elif kind == "wrong-types" and fmt != "amazon-seq":
        # times that are text: rows kept with a null time (quarantined by build-sequences)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"rows with null event_time: {GOOD_ROWS[fmt]}" in r.stdout
        assert len(after) == 2 * GOOD_ROWS[fmt]
        # without --snapshot-ds such rows have no day: exit 2 naming the file
        r2 = run_cli("ingest.importers.cli", fmt, "--out", str(tmp_path / "o2"),
                     *map(str, paths))
        assert_one_line_error(r2, str(paths[0]), "event_time")
    else:  # empty, binary, a JSON of the wrong shape: nothing to import -> exit 2
        bad = paths[1] if kind == "wrong-types" else paths[0]  # amazon-seq: the JSON
        assert_one_line_error(r, str(bad))
        pd.testing.assert_frame_equal(after, before)  # the earlier rows untouched


def test_second_import_appends_and_replace_replaces(tmp_path):
    """Finding 1: two daily files imported one after the other keep both."""
    out = tmp_path / "out"
    day1, day2 = tmp_path / "day1.csv", tmp_path / "day2.csv"
    day1.write_text("1,10,3,pv,1511544070\n1,11,3,buy,1511544080\n")
    day2.write_text("2,10,3,cart,1511544090\n")
    for f in (day1, day2):
        assert run_cli("ingest.importers.cli", "taobao", "--out", str(out), str(f)
                       ).returncode == 0
    df = read_events(out)
    assert sorted(df.user_id) == ["1", "1", "2"]
    assert len(list((out / "events").glob("ds=*"))) == 1  # one day, three rows

    r = run_cli("ingest.importers.cli", "taobao", "--out", str(out), "--replace", str(day2))
    assert r.returncode == 0 and "replaced 1 existing partition" in r.stdout
    assert sorted(read_events(out).user_id) == ["2"]
    assert not list((out / "events").glob("_*"))  # no staging folder left


def test_non_utf8_line_in_a_large_file_costs_one_line(tmp_path):
    """Finding 6: one bad byte among many lines (several read blocks) loses one line."""
    from ingest.importers.common import ReadStats, read_csv_batches
    from ingest.importers.taobao import COLUMNS

    lines = [f"{u},{u % 97},{u % 7},pv,{1511544070 + u}".encode() for u in range(20_000)]
    lines[12_345] = lines[12_345].replace(b"pv", b"p\xffv")
    src = tmp_path / "big.csv"
    src.write_bytes(b"\n".join(lines) + b"\n")
    stats = ReadStats()
    rows = sum(b.num_rows for b in read_csv_batches(src, COLUMNS, stats, block_size=4096))
    assert rows == 19_999 and stats.malformed_lines == 1
    assert stats.malformed_samples[0].startswith(f"{src}:12346:")


# --------------------------------------------------------------- a small served data root


@pytest.fixture(scope="module")
def served(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "data"
    layout, meta, *_ = build_published_root(
        spark, root, ds=DS, n_events=4_000, seed=5,
        model_kw=dict(embed_dim=8, n_interests=2, tower_hidden=(16,), profile_dim=4),
        batch_size=64, partitions=2, n_shards=2, recall_users=50)
    return SimpleNamespace(root=root, layout=layout, meta=meta)


def known_items(s, n: int = 3) -> list[str]:
    vocab = pd.read_parquet(s.layout.sequences(DS) / "vocab" / "item")
    return sorted(vocab[vocab.idx >= 2].value.astype(str))[:n]


# ------------------------------------------------------------------------ retrieval


@pytest.mark.spark
@pytest.mark.parametrize("items", ["nope-1,nope-2", "", ",,,", " , "])
def test_retrieval_without_a_known_item(served, capsys, items):
    """Finding 2: no known item -> exit 2 naming the problem, never a ranked list."""
    args = ["--root", str(served.root), "--items", items, "--cpu"]
    line = assert_main_error(capsys, retrieval.main, args)
    assert ("--items" in line) if not items.strip(", ") else ("nope-1" in line)


@pytest.mark.spark
def test_library_raises_no_known_items(served):
    r = Retriever(served.root, gpu=False)
    with pytest.raises(NoKnownItems, match="none of the 2 item id"):
        r.recommend_items(["nope-1", "nope-2"])
    with pytest.raises(NoKnownItems):
        r.recommend_items([])
    assert isinstance(NoKnownItems("x"), ValueError)  # a service maps it to a 4xx
    good = known_items(served)
    rec = r.recommend_items(["nope-1", *good], n=5)  # one known item is enough
    assert len(rec.item_id) == 5 and not set(rec.item_id) & set(good)


@pytest.mark.spark
@pytest.mark.parametrize("artefact", ["index", "model"])
def test_retrieval_when_the_pointer_names_a_missing_file(served, tmp_path, capsys, artefact):
    """Finding 4: a pointer naming a missing index/model: one line naming it."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(served.root, root, symlinks=True)
    path = read_current(root).path(artefact)
    (shutil.rmtree if path.is_dir() else os.remove)(path)
    assert_main_error(capsys, retrieval.main, ["--root", str(root), "--items",
                                               ",".join(known_items(served)), "--cpu"],
                      str(path), artefact)


FORGED = [  # what a hostile or broken model file may hold
    ("garbage", lambda p: p.write_bytes(b"\x00not a checkpoint" * 10)),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    ("pickled object", lambda p: torch.save({"model_config": SimpleNamespace(x=1),
                                             "model": {}}, p)),
    ("not a checkpoint", lambda p: torch.save({"weights": torch.zeros(2)}, p)),
]


@pytest.mark.parametrize("name,forge", FORGED, ids=[f[0] for f in FORGED])
def test_checkpoint_that_does_not_load(tmp_path, name, forge):
    """Finding 4: never PyTorch's text (it suggests weights_only=False), always the file."""
    path = tmp_path / "model.pt"
    torch.save({"model_config": {"n_items": 10}, "model": {"w": torch.zeros(1000)}}, path)
    forge(path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert str(path) in str(e.value) and "weights_only" not in str(e.value)


@pytest.mark.spark
def test_embed_users_with_a_forged_checkpoint(served, tmp_path, capsys):
    forged = tmp_path / "model.pt"
    forged.write_bytes(b"PK\x03\x04 truncated zip")
    line = assert_main_error(capsys, embed_users_job.main,
                             ["--data-root", str(served.root), "--ds", DS, "--model", str(forged)],
                             str(forged))
    assert "weights_only" not in line


# ---------------------------------------------------------------------- corrupt pointer


@pytest.mark.spark
@pytest.mark.parametrize("repair", ["publish", "rollback"])
def test_truncated_pointer_is_named_and_repaired(served, tmp_path, capsys, repair):
    """Finding 5: a truncated current.json -> one line; publish --ds and --rollback repair."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(served.root, root, symlinks=True)
    good = read_current(root).data
    current = DataLayout(root).current
    current.write_text(current.read_text()[:40])
    with pytest.raises(CorruptPointer, match="current.json"):
        read_current(root)
    assert_main_error(capsys, retrieval.main, ["--root", str(root), "--user-id", "u1", "--cpu"],
                      str(current), "--ds")
    # the daily DAG's next run reads the backup (its baseline is the served version)
    assert steps.baseline_version(root, "2099-01-01")["ds"] == DS
    if repair == "publish":
        assert publish_job.main(["--data-root", str(root), "--ds", DS]) == 0
        assert read_current(root).data == good  # restored whole from the backup
        return
    # a second version (a copy of DS's artefacts under another ds) is published over DS
    layout, ds2 = DataLayout(root), "2026-11-29"
    for part in ("sequences", "models", "embeddings", "index"):
        shutil.copytree(root / part / f"ds={DS}", root / part / f"ds={ds2}", symlinks=True)
    publish(root, ds2)
    current.write_text("{")  # truncated again
    assert publish_job.main(["--data-root", str(root), "--rollback"]) == 0
    back = read_current(root)
    assert back.ds == DS and back.previous.ds == ds2 and layout.current.is_file()


# ------------------------------------------------------------------------ job flags

BAD_FLAGS = [
    (build_sequences_job, ["--ds", "2026-13-45"], "--ds"),
    (build_sequences_job, ["--ds", "yesterday"], "--ds"),
    (build_sequences_job, ["--ds", DS, "--lookback-days", "0"], "--lookback-days"),
    (build_sequences_job, ["--ds", DS, "--lookback-days", "36601"], "--lookback-days"),
    (build_sequences_job, ["--ds", DS, "--max-len", "-1"], "--max-len"),
    (build_sequences_job, ["--ds", DS, "--write-threads", "0"], "--write-threads"),
    (build_index_job, ["--ds", DS, "--shards", "0"], "--shards"),
    (build_index_job, ["--ds", DS, "--recall-threshold", "1.5"], "--recall-threshold"),
    (build_index_job, ["--ds", DS, "--recall-users", "0"], "--recall-users"),
    (build_index_job, ["--ds", "2026-02-30"], "--ds"),
    (embed_users_job, ["--ds", DS, "--batch-size", "0"], "--batch-size"),
    (publish_job, ["--ds", "2026-13-45"], "--ds"),
    (local_pipeline_job, ["--days", "0"], "--days"),
]


@pytest.mark.parametrize("job,argv,flag", BAD_FLAGS,
                         ids=[f"{j.__name__.split('.')[-1]}:{' '.join(a[-2:])}"
                              for j, a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_naming_it(tmp_path, capsys, job, argv, flag):
    assert_main_error(capsys, job.main, ["--data-root", str(tmp_path), *argv], flag)


def test_a_long_imported_history_is_a_valid_window(tmp_path):
    # MovieLens latest-small spans 1996..2018: its import needs ~8,500 days of look-back.
    cfg = build_sequences_job.PrepConfig(data_root=tmp_path, ds="2018-09-30", lookback_days=8500)
    days = cfg.window_days()
    assert (len(days), days[0], days[-1]) == (8500, "1995-06-24", "2018-09-30")


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--lookback-days"):
        build_sequences_job.main(["--data-root", str(tmp_path), "--ds", DS,
                                  "--lookback-days", "0", "--debug"])


def test_a_true_bug_keeps_its_traceback():
    def buggy(argv):
        return {}["missing"]
    with pytest.raises(KeyError):
        cli.run_main(buggy, [])


@pytest.mark.spark
def test_more_shards_than_items_is_refused_before_work(served, capsys):
    """Finding 3: --shards 5000 on a small catalogue stops at once, nothing replaced."""
    manifest = (served.layout.index(DS) / "manifest.json").read_text()
    n_items = json.loads(manifest)["items"]
    line = assert_main_error(capsys, build_index_job.main,
                             ["--data-root", str(served.root), "--ds", DS, "--shards", "5000"],
                             "--shards 5000", f"{n_items:,} items")
    assert "catalogue" in line
    assert (served.layout.index(DS) / "manifest.json").read_text() == manifest


def test_recall_gate_memory_is_checked_against_the_machine(tmp_path):
    cfg = IndexConfig(data_root=tmp_path, ds=DS, n_shards=64, recall_users=100_000)
    # 64 shards x 400k interest vectors x 100 results x 12 B = 30.7 GB > half of 16 GiB
    with pytest.raises(ValueError, match="--shards 64 with --recall-users 100000"):
        check_resources(cfg, n_items=1_000_000, n_queries=400_000, k=100, available=16 << 30)
    check_resources(cfg, n_items=1_000_000, n_queries=4_000, k=100, available=16 << 30)


@pytest.mark.spark
def test_partition_files_disagreeing_on_a_type(spark, tmp_path):
    """Finding 4: one line naming the column and both files, not a Java stack."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingest.importers.common import raw_table
    from jobs.build_sequences import PrepConfig
    from jobs.build_sequences import run as build_sequences

    part = tmp_path / "raw" / "events" / f"ds={DS}"
    part.mkdir(parents=True)
    t = raw_table(pa.array(["1", "2"]), pa.array(["10", "11"]),
                  pa.array([1764300000_000000] * 2, pa.timestamp("us", tz="UTC")))
    pq.write_table(t, part / "a.parquet")
    pq.write_table(t.set_column(0, "user_id", pa.array([3, 4], pa.int64())), part / "b.parquet")
    with pytest.raises(InputError) as e:
        build_sequences(PrepConfig(data_root=tmp_path, ds=DS, lookback_days=1), spark)
    msg = str(e.value)
    assert "'user_id'" in msg and "a.parquet" in msg and "b.parquet" in msg
    assert "\n" not in msg


# ------------------------------------------------------------------- stale temporaries


def test_stale_staging_folders_are_removed_but_never_a_live_one(tmp_path):
    """Finding 7: a killed run's _tmp-* goes at the next staging of the same output; a
    folder whose writer is alive (it holds the flock) stays, however old."""
    code = ("import sys, time; from artefacts.storage import staged_dir\n"
            "with staged_dir(sys.argv[1]) as t:\n"
            "    print(t, flush=True); time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    final = tmp_path / "out" / "ds=x"
    live = subprocess.Popen([PY, "-c", code, str(final)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        tmp = Path(live.stdout.readline().strip())
        assert tmp.is_dir() and tmp.name.startswith("_tmp-ds=x-")
        old = 0  # as old as can be
        os.utime(tmp, (old, old))
        assert remove_stale_temporaries(final.parent) == 0 and tmp.is_dir()  # alive: kept
        live.kill()  # kill -9: the kernel drops the lock, the folder stays behind
        live.wait()
        assert tmp.is_dir()
        young = final.parent / "_tmp-ds=x-young"
        young.mkdir()  # a writer on another host may have just made it: kept
        with staged_dir(final) as t:
            (t / "f").write_text("new")
        assert not tmp.exists() and young.is_dir()
        assert (final / "f").read_text() == "new"
    finally:
        live.kill()


# ------------------------------------------------------------------- fault injection
# A job is started as a real process, killed with SIGKILL (its whole process group: the
# Spark JVM too) at a seeded random moment, then run again; the rerun's output must
# equal an uninterrupted run's where the job is deterministic.

KILL_SEEDS = (1, 2)


def start_job(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.Popen([PY, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO_ROOT, start_new_session=True)


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the job's process group after `seconds`; False if it had finished."""
    import signal

    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return True


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    no_traceback(out + err)
    return err


def timed_run(args: list[str], env: dict[str, str] | None = None) -> float:
    import time

    t0 = time.perf_counter()
    finish(start_job(args, env))
    return time.perf_counter() - t0


def table_rows(folder: Path) -> pd.DataFrame:
    """A Parquet folder's rows in a canonical order (list columns as tuples)."""
    df = pd.concat([pd.read_parquet(f) for f in sorted(folder.rglob("*.parquet"))],
                   ignore_index=True)
    for c in df.columns:
        if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], np.ndarray):
            df[c] = df[c].map(tuple)
    return df.sort_values(list(df.columns), ignore_index=True)


def same_sequences(a: Path, b: Path) -> None:
    tables = sorted(p.parent.relative_to(a) for p in a.rglob("*.parquet"))
    assert tables == sorted(p.parent.relative_to(b) for p in b.rglob("*.parquet"))
    for t in sorted(set(tables)):
        pd.testing.assert_frame_equal(table_rows(a / t), table_rows(b / t))
    sa, sb = (json.loads((x / "stats.json").read_text()) for x in (a, b))
    for st in (sa, sb):  # what may differ: the wall time and where the root is
        st.pop("seconds"), st["config"].pop("data_root")
    assert sa == sb


@pytest.mark.slow
@pytest.mark.spark
def test_build_sequences_killed_at_random_then_rerun_equals_one_run(tmp_path):
    from ingest.sample_data import generate

    generate(tmp_path / "ref" / "raw", end_ds=DS, days=2, n_events=4_000, seed=3)
    args = ["jobs.build_sequences", "--ds", DS, "--lookback-days", "2", "--min-user-count", "2",
            "--min-row-groups", "2", "--master", "local[2]"]
    ref = tmp_path / "ref"
    wall = timed_run([*args[:1], "--data-root", str(ref), *args[1:]])
    for seed in KILL_SEEDS:
        import shutil

        root = tmp_path / f"kill{seed}"
        shutil.copytree(ref / "raw", root / "raw")
        delay = random.Random(seed).uniform(0.3, 0.95) * wall
        killed = kill_after(start_job([*args[:1], "--data-root", str(root), *args[1:]]), delay)
        out = root / "sequences" / f"ds={DS}"
        if killed and out.exists():  # killed after the one rename (e.g. in Spark's shutdown):
            same_sequences(ref / "sequences" / f"ds={DS}", out)  # then it must be whole
        finish(start_job([*args[:1], "--data-root", str(root), *args[1:]],
                         env={"MIND_STALE_AFTER_S": "0"}))
        same_sequences(ref / "sequences" / f"ds={DS}", root / "sequences" / f"ds={DS}")
        assert not [p for p in (root / "sequences").iterdir() if p.name.startswith("_")]


@pytest.mark.slow
@pytest.mark.spark
def test_index_job_killed_at_random_then_rerun_equals_one_run(served, tmp_path):
    import shutil

    args = ["jobs.build_index", "--ds", DS, "--shards", "2", "--recall-users", "50"]
    ref = tmp_path / "ref"
    shutil.copytree(served.root, ref, symlinks=True)
    shutil.rmtree(ref / "index")
    wall = timed_run([*args[:1], "--data-root", str(ref), *args[1:]])

    def result(root: Path) -> dict:
        folder = DataLayout(root).index(DS)
        m = json.loads((folder / "manifest.json").read_text())
        for key in ("seconds", "config"):
            m.pop(key)
        m["recall"].pop("seconds")
        return {"manifest": m, **{f.name: f.read_bytes() for f in folder.glob("*.faiss")}}

    for seed in KILL_SEEDS:
        root = tmp_path / f"kill{seed}"
        shutil.copytree(ref, root, symlinks=True)
        shutil.rmtree(root / "index")
        delay = random.Random(seed).uniform(0.3, 0.95) * wall
        kill_after(start_job([*args[:1], "--data-root", str(root), *args[1:]]), delay)
        finish(start_job([*args[:1], "--data-root", str(root), *args[1:]],
                         env={"MIND_STALE_AFTER_S": "0"}))
        assert result(root) == result(ref)
        assert not [p for p in (root / "index").iterdir() if p.name.startswith("_")]


@pytest.mark.slow
@pytest.mark.spark
def test_training_killed_mid_epoch_resumes_from_the_periodic_checkpoint(served, tmp_path):
    """Finding 8. What can be asserted: the rerun resumes from the step of the last periodic
    checkpoint (written by time, mid-epoch) and finishes with valid checkpoints. Its weights
    are NOT compared with an uninterrupted run's: the reader is reseeded by the resume step,
    so the rest of the epoch is another draw of batches (mind_model.train's docstring)."""
    import time

    from mind_model.checkpoint import load_checkpoint

    spe, epochs = 400, 2
    out = tmp_path / "run"
    args = ["mind_model.train", "--data-dir", str(served.layout.sequences(DS)), "--out-dir",
            str(out), "--embed-dim", "8", "--tower-hidden", "16", "--profile-dim", "4",
            "--n-neg", "32", "--batch-size", "16", "--epochs", str(epochs), "--steps-per-epoch",
            str(spe), "--threads", "1", "--no-progress", "--eval-users", "50",
            "--no-test-at-end", "--save-every-minutes", "0.005"]  # every 0.3 s
    proc = start_job(args)
    t_end = time.time() + 300
    while not (out / "last.pt").is_file() and proc.poll() is None and time.time() < t_end:
        time.sleep(0.05)
    assert kill_after(proc, random.Random(KILL_SEEDS[0]).uniform(0.2, 1.0)), \
        "training finished before it could be killed: make it longer"
    saved = int(load_checkpoint(out / "last.pt")["step"])
    assert 0 < saved < epochs * spe
    err = finish(start_job(args))
    assert f"resuming from {out / 'last.pt'} at step {saved} " in err
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == epochs * spe and last["epoch"] == epochs
    load_model(out / "best.pt")  # loads: a complete, valid checkpoint


def test_scratch_folder_goes_on_success_and_on_failure(tmp_path):
    """A job's scratch folder (jobs.build_sequences: the distinct events) is a hidden
    `_tmp-` sibling of its output, removed however the job ends; the output is untouched."""
    final = tmp_path / "out" / "ds=x"
    with scratch_dir(final) as s:
        assert s.parent == final.parent and s.name.startswith("_tmp-ds=x-scratch-")
        (s / "part").write_text("x")
    assert not s.exists()
    with pytest.raises(RuntimeError, match="boom"):
        with scratch_dir(final) as s:
            (s / "part").write_text("x")
            raise RuntimeError("boom")
    assert not s.exists() and list(final.parent.iterdir()) == []
