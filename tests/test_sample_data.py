"""The sample-data generator: determinism, schemas, planted structure, bad rows."""
from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ingest.sample_data import INJECT_KINDS, generate, injected_per_kind, main
from schemas.tables import BEHAVIORS, RAW_EVENTS, USER_PROFILES

END, DAYS, N = "2026-11-28", 3, 6000
DS = [(date.fromisoformat(END) - timedelta(days=d)).isoformat() for d in (2, 1, 0)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clean")
    return out, generate(out, end_ds=END, days=DAYS, n_events=N, seed=7)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dirty")
    return out, generate(out, end_ds=END, days=DAYS, n_events=N, seed=7, bad_rows=True)


def read_events(root: Path) -> pd.DataFrame:
    """All partitions, in ds then file order, with the ds taken from the folder name."""
    frames = []
    for part in sorted((root / "events").glob("ds=*/part-*.parquet")):
        df = pq.read_table(part).to_pandas()
        df["ds"] = part.parent.name.removeprefix("ds=")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_args_give_identical_files_and_rerun_replaces(clean, tmp_path):
    root, summary = clean
    again = generate(tmp_path, end_ds=END, days=DAYS, n_events=N, seed=7)
    assert again == summary
    assert files(tmp_path) == files(root)
    generate(tmp_path, end_ds=END, days=DAYS, n_events=N, seed=7)  # rerun in place
    assert files(tmp_path) == files(root)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(("_tmp-", "_old-"))]
    other = generate(tmp_path / "other", end_ds=END, days=DAYS, n_events=N, seed=8)
    assert not read_events(tmp_path / "other").equals(read_events(root))
    assert other["total_rows"] == N


def test_schemas_match_the_tables(clean):
    root, _ = clean
    for part in (root / "events").glob("ds=*/*.parquet"):
        assert pq.read_schema(part).remove_metadata() == RAW_EVENTS.arrow_schema(
            include_partition=False)
    profiles = pq.read_table(root / "profiles" / "part-00000.parquet")
    assert profiles.schema.remove_metadata() == USER_PROFILES.arrow_schema()
    p = profiles.to_pandas()
    assert p.user_id.is_unique and p.user_id.notna().all()
    assert set(p.gender.dropna()) == {"F", "M"} and 0 < p.gender.isna().sum() < 0.1 * len(p)
    assert all(re.fullmatch(r"<18|\d\d-\d\d|50\+", a) for a in p.age_bucket.dropna())
    assert set(p.city_tier.dropna()) == {"1", "2", "3", "4", "5"}


def test_rows_partitions_and_times(clean):
    root, summary = clean
    ev = read_events(root)
    assert sorted(p.name for p in (root / "events").iterdir()) == [f"ds={d}" for d in DS]
    assert len(ev) == N == summary["total_rows"]
    assert ev.groupby("ds").size().to_dict() == summary["rows_per_ds"]
    assert ev.drop(columns="ds").notna().all().all()
    assert (ev.event_time.dt.strftime("%Y-%m-%d") == ev.ds).all()
    assert not ev.duplicated(["user_id", "event_time"]).any()  # unique time per user
    assert re.fullmatch(r"u\d{6}", ev.user_id[0]) and re.fullmatch(r"i\d{6}", ev.item_id[0])
    counts = ev.behavior.value_counts()
    assert set(counts.index) == set(BEHAVIORS)
    assert counts["click"] > 5 * counts["cart"] and counts["fav"] > counts["buy"]
    # Side features are properties of the item, as in the truth table.
    items = pq.read_table(root / "truth" / "items.parquet").to_pandas().set_index("item_id")
    assert (ev.category_id.values == items.category_id[ev.item_id].values).all()
    assert (ev.brand_id.values == items.brand_id[ev.item_id].values).all()
    # Each category and brand belongs to a single cluster.
    assert items.groupby("category_id").cluster_id.nunique().max() == 1
    assert items.groupby("brand_id").cluster_id.nunique().max() == 1


