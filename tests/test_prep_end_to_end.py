"""Importers / generator -> build-sequences job: the counts identity on real and generated data."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ingest.importers import import_any
from ingest.sample_data import generate
from jobs.build_sequences import PrepConfig, run
from tests.conftest import import_beauty

pytestmark = pytest.mark.spark


def identity_holds(c: dict) -> bool:
    return c["input"] == c["kept"] + c["quarantined"] + c["duplicates"] + c["filtered"]


def reference_filter(df: pd.DataFrame, min_item: int, min_user: int,
                     drop_items: bool) -> pd.DataFrame:
    """The job's filter in pandas: rare users; with `drop_items` (the paper's filter) rare
    items first, then rare users (one round)."""
    if drop_items:
        df = df[df.groupby("item_id")["item_id"].transform("size") >= min_item]
    return df[df.groupby("user_id")["user_id"].transform("size") >= min_user]


def test_generated_logs_with_injected_bad_rows(spark, tmp_path):
    summary = generate(tmp_path / "raw", end_ds="2026-11-28", days=3, n_events=20_000, seed=3,
                       bad_rows=True)
    injected = summary["injected"]
    assert json.loads((tmp_path / "raw" / "truth" / "summary.json").read_text()) == summary
    stats = run(PrepConfig(data_root=tmp_path, ds="2026-11-28", lookback_days=3,
                           min_row_groups=4), spark)
    c = stats["counts"]
    assert identity_holds(c)
    assert c["input"] == summary["total_rows"] == 20_000 + sum(injected.values())
    assert c["duplicates"] == injected["duplicate"]
    expected_reasons = {k: v for k, v in injected.items() if k != "duplicate"}
    assert stats["quarantined_by_reason"] == expected_reasons
    assert c["kept"] > 0.8 * 20_000  # the generator's default sizes survive min counts of 5
    out = tmp_path / "sequences" / "ds=2026-11-28"
    assert pq.read_table(out / "quarantine").num_rows == c["quarantined"]
    reasons = pq.read_table(out / "quarantine").column("reason").to_pylist()
    assert {r: reasons.count(r) for r in set(reasons)} == expected_reasons


@pytest.mark.slow
def test_amazon_beauty(spark, shared_datasets, tmp_path):
    ds = import_beauty(shared_datasets, tmp_path / "raw")
    stats = run(PrepConfig(data_root=tmp_path, ds=ds, lookback_days=1, min_item_count=5,
                           min_user_count=5, valid_buckets=0, min_row_groups=4), spark)
    c = stats["counts"]
    assert identity_holds(c)
    assert c["input"] == 198_502 and c["quarantined"] == 0
    ref = reference_filter(pd.read_parquet(tmp_path / "raw" / "events"), 5, 5, False)
    assert c["kept"] == len(ref)
    assert stats["users"]["total"] == ref["user_id"].nunique()
    assert stats["items"] == ref["item_id"].nunique()
    # 19:1 split: each user is a test user with probability 1/20.
    assert abs(stats["users"]["test"] / stats["users"]["total"] - 0.05) < 0.01
    # Every kept interaction of a training user except its first is a training sample.
    users = pq.read_table(tmp_path / "sequences" / f"ds={ds}" / "users").to_pandas()
    train = users[users.split == "train"]
    assert stats["train_samples"] == int((train.n_events - 1).sum())


@pytest.mark.slow
def test_movielens(spark, shared_datasets, tmp_path):
    folder = shared_datasets / "ml-latest-small"
    result = import_any("movielens", [folder / "ratings.csv", folder / "movies.csv"],
                        tmp_path / "raw", snapshot_ds="2018-09-30")
    assert result.total_rows == 100_836
    # The ratings span 1996..2018: a window reaching back to 1996 takes them all.
    stats = run(PrepConfig(data_root=tmp_path, ds="2018-09-30", lookback_days=8500,
                           min_item_count=10, min_user_count=10, rare_items="drop",
                           min_row_groups=4), spark)
    c = stats["counts"]
    assert identity_holds(c) and c["input"] == 100_836 and c["quarantined"] == 0
    ref = reference_filter(pd.read_parquet(tmp_path / "raw" / "events"), 10, 10, True)
    assert c["kept"] == len(ref) and c["filtered"] == 100_836 - len(ref)
    assert stats["items"] == ref["item_id"].nunique()
    assert stats["window"]["missing_days"] == 8499
