"""Importers: real public sets (by path, skipped when absent) and small files made here."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ingest.importers import (
    RawEventsWriter,
    ReadStats,
    import_any,
    read_amazon_ratings,
    read_amazon_seq,
    read_movielens,
    read_taobao,
    write_raw_events,
)
from ingest.importers.amazon_seq import attribute_map
from ingest.importers.cli import main
from ingest.importers.common import raw_table
from ingest.importers.taobao import iter_taobao
from schemas.tables import RAW_EVENTS

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MIND_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
ML = DATASETS / "ml-latest-small"
BEAUTY = DATASETS / "amazon_beauty"
RAW_SCHEMA = RAW_EVENTS.arrow_schema(include_partition=False)
BEHAVIORS_TB = ("pv", "cart", "fav", "buy")  # Taobao's names


def need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"shared data set {folder} not found (set MIND_SHARED_DATASETS)")
    return folder


def read_partitions(out: Path) -> pd.DataFrame:
    frames = []
    for part in sorted((out / "events").glob("ds=*/part-*.parquet")):
        assert pq.read_schema(part).remove_metadata() == RAW_SCHEMA
        df = pq.read_table(part).to_pandas()
        df["ds"] = part.parent.name.removeprefix("ds=")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------- MovieLens


@pytest.fixture(scope="module")
def movielens() -> pa.Table:
    d = need(ML)
    return read_movielens(d / "ratings.csv", d / "movies.csv")


def test_movielens_counts_order_and_genres(movielens):
    t = movielens
    assert t.schema == RAW_SCHEMA
    assert t.num_rows == 100_836
    assert pc.count_distinct(t.column("user_id")).as_py() == 610
    assert pc.count_distinct(t.column("item_id")).as_py() == 9_724
    df = t.to_pandas()
    assert (df.behavior == "click").all() and df.brand_id.isna().all()
    assert df.event_time.notna().all()
    key = pd.DataFrame({"u": df.user_id.astype(int), "t": df.event_time})
    assert key.equals(key.sort_values(["u", "t"], kind="stable"))
    # Independent reference for the first genre of each movie.
    movies = pd.read_csv(ML / "movies.csv", dtype=str)
    first = movies.genres.str.split("|").str[0].replace("(no genres listed)", None)
    expected = df.item_id.map(dict(zip(movies.movieId, first)))
    assert df.category_id.equals(expected.rename("category_id"))
    assert df.category_id.isna().sum() > 0  # "(no genres listed)" -> null
    assert set(df.category_id.dropna()) <= set(first.dropna())
    ratings = pd.read_csv(ML / "ratings.csv")
    first_row = ratings.sort_values(["userId", "timestamp", "movieId"]).iloc[0]
    assert df.event_time[0] == pd.Timestamp(int(first_row.timestamp), unit="s", tz="UTC")


def test_movielens_min_rating():
    d = need(ML)
    stats = ReadStats()
    t = read_movielens(d / "ratings.csv", d / "movies.csv", min_rating=4.0, stats=stats)
    n_high = (pd.read_csv(d / "ratings.csv").rating >= 4.0).sum()
    assert t.num_rows == n_high == stats.rows and stats.filtered == 100_836 - n_high


def test_movielens_partitions_by_day_or_snapshot(movielens, tmp_path):
    rows = write_raw_events(movielens, tmp_path / "snap", snapshot_ds="2018-10-01")
    assert rows == {"2018-10-01": 100_836}
    days = movielens.to_pandas().event_time.dt.strftime("%Y-%m-%d")
    assert days.nunique() == 4_110  # why a snapshot ds exists
    # Daily partitions (on the last 5,000 ratings of the file, to stay fast).
    tail = movielens.slice(movielens.num_rows - 5_000)
    rows = write_raw_events(tail, tmp_path / "daily", snapshot_ds=None)
    assert rows == days[-5_000:].value_counts().sort_index().to_dict()
    df = read_partitions(tmp_path / "daily")
    assert len(df) == 5_000 and (df.event_time.dt.strftime("%Y-%m-%d") == df.ds).all()


# ---------------------------------------------------------------------- Amazon Beauty


def test_amazon_beauty_counts_order_and_attributes(tmp_path):
    d = need(BEAUTY)
    result = import_any("amazon-seq", [d], tmp_path)  # a folder: finds both files
    assert result.rows_per_ds == {"2014-07-01": 198_502}
    df = read_partitions(tmp_path)
    assert len(df) == 198_502
    assert df.user_id.nunique() == 22_363 and df.item_id.nunique() == 12_101
    assert (df.behavior == "click").all()
    # File order is time order: per user, times strictly increase along the line.
    lines = (d / "Beauty.txt").read_text().split("\n")
    expected = [(tok[0], item) for tok in map(str.split, lines) if tok for item in tok[1:]]
    assert list(zip(df.user_id, df.item_id)) == expected
    assert (df.groupby("user_id").event_time.diff().dropna() > pd.Timedelta(0)).all()
    # Attributes: brand = a leading attribute that is never a category; category = last one.
    raw = json.loads((d / "Beauty_item2attributes.json").read_text())
    categories = {str(a) for v in raw.values() for a in v[1:]}
    items = df.drop_duplicates("item_id").set_index("item_id")
    assert items.category_id.notna().all()
    assert set(items.category_id) <= categories
    assert not set(items.brand_id.dropna()) & categories
    assert items.brand_id.nunique() == 435 and items.category_id.nunique() == 195
    # "2686": [40, 17, 2, 41, 42, 43] -> brand 40, leaf category 43
    assert items.loc["2686", ["category_id", "brand_id"]].tolist() == ["43", "40"]
    assert items.loc["4", ["category_id", "brand_id"]].tolist() == ["3", None]  # [1, 2, 3]


def test_amazon_seq_small_file(tmp_path):
    seq = tmp_path / "Toy.txt"
    seq.write_text("7 a b c\n8 b\n9\n\n7 d\n")  # user 9 has no items; user 7 recurs
    attrs = tmp_path / "Toy_item2attributes.json"
    attrs.write_text(json.dumps({"a": [100, 1, 2], "b": [1, 3], "c": [2]}))
    assert attribute_map(attrs) == {"a": ("2", "100"), "b": ("3", None), "c": ("2", None)}
    stats = ReadStats()
    base = datetime(2020, 1, 1, tzinfo=timezone.utc)
    df = read_amazon_seq(seq, attrs, base_time=base, stats=stats).to_pandas()
    assert list(df.item_id) == ["a", "b", "c", "b", "d"]
    assert list((df.event_time - pd.Timestamp(base)).dt.total_seconds()) == [0, 1, 2, 0, 3]
    assert df.category_id.tolist()[:4] == ["2", "3", "2", "3"] and pd.isna(df.category_id[4])
    assert stats.malformed_lines == 1 and "Toy.txt:3" in stats.malformed_samples[0]


# ------------------------------------------------------------------ streamed formats

TAOBAO_LINES = [
    "1,10,100,pv,1511544070",
    "1,11,100,buy,1511544071",
    "2,12,101,cart,not-a-time",  # kept, event_time null
    "broken,line,with,four",  # wrong field count: counted
    "3,13,102,share,1511600000",  # unknown behaviour: kept as is
    ",14,102,fav,1511600001",  # empty user: kept as null
    "4,15,103,pv,1511700000,extra",  # wrong field count: counted
    "5,16,104,fav,1511700001",
]


def test_taobao_small_file_keeps_or_counts_every_line(tmp_path):
    src = tmp_path / "UserBehavior.csv"
    src.write_text("\n".join(TAOBAO_LINES) + "\n")
    stats = ReadStats()
    df = read_taobao(src, stats=stats).to_pandas()
    assert stats.malformed_lines == 2 and len(df) == stats.rows == 6
    assert len(df) + stats.malformed_lines == len(TAOBAO_LINES)  # nothing vanished
    assert "UserBehavior.csv:4" in stats.malformed_samples[0]
    assert stats.null_event_time == 1 and stats.unknown_behavior == 1
    assert df.behavior.tolist() == ["click", "buy", "cart", "share", "fav", "fav"]
    assert df.user_id.isna().sum() == 1 and df.brand_id.isna().all()
    assert df.category_id.tolist()[:2] == ["100", "100"]

    out = tmp_path / "out"
    result = import_any("taobao", [src], out)
    assert result.rows_per_ds == {"2017-11-24": 2, "2017-11-25": 2, "2017-11-26": 2}
    assert result.stats.malformed_lines == 2
    written = read_partitions(out)
    # The row without a time goes to the latest partition, where it is quarantined.
    assert written[written.event_time.isna()].ds.tolist() == ["2017-11-26"]
    assert len(written) == 6


def test_taobao_streams_in_blocks(tmp_path):
    src = tmp_path / "big.csv"
    lines = [f"{u},{i},{i % 7},{BEHAVIORS_TB[i % 4]},{1511500000 + 3600 * i}"
             for u in range(20) for i in range(50)]
    src.write_text("\n".join(lines) + "\n")
    batches = list(iter_taobao(src, block_size=2048))
    assert len(batches) > 5
    whole = read_taobao(src)
    assert pa.concat_tables(batches).equals(whole) and whole.num_rows == 1000
    with RawEventsWriter(tmp_path / "out", rows_per_part=100, max_buffered=300) as w:
        for b in batches:
            w.write(b)
    parts = list((tmp_path / "out" / "events").glob("ds=*/part-*.parquet"))
    assert len(parts) > len(w.rows)  # several parts per partition
    df = read_partitions(tmp_path / "out")
    assert len(df) == 1000 == sum(w.rows.values())
    assert (df.event_time.dt.strftime("%Y-%m-%d") == df.ds).all()


def test_amazon_ratings_small_file(tmp_path):
    src = tmp_path / "ratings_Beauty.csv"
    src.write_text("A1,B1,5.0,1400000000\nA1,B2,2.0,1400000100\nA2,B1,4.0,\n"
                   "A2,B3,x,1400000200\nA3,B2\n")
    stats = ReadStats()
    df = read_amazon_ratings(src, stats=stats).to_pandas()
    assert len(df) == 4 and stats.malformed_lines == 1 and stats.null_event_time == 1
    assert (df.behavior == "click").all() and df.category_id.isna().all()
    stats = ReadStats()
    df = read_amazon_ratings(src, min_rating=4.0, stats=stats).to_pandas()
    # "x" is not a rating: the row is kept (it is still an interaction).
    assert df.item_id.tolist() == ["B1", "B1", "B3"] and stats.filtered == 1
    result = import_any("amazon-ratings", [src], tmp_path / "out", snapshot_ds="2014-07-31")
    assert result.rows_per_ds == {"2014-07-31": 4} and result.stats.malformed_lines == 1


# --------------------------------------------------------------------- errors and CLI


def test_missing_files_are_named(tmp_path):
    missing = tmp_path / "nope.csv"
    for call in (lambda: read_taobao(missing), lambda: read_amazon_ratings(missing),
                 lambda: read_movielens(missing, missing), lambda: read_amazon_seq(missing),
                 lambda: import_any("taobao", [missing], tmp_path / "out")):
        with pytest.raises(FileNotFoundError, match="nope.csv"):
            call()
    assert main(["taobao", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_missing_header_column_is_named(tmp_path):
    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,stars,timestamp\n1,2,3.0,100\n")
    good_movies = tmp_path / "movies.csv"
    good_movies.write_text("movieId,title,genres\n2,X,Drama\n")
    with pytest.raises(ValueError, match="rating"):
        read_movielens(bad, good_movies)


def test_writer_checks_schema_and_publishes_nothing_on_error(tmp_path):
    ts = pa.array([0], pa.timestamp("us", tz="UTC"))
    good = raw_table(pa.array(["u"]), pa.array(["i"]), ts)
    with pytest.raises(ValueError, match="'event_time'"):
        write_raw_events(good.set_column(5, "event_time", pa.array([0])), tmp_path)
    with pytest.raises(ValueError, match="'brand_id'"):
        write_raw_events(good.drop(["brand_id"]), tmp_path)
    with pytest.raises(RuntimeError):
        with RawEventsWriter(tmp_path, rows_per_part=1) as w:
            w.write(good)  # flushed into a staged folder...
            raise RuntimeError("boom")
    assert not (tmp_path / "events").exists() or not any((tmp_path / "events").iterdir())


def test_cli_prints_partitions_and_losses(tmp_path, capsys):
    src = tmp_path / "UserBehavior.csv"
    src.write_text("\n".join(TAOBAO_LINES) + "\n")
    assert main(["taobao", "--out", str(tmp_path / "out"), str(src)]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 rows into 3 partition(s)" in out
    assert "malformed lines skipped: 2" in out and "rows with null event_time: 1" in out
    assert main(["taobao", "--out", str(tmp_path / "snap"), "--snapshot-ds", "2017-12-03",
                 str(src)]) == 0
    assert "ds=2017-12-03: 6 rows" in capsys.readouterr().out
