"""The build-sequences Spark job on tiny hand-made logs, checked against plain-Python references."""
from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from jobs import build_sequences as bs
from jobs.build_sequences import PrepConfig, run
from jobs.user_events import COUNT_COLUMN
from jobs.validation import InputError
from mind_model.data import read_train
from schemas import (
    EVAL_SAMPLES,
    ITEM_FEATURES,
    LATEST_SEQUENCES,
    PAD_IDX,
    QUARANTINE,
    RAW_EVENTS,
    TRAIN_CHUNKS,
    UNK_IDX,
    USER_PROFILES,
    VOCAB,
)

pytestmark = pytest.mark.spark

D1, D2 = "2026-11-27", "2026-11-28"
L = 4  # short max_len so that truncation of long histories is exercised
C = 3  # short chunks, so that users span several (up to 9 events: up to 3 chunks)


def ts(day: str, seconds: int) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) + dt.timedelta(
        seconds=seconds)


def write_events(root: Path, day: str, rows: list[dict]) -> None:
    folder = root / "raw" / "events" / f"ds={day}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=RAW_EVENTS.arrow_schema(include_partition=False))
    pq.write_table(table, folder / "part-0.parquet")


def ev(user, item, day, sec, behavior="click", cat="c1", brand="b1") -> dict:
    return dict(user_id=user, item_id=item, category_id=cat, brand_id=brand,
                behavior=behavior, event_time=ts(day, sec) if sec is not None else None)


def make_logs(root: Path, n_users: int = 60, seed: int = 1,
              drop_items: bool = False) -> dict[str, int]:
    """Two days of logs with known bad rows; returns the expected counts (rare items kept,
    or dropped by the paper's filter with `drop_items`)."""
    rng = random.Random(seed)
    by_day = {D1: [], D2: []}
    sec = 0
    for u in range(n_users):
        for k in range(rng.randint(3, 9)):  # every user has >= 3 events
            day = D1 if k % 2 else D2
            sec += 1
            by_day[day].append(ev(f"u{u:03d}", f"i{rng.randint(0, 14):02d}", day, sec,
                                  behavior=rng.choice(["click", "cart", " Click ", "buy"])))
    # Rare items: one event each -> kept (sharing the unknown id's embedding), or removed
    # by min_item_count=2 with rare_items="drop".
    by_day[D2] += [ev("u000", "rare1", D2, 80_001), ev("u001", "rare2", D2, 80_002)]
    # Users with a single event on common items -> removed by min_user_count=2.
    by_day[D2] += [ev("lonely1", "i00", D2, 80_003), ev("lonely2", "i01", D2, 80_004)]
    bad = [
        ev(None, "i00", D2, 81_000), ev("  ", "i00", D2, 81_001),             # null_user_id x2
        ev("u002", None, D2, 81_002),                                          # null_item_id
        ev("u002", "i00", D2, 81_003, behavior="view"),                        # unknown_behavior
        ev("u002", "i00", D2, 81_004, behavior=None),                          # unknown_behavior
        ev("u002", "i00", D2, None),                                           # null_event_time
        ev("u002", "i00", D2, 86_400 + 5),                                     # from the future
        ev("u002", "i00", "2026-11-20", 5),                                    # before the window
    ]
    by_day[D2] += bad
    dups = [dict(r) for r in by_day[D1][:3]] + [dict(by_day[D2][0])]
    by_day[D1] += dups[:3]
    by_day[D2] += dups[3:]
    for day, rows in by_day.items():
        write_events(root, day, rows)
    n_input = sum(len(r) for r in by_day.values())
    return {"input": n_input, "quarantined": len(bad), "duplicates": len(dups),
            "filtered": 4 if drop_items else 2,
            "kept": n_input - len(bad) - len(dups) - (4 if drop_items else 2)}


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def config(root: Path, ds: str = D2, **kw) -> PrepConfig:
    base = dict(data_root=root, ds=ds, lookback_days=2, min_item_count=2, min_user_count=2,
                max_len=L, chunk_targets=C, min_row_groups=3, split_buckets=5, valid_buckets=1,
                seed=7)
    base.update(kw)
    return PrepConfig(**base)


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    expected = make_logs(root)
    stats = run(config(root), spark)
    return root, expected, stats