def test_planted_interests_show_in_the_events(clean):
    root, summary = clean
    ev = read_events(root)
    truth = pq.read_table(root / "truth" / "user_interests.parquet").to_pandas()
    items = pq.read_table(root / "truth" / "items.parquet").to_pandas()
    k = truth.clusters.map(len)
    assert set(k) == {1, 2, 3, 4, 5} and k.isin([2, 3]).mean() > 0.4
    assert np.allclose(truth.weights.map(sum), 1.0, atol=1e-5)
    assert (truth.clusters.map(lambda c: len(set(c))) == k).all()
    assert truth.n_events.sum() == N

    ev = ev.merge(items[["item_id", "cluster_id"]], on="item_id")
    true_sets = dict(zip(truth.user_id, truth.clusters.map(set)))
    ev["hit"] = [c in true_sets[u] for u, c in zip(ev.user_id, ev.cluster_id)]
    per_user = ev.groupby("user_id").hit.agg(["mean", "size"])
    assert ev.hit.mean() > 0.9
    assert (per_user[per_user["size"] >= 20]["mean"] >= 0.8).all()
    # Sessions: consecutive events of a user mostly stay in one cluster.
    ev = ev.sort_values(["user_id", "event_time"])
    same_user = ev.user_id.values[1:] == ev.user_id.values[:-1]
    same_cluster = ev.cluster_id.values[1:] == ev.cluster_id.values[:-1]
    assert same_cluster[same_user].mean() > 0.6
    # Heavy-tailed activity, yet most data survives min_user_count = min_item_count = 5.
    sizes = per_user["size"]
    assert sizes.max() > 5 * sizes.median()
    item_counts = ev.item_id.value_counts()
    kept = ev.item_id.map(item_counts).ge(5) & ev.user_id.map(sizes).ge(5)
    assert kept.mean() > 0.9


def test_bad_rows_are_exactly_as_recorded(dirty, clean):
    root, summary = dirty
    n = injected_per_kind(N)
    assert summary["injected"] == dict.fromkeys(INJECT_KINDS, n)
    ev = read_events(root)
    assert len(ev) == N + len(INJECT_KINDS) * n == summary["total_rows"]
    assert ev.groupby("ds").size().to_dict() == summary["rows_per_ds"]

    # Recount every rule independently of the generator.
    rules = pd.DataFrame({
        "null_user_id": ev.user_id.isna(),
        "null_item_id": ev.item_id.isna(),
        "unknown_behavior": ~ev.behavior.isin(BEHAVIORS),
        "null_event_time": ev.event_time.isna(),
        "event_time_outside_window": ev.event_time.dt.strftime("%Y-%m-%d").fillna("") > ev.ds,
    })
    assert rules.sum().to_dict() == {k: n for k in rules.columns}
    assert rules.sum(axis=1).max() == 1  # each malformed row breaks exactly one rule
    assert ev.behavior.notna().all() and ev.category_id.notna().all()
    valid = ev[~rules.any(axis=1)]
    assert valid.duplicated().sum() == n  # exact copies, same partition
    assert ev.drop(columns="ds").duplicated().sum() == n
    # Without the duplicates, the valid rows are the clean run's events.
    assert len(valid.drop_duplicates()) == N
    assert (read_events(clean[0]).sort_values(["user_id", "event_time"]).reset_index(drop=True)
            .equals(valid.drop_duplicates().sort_values(["user_id", "event_time"])
                    .reset_index(drop=True)))
    written = json.loads((root / "truth" / "summary.json").read_text())
    assert written["injected"] == summary["injected"]


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--end-ds", END, "--days", "2", "--events", "500",
                 "--seed", "3", "--bad-rows"]) == 0
    out = capsys.readouterr().out
    assert "wrote 518 rows (500 events + 18 injected)" in out and "ds=2026-11-27" in out
    assert json.loads((tmp_path / "truth" / "summary.json").read_text())["days"] == 2


def test_rejects_impossible_sizes(tmp_path):
    with pytest.raises(ValueError, match="n_users"):
        generate(tmp_path, end_ds=END, days=1, n_events=10, n_users=20)
    with pytest.raises(ValueError, match="items_per_cluster"):
        generate(tmp_path, end_ds=END, days=1, n_events=100, items_per_cluster=0)


def test_multi_preset_has_fine_grained_clusters(tmp_path):
    # 3,000 items at ~15 per cluster: 200 clusters, far more than any default (<= 100)
    s = main(["--out", str(tmp_path), "--end-ds", END, "--days", "1", "--events", "6000",
              "--items", "3000", "--preset", "multi"])
    assert s == 0
    summary = json.loads((tmp_path / "truth" / "summary.json").read_text())
    assert summary["n_clusters"] == 3000 // 15
    items = pq.read_table(tmp_path / "truth" / "items.parquet").to_pandas()
    sizes = items.groupby("cluster_id").size()
    assert len(sizes) == 200 and sizes.sum() == 3000 and sizes.min() >= 1
    truth = pq.read_table(tmp_path / "truth" / "user_interests.parquet").to_pandas()
    assert truth.clusters.map(len).between(3, 5).all()  # the preset's 3..5 interests