def reference_sequences(root: Path, drop_items: bool = False) -> dict[str, list[str]]:
    """Per user, raw item ids of the events the job should keep, in time order."""
    rows = []
    for day in (D1, D2):
        for r in read(root / "raw" / "events" / f"ds={day}"):
            b = (r["behavior"] or "").strip().lower()
            if not (r["user_id"] or "").strip() or not r["item_id"] or r["event_time"] is None:
                continue
            if b not in ("click", "cart", "fav", "buy"):
                continue
            if not ts(D1, 0) <= r["event_time"] < ts(day, 86_400):
                continue
            rows.append((r["user_id"], r["item_id"], r["category_id"], r["brand_id"], b,
                         r["event_time"]))
    rows = sorted(set(rows), key=lambda r: r[5])
    items = Counter(r[1] for r in rows)
    rows = [r for r in rows if items[r[1]] >= 2 or not drop_items]
    users = Counter(r[0] for r in rows)
    seqs = defaultdict(list)
    for r in rows:
        if users[r[0]] >= 2:
            seqs[r[0]].append(r[1])
    return seqs


def test_counts_identity_and_quarantine_reasons(built):
    root, expected, stats = built
    assert stats["counts"] == expected
    assert sum(expected[k] for k in ("kept", "quarantined", "duplicates", "filtered")) \
        == expected["input"]
    assert stats["quarantined_by_reason"] == {
        "null_user_id": 2, "null_item_id": 1, "unknown_behavior": 2, "null_event_time": 1,
        "event_time_outside_window": 2}
    out = root / "sequences" / f"ds={D2}"
    quarantine = read(out / "quarantine")
    assert len(quarantine) == expected["quarantined"]
    # The quarantined row keeps its original values, including the unknown behaviour.
    assert {r["behavior"] for r in quarantine
            if r["reason"] == "unknown_behavior"} == {"view", None}
    assert json.loads((out / "stats.json").read_text())["counts"] == expected
    # the scratch copy of the distinct events is gone with the run
    assert [p.name for p in (root / "sequences").iterdir() if p.name.startswith("_")] == []


def test_sequences_match_reference(built):
    root, _, stats = built
    out = root / "sequences" / f"ds={D2}"
    item_idx = {r["value"]: r["idx"] for r in read(out / "vocab" / "item")}
    user_idx = {r["value"]: r["idx"] for r in read(out / "vocab" / "user")}
    split = {r["user_id"]: r["split"] for r in read(out / "users")}
    ref = {u: [item_idx[i] for i in seq] for u, seq in reference_sequences(root).items()}
    assert set(split) == set(ref)

    def window(seq, end):
        h = seq[max(0, end - L):end]
        return h + [PAD_IDX] * (L - len(h)), len(h)

    want_train = set()
    for u, seq in ref.items():
        if split[u] == "train":
            for t in range(1, len(seq)):
                h, n = window(seq, t)
                want_train.add((user_idx[u], tuple(h), n, seq[t]))
    train = read_train(out)  # the stored chunks, expanded as the model side reads them
    got_train = set(zip(train["user_idx"].tolist(), map(tuple, train["hist"].tolist()),
                        train["hist_len"].tolist(), train["target"].tolist()))
    assert len(train["target"]) == len(want_train) == stats["train_samples"]
    assert got_train == want_train
    chunks = read(out / "train")
    assert len(chunks) == stats["train_chunks"] < stats["train_samples"]
    assert all(len(r["targets"]) == C for r in chunks)

    for name in ("test", "valid"):
        rows = read(out / name)
        assert {r["user_idx"] for r in rows} == {user_idx[u] for u, s in split.items() if s == name}
        for r in rows:
            u = next(k for k, v in user_idx.items() if v == r["user_idx"])
            seq = ref[u]
            assert r["full_seq"] == seq
            assert 1 <= r["target_pos"] < len(seq)
            assert r["target"] == seq[r["target_pos"]]
            assert (r["hist"], r["hist_len"]) == tuple(window(seq, r["target_pos"]))

    latest = {r["user_id"]: r for r in read(out / "latest")}
    for u, seq in ref.items():
        assert (latest[u]["hist"], latest[u]["hist_len"]) == tuple(window(seq, len(seq)))
        assert latest[u]["gender_idx"] == UNK_IDX  # no profiles given


def test_output_schemas_and_row_groups(built):
    root, _, _ = built
    out = root / "sequences" / f"ds={D2}"
    for name, table in [("train", TRAIN_CHUNKS), ("test", EVAL_SAMPLES),
                        ("latest", LATEST_SEQUENCES), ("items", ITEM_FEATURES),
                        ("vocab/item", VOCAB)]:
        schema = pq.read_schema(next((out / name).glob("*.parquet")))
        assert schema.names == table.names, name
        for f in table.arrow_schema():
            got = schema.field(f.name).type
            assert got == f.type or (pa.types.is_list(got) and got.value_type == f.type.value_type)
    row_groups = sum(pq.ParquetFile(p).num_row_groups for p in (out / "train").glob("*.parquet"))
    assert row_groups >= 3  # >= min_row_groups: every training process gets data
    assert all(len(r["hist"]) == L for r in read(out / "train"))


def test_vocabulary_reserved_and_dense(built):
    root, _, stats = built
    out = root / "sequences" / f"ds={D2}"
    for name in ("user", "item", "category"):
        idx = sorted(r["idx"] for r in read(out / "vocab" / name))
        assert idx == list(range(2, 2 + len(idx))), name  # 0 = padding, 1 = unknown
    items = {r["item_id"]: r for r in read(out / "items")}
    assert {"rare1", "rare2"} <= set(items) and len(items) == 17  # rare items stay
    ref = reference_sequences(root)
    ref_counts = Counter(i for s in ref.values() for i in s)
    assert {k: v["interactions"] for k, v in items.items()} == dict(ref_counts)
    # own id embedding <=> at least min_item_count (2) events of training users
    split = {r["user_id"]: r["split"] for r in read(out / "users")}
    train_counts = Counter(i for u, s in ref.items() if split[u] == "train" for i in s)
    assert {k: v["train_interactions"] for k, v in items.items()} == \
        {k: train_counts.get(k, 0) for k in items}
    assert {k for k, v in items.items() if v["id_embedding"]} == \
        {k for k in items if train_counts.get(k, 0) >= 2}
    assert not items["rare1"]["id_embedding"] and items["i00"]["id_embedding"]
    # stats.json counts the same table (read back after writing)
    assert stats["items"] == len(items)
    assert stats["items_sharing_unknown_id"] == \
        sum(train_counts.get(k, 0) < 2 for k in items) > 0


def test_rare_items_dropped_with_the_papers_filter(spark, tmp_path):
    expected = make_logs(tmp_path, drop_items=True)
    stats = run(config(tmp_path, rare_items="drop"), spark)
    assert stats["counts"] == expected
    out = tmp_path / "sequences" / f"ds={D2}"
    items = {r["item_id"] for r in read(out / "items")}
    assert "rare1" not in items and len(items) == 15
    item_idx = {r["value"]: r["idx"] for r in read(out / "vocab" / "item")}
    ref = reference_sequences(tmp_path, drop_items=True)
    latest = {r["user_id"]: r for r in read(out / "latest")}
    assert set(latest) == set(ref)
    for u, seq in ref.items():
        assert latest[u]["hist"][:latest[u]["hist_len"]] == [item_idx[i] for i in seq][-L:]


def test_vocabulary_stable_across_days_and_rerun_identical(spark, built, tmp_path):
    root, _, _ = built
    out1 = root / "sequences" / f"ds={D2}"
    before = {r["value"]: r["idx"] for r in read(out1 / "vocab" / "item")}
    day3 = "2026-11-29"
    # New items appear, and one old item is absent today: its id must survive.
    write_events(root, day3, [ev(f"u{u:03d}", i, day3, 10 * u + k)
                              for u in range(20) for k, i in enumerate(["i01", "new_a", "new_b"])])
    run(config(root, ds=day3, lookback_days=1), spark)
    after = {r["value"]: r["idx"]
             for r in read(root / "sequences" / f"ds={day3}" / "vocab" / "item")}
    assert all(after[k] == v for k, v in before.items())
    assert sorted(after[k] for k in ("new_a", "new_b")) == [max(before.values()) + 1,
                                                            max(before.values()) + 2]
    # Rerunning D2 replaces its output with identical content and leaves no temporaries.
    snapshot = {n: sorted(map(str, read(out1 / n))) for n in ("train", "test", "latest", "users")}
    run(config(root), spark)
    assert {n: sorted(map(str, read(out1 / n))) for n in snapshot} == snapshot
    leftovers = [p.name for p in (root / "sequences").iterdir() if p.name.startswith("_")]
    assert leftovers == []


def test_profiles_mapped(spark, tmp_path):
    make_logs(tmp_path, n_users=20)
    (tmp_path / "raw" / "profiles").mkdir(parents=True)
    profiles = [dict(user_id=f"u{u:03d}", gender="F" if u % 2 else "M",
                     age_bucket=None if u == 3 else "25-34", city_tier="1") for u in range(20)]
    pq.write_table(pa.Table.from_pylist(profiles, schema=USER_PROFILES.arrow_schema()),
                   tmp_path / "raw" / "profiles" / "p.parquet")
    stats = run(config(tmp_path), spark)
    out = tmp_path / "sequences" / f"ds={D2}"
    gender = {r["value"]: r["idx"] for r in read(out / "vocab" / "gender")}
    latest = {r["user_id"]: r for r in read(out / "latest")}
    assert stats["profiles_present"] and set(gender) == {"F", "M"}
    assert latest["u001"]["gender_idx"] == gender["F"]
    assert latest["u002"]["gender_idx"] == gender["M"]
    assert latest["u003"]["age_bucket_idx"] == UNK_IDX


def test_split_is_about_one_in_twenty_and_seeded(spark, tmp_path):
    rows = [ev(f"user{u}", f"i{k % 3}", D2, 10 * u + k) for u in range(1000) for k in range(3)]
    write_events(tmp_path, D2, rows)
    stats = run(config(tmp_path, lookback_days=1, split_buckets=20, valid_buckets=0), spark)
    assert stats["users"]["total"] == 1000
    # Binomial(1000, 1/20): mean 50, sd 6.9; +-4 sd.
    assert 22 <= stats["users"]["test"] <= 78
    assert stats["users"]["valid"] == 0
    assert stats["users"]["train"] + stats["users"]["test"] == 1000
    # clean logs: the quarantine table is written empty, with its schema
    assert stats["counts"]["quarantined"] == 0
    quarantine = pq.read_table(tmp_path / "sequences" / f"ds={D2}" / "quarantine")
    assert quarantine.num_rows == 0 and quarantine.schema.names == QUARANTINE.names


def test_missing_partition_names_path(spark, tmp_path):
    with pytest.raises(InputError, match=r"ds=2026-11-28 not found: .*raw/events/ds=2026-11-28"):
        run(config(tmp_path), spark)
    assert not (tmp_path / "sequences" / f"ds={D2}").exists()


def test_wrong_schema_names_file_and_column(spark, tmp_path):
    folder = tmp_path / "raw" / "events" / f"ds={D2}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "category_id": ["c"],
                             "brand_id": ["b"], "behavior": ["click"],
                             "event_time": ["2026-11-28 10:00"]}), folder / "p.parquet")
    with pytest.raises(InputError, match=r"ds=2026-11-28: column 'event_time' .* string, "
                                         r"expected timestamp"):
        run(config(tmp_path), spark)
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"]}), folder / "p.parquet")
    with pytest.raises(InputError, match=r"ds=2026-11-28: missing column 'category_id'"):
        run(config(tmp_path), spark)


def test_failed_write_leaves_previous_output(spark, built, monkeypatch):
    root, _, _ = built
    out = root / "sequences" / f"ds={D2}"
    before = sorted(map(str, read(out / "train")))
    calls = itertools.count(1)  # next() is atomic: the writes run on several threads
    real = bs.write_table

    def failing(df, path, table, **kw):
        if next(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(df, path, table, **kw)

    monkeypatch.setattr(bs, "write_table", failing)
    with pytest.raises(OSError, match="simulated"):
        run(config(root), spark)
    assert sorted(map(str, read(out / "train"))) == before
    assert not [p for p in (root / "sequences").iterdir() if p.name.startswith("_")]
    assert os.path.exists(out / "stats.json")


def test_side_by_side_writes_all_finish_before_an_error_is_raised():
    """A failed write must not leave the others still writing into the staging folder that
    the failure removes: every write ends first, then the first error is raised."""
    done, started = [], threading.Barrier(3)

    def write(i):
        def call():
            if i < 3:
                started.wait(timeout=5)  # the first 3 writes really run at once (3 threads)
            if i == 0:
                raise OSError("disk full (simulated)")
            time.sleep(0.2)
            done.append(i)
        return call

    with pytest.raises(OSError, match="simulated"):
        bs.run_side_by_side([write(i) for i in range(5)], threads=3)
    assert sorted(done) == [1, 2, 3, 4]


def _shuffle_keys(df) -> list[list[str]]:
    """The partitioning columns of each shuffle (Exchange) in df's physical plan."""
    plan = df._jdf.queryExecution().executedPlan().toString()
    keys = re.findall(r"Exchange hashpartitioning\(([^)]*)\)", plan)
    return [[re.sub(r"#\d+L?$", "", k.strip()) for k in ks.split(",")][:-1] for ks in keys]


def test_one_shuffle_of_all_events_serves_dedup_and_user_filter(spark, tmp_path):
    """The distinct events cost one exchange of all events, by user_id: the duplicate
    removal (on all columns) and the user filter's count share it (one sorted pass per
    partition, jobs.user_events) instead of each shuffling the events again (they did: by
    all columns, then by user). The kept events are then read from the scratch copy: no
    exchange at all."""
    make_logs(tmp_path)
    cfg = config(tmp_path)
    annotated, by_reason = bs.quarantine(bs.extract(spark, cfg).events, cfg.window_days()[0])
    keys = _shuffle_keys(bs.distinct_events(annotated))
    assert keys and all(k == ["user_id"] for k in keys), keys
    scratch = tmp_path / "scratch"
    kept, _ = bs.deduplicate_and_filter(annotated, by_reason, cfg, scratch)
    assert "Exchange" not in kept._jdf.queryExecution().executedPlan().toString()
    assert (scratch / "distinct_events").is_dir()


def test_items_table_latest_side_ids_and_counts_match_brute_force(spark):
    """ITEM_FEATURES from the per-(item, category, brand) pre-aggregate equals a brute force
    over the events: the latest event's side ids (ties at the same time: the larger
    category, then brand, a null below any value), the interactions of all and of training
    users."""
    rng = random.Random(11)
    cfg = PrepConfig(data_root=Path("."), ds=D2, split_buckets=4, valid_buckets=1, seed=3,
                     min_item_count=3)
    rows = []
    for _ in range(600):
        user = f"u{rng.randint(0, 40)}"
        rows.append((user, f"i{rng.randint(0, 25)}", rng.choice(["c1", "c2", "c3", None]),
                     rng.choice(["b1", "b2", None]), ts(D2, rng.randint(0, 30))))
    n_events = Counter(r[0] for r in rows)
    events = spark.createDataFrame(
        [(*r, n_events[r[0]]) for r in rows],
        "user_id string, item_id string, category_id string, brand_id string, "
        f"event_time timestamp, {COUNT_COLUMN} long")
    split = {r["user_id"]: r["s"] for r in events.select(
        "user_id", bs.user_split(F.col("user_id"), F.col(COUNT_COLUMN), cfg).alias("s"))
        .distinct().collect()}
    assert set(split.values()) >= {"train", "test"}
    names = {"item": sorted({r[1] for r in rows}), "category": ["c1", "c2", "c3"],
             "brand": ["b1", "b2"]}
    vocab = {n: spark.createDataFrame([(v, UNK_IDX + 1 + k, D2) for k, v in enumerate(vals)],
                                      VOCAB.spark_schema()) for n, vals in names.items()}
    idx = {n: {v: UNK_IDX + 1 + k for k, v in enumerate(vals)} for n, vals in names.items()}

    got = {r["item_idx"]: r.asDict() for r in
           bs.item_table(bs.item_side_counts(events, cfg), vocab, cfg).collect()}

    def null_low(v):
        return (v is not None, v or "")

    for item in names["item"]:
        evs = [r for r in rows if r[1] == item]
        t, cat, brand = max(((r[4], r[2], r[3]) for r in evs),
                            key=lambda x: (x[0], null_low(x[1]), null_low(x[2])))
        n_train = sum(split[r[0]] == "train" for r in evs)
        want = {"item_idx": idx["item"][item],
                "category_idx": idx["category"].get(cat, UNK_IDX),
                "brand_idx": idx["brand"].get(brand, UNK_IDX),
                "interactions": len(evs), "train_interactions": n_train,
                "id_embedding": n_train >= 3}
        assert {k: got[want["item_idx"]][k] for k in want} == want, item
    assert len(got) == len(names["item"])
