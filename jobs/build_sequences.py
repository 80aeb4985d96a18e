"""Spark job: raw behaviour logs -> behaviour sequences (Parquet) for one ds.

    extract(spark, cfg)              the look-back window's raw partitions, the profiles and
                                     the vocabulary of the latest earlier ds
    quarantine(raw, window_start)    malformed rows annotated with the first rule they break
    deduplicate_and_filter(...)      exact duplicates and rare items / users removed (one
                                     shuffle by user, jobs.user_events), written once to a
                                     scratch folder that later steps read; every input row
                                     accounted for
    transform(events, ..., cfg)      vocabularies, users, items, split, training / evaluation /
                                     serving sequences (pure: DataFrames in, DataFrames out)
    load(outputs, ..., cfg)          every table + stats.json into a temporary folder,
                                     renamed into place when complete

Output, all under `<data_root>/sequences/ds=<ds>/` and published in one rename:
    train/ valid/ test/ latest/ users/ items/ quarantine/ vocab/<name>/ stats.json
Identity reported in stats.json and checked before anything is published:
    input = kept + quarantined + duplicates + filtered
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial, reduce
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from artefacts.cli import run_main
from artefacts.layout import check_ds
from artefacts.storage import config_record, scratch_dir, staged_dir, write_json
from jobs.progress import Stage
from jobs.spark import add_spark_arguments, split_spark_arguments, start_spark
from jobs.user_events import COUNT_COLUMN, distinct_events_with_counts
from jobs.validation import InputError, check_files_agree, check_schema
from jobs.vocab import extend_vocabularies
from schemas import (
    BEHAVIORS,
    EVAL_SAMPLES,
    ITEM_FEATURES,
    LATEST_SEQUENCES,
    PAD_IDX,
    PROFILE_COLUMNS,
    PROFILE_FIELDS,
    QUARANTINE,
    RAW_EVENTS,
    TRAIN_CHUNKS,
    UNK_IDX,
    USER_PROFILES,
    USERS,
    VOCAB,
    VOCAB_NAMES,
    Table,
)

log = logging.getLogger(__name__)

EVENT_COLUMNS = RAW_EVENTS.data_names  # user_id ... event_time
SPLITS = ("train", "valid", "test")
RARE_ITEMS = ("keep", "drop")
MAX_LOOKBACK_DAYS = 36_600  # a century: imported history (MovieLens 1996..2018) fits
# C, targets per training row; chosen by measurement (README, "Training data as sequence
# chunks"): bytes and time fall steeply up to C ~ L and barely beyond.
CHUNK_TARGETS = 50


@dataclass
class PrepConfig:
    """Parameters of the build-sequences job (defaults suit daily Tmall-like logs)."""

    data_root: Path
    ds: str                      # the run's date, YYYY-MM-DD: the last day of the window
    lookback_days: int = 30      # window = [ds - lookback_days + 1, ds]
    min_item_count: int = 5      # training events an item needs for its own id embedding
    min_user_count: int = 5
    rare_items: str = "keep"     # "keep": in histories and catalogue; "drop": the paper's filter
    filter_rounds: int = 1       # with rare_items="drop": item-then-user passes (>1: k-core)
    max_len: int = 50            # L: behaviours kept before each target (hist padded to L)
    chunk_targets: int = CHUNK_TARGETS  # C: consecutive targets per training row
    split_buckets: int = 20      # users hashed into buckets: 1 test bucket => 19:1
    valid_buckets: int = 1       # buckets taken from the training side for validation
    seed: int = 42
    min_row_groups: int = 16     # >= the largest number of training processes
    rows_per_file: int = 200_000
    write_threads: int = 4       # tables written side by side (Spark jobs from driver threads)
    master: str | None = None    # Spark master URL; None -> MIND_SPARK_MASTER or local[*]
    events_dir: Path | None = None    # default <data_root>/raw/events
    profiles_dir: Path | None = None  # default <data_root>/raw/profiles (optional input)
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        check_ds(self.ds)  # ValueError naming --ds
        for flag, value in (("--lookback-days", self.lookback_days), ("--max-len", self.max_len),
                            ("--chunk-targets", self.chunk_targets),
                            ("--filter-rounds", self.filter_rounds),
                            ("--split-buckets", self.split_buckets),
                            ("--min-row-groups", self.min_row_groups),
                            ("--rows-per-file", self.rows_per_file),
                            ("--write-threads", self.write_threads)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if min(self.min_item_count, self.min_user_count) < 0:
            raise ValueError("--min-item-count and --min-user-count must be >= 0")
        if self.lookback_days > MAX_LOOKBACK_DAYS:
            raise ValueError(f"--lookback-days {self.lookback_days} is more than "
                             f"{MAX_LOOKBACK_DAYS} (a hundred years)")
        if not 0 <= self.valid_buckets < self.split_buckets - 1:
            raise ValueError(f"--valid-buckets {self.valid_buckets} must be >= 0 and leave at "
                             f"least one training bucket of --split-buckets {self.split_buckets}")
        if self.rare_items not in RARE_ITEMS:
            raise ValueError(f"rare_items must be one of {RARE_ITEMS}, got {self.rare_items!r}")

    @property
    def events_root(self) -> Path:
        return Path(self.events_dir or self.data_root / "raw" / "events")

    @property
    def profiles_root(self) -> Path:
        return Path(self.profiles_dir or self.data_root / "raw" / "profiles")

    @property
    def output_root(self) -> Path:
        return self.data_root / "sequences"

    @property
    def output_dir(self) -> Path:
        return self.output_root / f"ds={self.ds}"

    def window_days(self) -> list[str]:
        end = dt.date.fromisoformat(self.ds)
        return [(end - dt.timedelta(days=k)).isoformat()
                for k in range(self.lookback_days - 1, -1, -1)]


# ------------------------------------------------------------------------- extract


def read_raw_events(spark: SparkSession, cfg: PrepConfig) -> tuple[DataFrame, list[str]]:
    """Union of the window's raw partitions, typed as RAW_EVENTS plus `source_ds`.

    The run's own partition must exist; missing earlier days are reported, not fatal.
    """
    own = cfg.events_root / f"ds={cfg.ds}"
    if not own.is_dir():
        raise InputError(f"raw events partition for ds={cfg.ds} not found: {own}")
    frames, missing = [], []
    for day in cfg.window_days():
        path = cfg.events_root / f"ds={day}"
        if not path.is_dir():
            missing.append(day)
            continue
        check_files_agree(path, EVENT_COLUMNS)
        try:
            df = spark.read.parquet(str(path))
        except Exception as e:  # an empty folder or unreadable files
            raise InputError(f"{path}: cannot read raw events: {e}") from e
        extra = check_schema(df.schema, RAW_EVENTS, str(path))
        if extra:
            log.info("%s: ignoring extra columns %s", path, extra)
        typed = [F.col(c).cast(RAW_EVENTS.spark_schema()[c].dataType).alias(c)
                 for c in EVENT_COLUMNS]
        frames.append(df.select(*typed, F.lit(day).alias("source_ds")))
    if missing:
        log.warning("%d day(s) of the window have no raw partition: %s",
                    len(missing), ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return reduce(DataFrame.unionByName, frames), missing


def read_profiles(spark: SparkSession, cfg: PrepConfig) -> DataFrame | None:
    path = cfg.profiles_root
    if not path.is_dir():
        log.info("no user profiles at %s: profile ids will be 'unknown'", path)
        return None
    df = spark.read.parquet(str(path))
    check_schema(df.schema, USER_PROFILES, str(path))
    return df.select(*[F.col(c).cast("string").alias(c) for c in USER_PROFILES.names])


def previous_vocab_dir(cfg: PrepConfig) -> Path | None:
    """The vocabulary of the latest earlier ds that was built (ids stay stable from it)."""
    if not cfg.output_root.is_dir():
        return None
    earlier = sorted(p for p in cfg.output_root.glob("ds=*")
                     if p.name[3:] < cfg.ds and (p / "vocab").is_dir())
    return earlier[-1] / "vocab" if earlier else None


def read_previous_vocab(spark: SparkSession, cfg: PrepConfig) -> DataFrame | None:
    """Every vocabulary of the latest earlier ds as (name, value, idx, first_ds), or None."""
    folder = previous_vocab_dir(cfg)
    if folder is None:
        return None
    log.info("extending the vocabulary of %s", folder.parent.name)
    frames = []
    for name in VOCAB_NAMES:
        path = folder / name
        if path.is_dir():
            df = spark.read.parquet(str(path))
            check_schema(df.schema, VOCAB, str(path))
            frames.append(df.select(F.lit(name).alias("name"), *VOCAB.names))
    return reduce(DataFrame.unionByName, frames) if frames else None


# ----------------------------------------------------------------------- transform


def annotate_quarantine(events: DataFrame, window_start: str) -> DataFrame:
    """Add `reason`: the first rule a row breaks, or null for a well-formed row.

    An event must lie inside the job's window and not after the end of the
    day of the partition it was logged in (no events from the future).
    """
    def blank(c: str):
        return F.col(c).isNull() | (F.trim(F.col(c)) == "")

    behavior = F.lower(F.trim(F.col("behavior")))  # the quarantine keeps the original value

    partition_end = F.to_timestamp(F.date_add(F.to_date(F.col("source_ds")), 1))
    reason = (F.when(blank("user_id"), "null_user_id")
              .when(blank("item_id"), "null_item_id")
              .when(behavior.isNull() | ~behavior.isin(*BEHAVIORS),
                    "unknown_behavior")
              .when(F.col("event_time").isNull(), "null_event_time")
              .when((F.col("event_time") < F.to_timestamp(F.lit(window_start)))
                    | (F.col("event_time") >= partition_end), "event_time_outside_window"))
    return events.withColumn("reason", reason)


def drop_rare_items(events: DataFrame, *, min_item_count: int, min_user_count: int,
                    rounds: int) -> DataFrame:
    """The paper's filter: `rounds` passes that drop items, then users, with too few
    interactions. `COUNT_COLUMN` is recounted: the user's events that remain.

    Not the default: by default rare items stay (in histories, as targets and in the
    catalogue), share the unknown id's embedding and are told apart by their side features
    (`id_embedding` in the items table), so an item launched yesterday can be retrieved
    today; only users with fewer than `min_user_count` events go."""
    for _ in range(rounds):
        items = (events.groupBy("item_id").count()
                 .where(F.col("count") >= min_item_count).select("item_id"))
        events = events.join(items, "item_id", "left_semi")
        users = (events.groupBy("user_id").count()
                 .where(F.col("count") >= min_user_count).select("user_id"))
        events = events.join(users, "user_id", "left_semi")
    return events.withColumn(COUNT_COLUMN,
                             F.count(F.lit(1)).over(Window.partitionBy("user_id")))


def user_split(user_id, n_events, cfg: PrepConfig):
    """The split of a user (column): a seeded hash of the raw id, so a user keeps its split
    from day to day; a held-out user needs a behaviour before its target (n_events >= 2)."""
    bucket = F.pmod(F.xxhash64(F.lit(cfg.seed), user_id), F.lit(cfg.split_buckets))
    holdout_ok = n_events >= 2
    return (F.when(holdout_ok & (bucket == 0), "test")
            .when(holdout_ok & (bucket <= cfg.valid_buckets), "valid")
            .otherwise("train"))


def with_idx(df: DataFrame, vocab: DataFrame, raw: str, out: str) -> DataFrame:
    """Map raw id column `raw` to its dense id `out` (unknown / null -> UNK_IDX)."""
    v = vocab.select(F.col("value").alias(raw), F.col("idx").alias(out))
    return (df.join(v, raw, "left")
            .withColumn(out, F.coalesce(F.col(out), F.lit(UNK_IDX)).cast("int")))


def padded(arr, length, max_len: int):
    """Right-pad an int array column to max_len with PAD_IDX."""
    return F.concat(arr, F.array_repeat(F.lit(PAD_IDX), F.lit(max_len) - length))


def last_items(items, end, max_len: int):
    """Up to max_len items before 0-based position `end` (exclusive), oldest first."""
    start = F.greatest(F.lit(0), end - F.lit(max_len))
    return F.slice(items, start + 1, end - start)  # slice is 1-based


def count_values(df: DataFrame, columns: dict[str, str], weight: str | None = None
                 ) -> DataFrame:
    """(name, value, n): how often each non-null value of each column occurs (`columns`
    maps vocabulary name -> column), counting a row as `weight` events when given; one
    aggregation per column, all in one Spark job."""
    n = F.count(F.lit(1)) if weight is None else F.sum(weight)
    return reduce(DataFrame.unionByName, [
        df.where(F.col(c).isNotNull()).groupBy(F.col(c).alias("value"))
        .agg(n.cast("long").alias("n")).select(F.lit(name).alias("name"), "value", "n")
        for name, c in columns.items()])


def one_profile_per_user(profiles: DataFrame | None, events: DataFrame) -> DataFrame | None:
    """The profile row of each kept user, chosen deterministically (nulls last)."""
    if profiles is None:
        return None
    first = Window.partitionBy("user_id").orderBy(
        *[F.col(f).asc_nulls_last() for f in PROFILE_FIELDS])
    return (profiles.join(events.select("user_id").distinct(), "user_id", "left_semi")
            .withColumn("rk", F.row_number().over(first))
            .where("rk = 1").drop("rk"))


def item_side_counts(events: DataFrame, cfg: PrepConfig) -> DataFrame:
    """Events per (item, category, brand): the latest time, the events and those of
    training users. One hash aggregation of all events (the keys are few per item) that
    the item, category and brand vocabularies and the items table all read."""
    # the event's user split from the event itself (user_id, n_events): no join with the users
    in_train = (user_split(F.col("user_id"), F.col(COUNT_COLUMN), cfg) == "train").cast("long")
    return (events.groupBy("item_id", "category_id", "brand_id")
            .agg(F.max("event_time").alias("event_time"), F.count(F.lit(1)).alias("n"),
                 F.sum(in_train).alias("n_train")))


def build_vocabularies(events: DataFrame, item_sides: DataFrame,
                       user_profiles: DataFrame | None, prev_vocab: DataFrame | None,
                       ds: str) -> DataFrame:
    """Raw -> dense id for users, items, side ids and profile fields, stable across days:
    (name, value, idx, first_ds), all names extended in one sort (jobs.vocab), persisted.
    Values are ranked by their number of events (`item_sides`: item_side_counts)."""
    values = count_values(events, {"user": "user_id"}).unionByName(
        count_values(item_sides, {"item": "item_id", "category": "category_id",
                                  "brand": "brand_id"}, weight="n"))
    if user_profiles is not None:
        values = values.unionByName(count_values(user_profiles, {f: f for f in PROFILE_FIELDS}))
    return extend_vocabularies(values, prev_vocab, ds)


def item_table(item_sides: DataFrame, vocab: dict[str, DataFrame],
               cfg: PrepConfig) -> DataFrame:
    """ITEM_FEATURES: every kept item, its latest side ids, its interaction counts (all
    users, training users) and whether it gets its own id embedding.

    The latest event's side ids (ties: the larger category, then brand, non-null first)
    are the max of (time, category, brand) over the item's (category, brand) groups of
    `item_sides`, each the max of its events: the same as over the events, and a sort of
    ~one row per item instead of every event (the items write: 11.5 -> 4.1 s at 10M
    events, 37 -> 6 s at 30M; README)."""
    latest = F.max(F.struct("event_time", "category_id", "brand_id"))
    items = (item_sides.groupBy("item_id")
             .agg(latest.alias("latest"), F.sum("n").alias("interactions"),
                  F.sum("n_train").alias("train_interactions"))
             .withColumn("id_embedding",
                         F.col("train_interactions") >= F.lit(cfg.min_item_count))
             .select("item_id", "latest.category_id", "latest.brand_id", "interactions",
                     "train_interactions", "id_embedding"))
    items = with_idx(items, vocab["item"], "item_id", "item_idx")
    items = with_idx(items, vocab["category"], "category_id", "category_idx")
    items = with_idx(items, vocab["brand"], "brand_id", "brand_idx")
    return items.select(*ITEM_FEATURES.names)


def user_sequences(events: DataFrame, vocab: dict[str, DataFrame],
                   user_profiles: DataFrame | None, cfg: PrepConfig) -> DataFrame:
    """One row per user: item idx in time order (ties broken by item), n_events, user_idx,
    split and profile idx. (Events equal in time and item but not in behaviour give the
    same items in either order, so the behaviour stays out of the collected structs.)"""
    ev = with_idx(events, vocab["item"], "item_id", "item_idx")
    seqs = (ev.groupBy("user_id")
            .agg(F.array_sort(F.collect_list(F.struct("event_time", "item_idx"))).alias("evs"))
            .select("user_id", F.col("evs.item_idx").alias("items"))
            .withColumn("n_events", F.size("items").cast("long")))
    seqs = with_idx(seqs, vocab["user"], "user_id", "user_idx")

    seqs = seqs.withColumn("split", user_split(F.col("user_id"), F.col("n_events"), cfg))

    if user_profiles is not None:
        seqs = seqs.join(user_profiles, "user_id", "left")
    else:
        seqs = seqs.select("*", *[F.lit(None).cast("string").alias(f) for f in PROFILE_FIELDS])
    for f in PROFILE_FIELDS:
        seqs = with_idx(seqs, vocab[f], f, f"{f}_idx")
    return seqs


def training_chunks(seqs: DataFrame, max_len: int, chunk_targets: int) -> DataFrame:
    """TRAIN_CHUNKS (+ `t`, the position of the chunk's first target): every position
    t >= 1 of a training user's sequence, C = chunk_targets consecutive targets per row,
    each row with the up-to-L items before its first target.

    A user's n events cost ceil((n - 1) / C) rows of L + C ints instead of n - 1 rows of
    L + 1: the shuffle and the write move ~(1 + L / C) ints per event, not ~L."""
    L, C, seq = max_len, chunk_targets, F.col("items")

    def chunk(k):
        first = k * C + 1  # 0-based position of the chunk's first target
        n_hist = F.least(first, F.lit(L))
        n_t = F.least(F.lit(C), F.size(seq) - first)
        return F.struct(first.alias("t"),
                        padded(last_items(seq, first, L), n_hist, L).alias("hist"),
                        n_hist.alias("hist_len"),
                        padded(F.slice(seq, first + 1, n_t), n_t, C).alias("targets"),
                        n_t.alias("n_targets"))

    n_chunks = F.ceil((F.size(seq) - 1) / F.lit(C)).cast("int")
    return (seqs.where((F.col("split") == "train") & (F.col("n_events") >= 2))
            .select("user_idx", *PROFILE_COLUMNS,
                    F.inline(F.transform(F.sequence(F.lit(0), n_chunks - 1), chunk))))


def heldout_samples(seqs: DataFrame, max_len: int, seed: int) -> DataFrame:
    """EVAL_SAMPLES (+ split): one interacted item of each held-out user, chosen at random
    (seeded), is the target; the behaviours before it are the history."""
    L = max_len
    pos = (F.lit(1) + F.pmod(F.xxhash64(F.lit(seed + 1), F.col("user_id")),
                             F.size("items") - 1)).cast("int")
    return (seqs.where(F.col("split").isin("valid", "test"))
            .withColumn("target_pos", pos)
            .withColumn("h", last_items(F.col("items"), F.col("target_pos"), L))
            .select("split", "user_idx",
                    padded(F.col("h"), F.size("h"), L).alias("hist"),
                    F.size("h").cast("int").alias("hist_len"),
                    F.element_at("items", F.col("target_pos") + 1).cast("int").alias("target"),
                    "target_pos", F.col("items").alias("full_seq"), *PROFILE_COLUMNS))


def latest_sequences(seqs: DataFrame, max_len: int) -> DataFrame:
    """LATEST_SEQUENCES: every user's last L items, for serving."""
    L, n = max_len, F.size("items")
    return (seqs.withColumn("h", last_items(F.col("items"), n, L))
            .select("user_idx", padded(F.col("h"), F.size("h"), L).alias("hist"),
                    F.size("h").cast("int").alias("hist_len"), "user_id", *PROFILE_COLUMNS))


def transform(events: DataFrame, profiles: DataFrame | None,
              prev_vocab: DataFrame | None, cfg: PrepConfig) -> dict[str, DataFrame]:
    """Kept events -> vocabularies, users, items, training / evaluation / latest sequences.

    What it persists is listed under "persisted"; the caller unpersists it."""
    user_profiles = one_profile_per_user(profiles, events)
    if user_profiles is not None:  # read by the vocabulary and by the sequences
        user_profiles = user_profiles.persist(StorageLevel.MEMORY_AND_DISK)
    item_sides = item_side_counts(events, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    vocab_all = build_vocabularies(events, item_sides, user_profiles, prev_vocab, cfg.ds)
    vocab = {name: vocab_all.where(F.col("name") == name).select(*VOCAB.names)
             for name in VOCAB_NAMES}
    # the item vocabulary is joined with every event: cached on its own, Spark plans that
    # join with its real size (a small vocabulary is broadcast, the events stay in place)
    vocab["item"] = vocab["item"].persist(StorageLevel.MEMORY_AND_DISK)
    vocab["item"].count()
    seqs = user_sequences(events, vocab, user_profiles, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    heldout = heldout_samples(seqs, cfg.max_len, cfg.seed)
    return {
        "vocab_all": vocab_all, "vocab": vocab, "items": item_table(item_sides, vocab, cfg),
        "persisted": [df for df in (user_profiles, item_sides, vocab_all, vocab["item"], seqs)
                      if df is not None],
        "users": seqs.select(*USERS.names),
        "seqs": seqs, "train": training_chunks(seqs, cfg.max_len, cfg.chunk_targets),
        "valid": heldout.where(F.col("split") == "valid").drop("split"),
        "test": heldout.where(F.col("split") == "test").drop("split"),
        "latest": latest_sequences(seqs, cfg.max_len),
    }


def split_sizes(seqs: DataFrame, chunk_targets: int) -> dict[str, dict[str, int]]:
    """Per split: users, and the training samples (positions t >= 1) and chunks they give
    (counted from the persisted sequences, so the training table is computed only once)."""
    t = F.greatest(F.col("n_events") - 1, F.lit(0))
    rows = (seqs.groupBy("split")
            .agg(F.count(F.lit(1)).alias("users"), F.sum(t).alias("samples"),
                 F.sum(F.ceil(t / F.lit(chunk_targets))).alias("chunks")).collect())
    return {r["split"]: {k: int(r[k]) for k in ("users", "samples", "chunks")} for r in rows}


def length_histogram(seqs: DataFrame) -> dict[str, int]:
    """Users per sequence-length bucket [2^k, 2^(k+1))."""
    rows = (seqs.groupBy(F.floor(F.log2("n_events")).cast("int").alias("k"))
            .count().orderBy("k").collect())
    return {f"{2 ** r['k']}-{2 ** (r['k'] + 1) - 1}": r["count"] for r in rows}


# ---------------------------------------------------------------------------- load


def _conform(df: DataFrame, table: Table) -> DataFrame:
    """Select and cast to the table's schema (the writer's last check)."""
    schema = table.spark_schema()
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def write_table(df: DataFrame, path: Path, table: Table, *, files: int,
                sort_by: list[str] | None = None) -> None:
    if sort_by:  # hash-partitioned then sorted: the same input gives the same files' content
        df = df.repartition(files, sort_by[0]).sortWithinPartitions(*sort_by)
    else:
        df = df.coalesce(files)
    t0 = time.time()
    _conform(df, table).write.mode("overwrite").parquet(str(path))
    log.info("wrote %s in %.1fs", path.relative_to(path.parents[1]) if table is VOCAB
             else path.name, time.time() - t0)  # where the time goes (bench-prep reports it)


def n_files(rows: int, cfg: PrepConfig, minimum: int = 1) -> int:
    return max(minimum, math.ceil(rows / cfg.rows_per_file))


def run_side_by_side(writes: Sequence[Callable[[], None]], threads: int) -> None:
    """Call every `writes` function from up to `threads` driver threads. Spark runs the jobs
    of different threads at once, so the single task of a small table (vocabularies, items,
    the held-out users) runs on a core that a larger table's last tasks leave idle. Every
    write ends before the first error, if any, is raised: nothing still writes into the
    staging folder when it is removed."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="write") as pool:
        futures = [pool.submit(w) for w in writes]
    for f in futures:
        f.result()  # re-raises the write's exception


# ----------------------------------------------------------------------------- run


@dataclass
class RawInputs:
    """What the job reads: the window's events, the optional profiles, yesterday's vocabulary."""

    events: DataFrame
    missing_days: list[str]
    profiles: DataFrame | None
    prev_vocab: DataFrame | None  # every vocabulary: (name, value, idx, first_ds)


def extract(spark: SparkSession, cfg: PrepConfig) -> RawInputs:
    raw, missing = read_raw_events(spark, cfg)
    return RawInputs(raw, missing, read_profiles(spark, cfg), read_previous_vocab(spark, cfg))


def quarantine(raw: DataFrame, window_start: str) -> tuple[DataFrame, dict[str | None, int]]:
    """Annotated events and the count of rows per reason (None = well formed).

    Not cached: each reader (the counts, the de-duplication, the quarantine table) scans the
    raw Parquet files again, which costs less than putting every event in the cache (10M
    events: the stage took 44 s with the cache; README, bench-prep)."""
    annotated = annotate_quarantine(raw, window_start)
    by_reason = {r["reason"]: r["count"] for r in annotated.groupBy("reason").count().collect()}
    return annotated, by_reason


def distinct_events(annotated: DataFrame) -> DataFrame:
    """The well-formed events without exact duplicates, each with its user's number of
    distinct events (`COUNT_COLUMN`): one shuffle of all events by user and one pass over
    them (`jobs.user_events`)."""
    valid = (annotated.where(F.col("reason").isNull())
             .withColumn("behavior", F.lower(F.trim("behavior"))).select(*EVENT_COLUMNS))
    return distinct_events_with_counts(valid, EVENT_COLUMNS)


def deduplicate_and_filter(annotated: DataFrame, by_reason: dict[str | None, int],
                           cfg: PrepConfig, scratch: Path) -> tuple[DataFrame, dict[str, int]]:
    """The kept events with their user's event count (`COUNT_COLUMN`), and the row
    accounting input = kept + quarantined + duplicates + filtered, checked.

    The distinct events are computed once and written to `scratch` (Parquet, on the
    output's storage), which every later step reads: writing them costs ~4 s at 10M events
    where Spark's in-memory cache cost ~15 s (README, bench-prep). The kept ones are a
    filter over them (with the paper's item filter, persisted).
    """
    path = str(scratch / "distinct_events")
    distinct_events(annotated).write.mode("overwrite").parquet(path)
    distinct = annotated.sparkSession.read.parquet(path)
    enough = (F.col(COUNT_COLUMN) >= cfg.min_user_count)
    n_distinct, n_kept = distinct.agg(F.count(F.lit(1)), F.sum(enough.cast("long"))).first()
    kept = distinct.where(enough)
    if cfg.rare_items == "drop":
        kept = drop_rare_items(distinct.drop(COUNT_COLUMN), min_item_count=cfg.min_item_count,
                               min_user_count=cfg.min_user_count, rounds=cfg.filter_rounds
                               ).persist(StorageLevel.MEMORY_AND_DISK)
        n_kept = kept.count()
    n_kept = n_kept or 0  # sum over no rows is null
    n_valid = by_reason.get(None, 0)
    counts = {
        "input": sum(by_reason.values()),
        "quarantined": sum(v for k, v in by_reason.items() if k is not None),
        "duplicates": n_valid - n_distinct,
        "filtered": n_distinct - n_kept,
        "kept": n_kept,
    }
    identity = counts["kept"] + counts["quarantined"] + counts["duplicates"] + counts["filtered"]
    if identity != counts["input"]:  # cannot happen unless a transform loses rows
        raise AssertionError(f"row accounting broken: {counts}")
    if n_kept == 0:
        raise InputError(
            f"no events left for ds={cfg.ds} after quarantine and filtering ({counts}); "
            f"lower min_item_count/min_user_count or check {cfg.events_root}")
    return kept, counts


def load(out: dict[str, DataFrame], quarantined: DataFrame, train: DataFrame,
         counts: dict[str, Any], stats: dict[str, Any], cfg: PrepConfig, stage: Stage,
         t0: float) -> None:
    """Write every table and stats.json into a temporary folder, renamed in when complete.
    `stats` is completed here with what only the writing step knows."""
    n_users, splits = stats["users"]["total"], stats["users"]
    with staged_dir(cfg.output_dir) as tmp:
        if not counts["quarantined"]:  # known empty: no second scan of every raw event
            quarantined = quarantined.sparkSession.createDataFrame([], QUARANTINE.spark_schema())
        writes = [  # the largest first, so the small ones fill in around it
            partial(write_table, train, tmp / "train", TRAIN_CHUNKS,
                    files=n_files(stats["train_samples"], cfg, cfg.min_row_groups),
                    sort_by=["user_idx", "t"]),
            partial(write_table, out["items"], tmp / "items", ITEM_FEATURES, files=1),
            *[partial(write_table, out[split], tmp / split, EVAL_SAMPLES,
                      files=n_files(splits[split], cfg)) for split in ("valid", "test")],
            partial(write_table, out["latest"], tmp / "latest", LATEST_SEQUENCES,
                    files=n_files(n_users, cfg)),
            partial(write_table, out["users"], tmp / "users", USERS, files=n_files(n_users, cfg)),
            partial(write_table, quarantined, tmp / "quarantine", QUARANTINE,
                    files=n_files(counts["quarantined"], cfg)),
            *[partial(write_table, df, tmp / "vocab" / name, VOCAB, files=1)
              for name, df in out["vocab"].items()],
        ]
        run_side_by_side(writes, cfg.write_threads)
        largest = dict(out["vocab_all"].groupBy("name").agg(F.max("idx")).collect())
        vocab_sizes = {name: int(largest.get(name) or UNK_IDX) + 1 for name in out["vocab"]}

        stage("statistics")
        # counted from the written table: out["items"] would recompute it from all events
        # (33 s at 30M events)
        items = out["items"].sparkSession.read.parquet(str(tmp / "items"))
        own = {r["id_embedding"]: r["count"]
               for r in items.groupBy("id_embedding").count().collect()}
        stats.update(items=sum(own.values()), items_sharing_unknown_id=own.get(False, 0),
                     vocab_sizes=vocab_sizes,
                     sequence_length_histogram=length_histogram(out["seqs"]))
        stats["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / "stats.json", stats)


def run_statistics(cfg: PrepConfig, inputs: RawInputs, window_start: str,
                   counts: dict[str, int], by_reason: dict[str | None, int],
                   per_split: dict[str, dict[str, int]]) -> dict[str, Any]:
    """stats.json, but for what only the writing step knows (`load` adds it)."""
    split_counts = {s: r["users"] for s, r in per_split.items()}
    return {
        "ds": cfg.ds,
        "window": {"start": window_start, "end": cfg.ds,
                   "missing_days": len(inputs.missing_days),
                   "missing_days_first": inputs.missing_days[:10]},
        "counts": counts,
        "identity_holds": True,
        "quarantined_by_reason": {k: v for k, v in by_reason.items() if k is not None},
        "users": {"total": sum(split_counts.values()),
                  **{s: split_counts.get(s, 0) for s in SPLITS}},
        "train_samples": per_split.get("train", {}).get("samples", 0),
        "train_chunks": per_split.get("train", {}).get("chunks", 0),
        "eval_samples": {s: split_counts.get(s, 0) for s in ("valid", "test")},
        "profiles_present": inputs.profiles is not None,
        "config": config_record(cfg),
    }


def run(cfg: PrepConfig, spark: SparkSession | None = None) -> dict[str, Any]:
    """Build the sequences of `cfg.ds`; returns the statistics written to stats.json."""
    spark = spark or start_spark("mind-build-sequences", cfg.master, cfg.spark_conf)
    stage = Stage(6, log)
    t0 = time.time()

    stage("reading raw events")
    inputs = extract(spark, cfg)
    stage("quarantining malformed rows")
    window_start = cfg.window_days()[0]
    annotated, by_reason = quarantine(inputs.events, window_start)
    with scratch_dir(cfg.output_dir) as scratch:  # the distinct events; gone at the end
        stage("de-duplicating and filtering")
        kept, counts = deduplicate_and_filter(annotated, by_reason, cfg, scratch)

        stage("building vocabularies, users, items and sequences")
        out = transform(kept, inputs.profiles, inputs.prev_vocab, cfg)
        per_split = split_sizes(out["seqs"], cfg.chunk_targets)
        stats = run_statistics(cfg, inputs, window_start, counts, by_reason, per_split)

        stage(f"writing {cfg.output_dir}")
        load(out, annotated.where(F.col("reason").isNotNull()), out["train"], counts, stats,
             cfg, stage, t0)
        for df in (kept, *out["persisted"]):
            df.unpersist()
    log.info("ds=%s: %s -> %d train samples, %d users, %d items in %.1fs",
             cfg.ds, counts, stats["train_samples"], stats["users"]["total"], stats["items"],
             stats["seconds"])
    return stats


def parse_args(argv: list[str] | None = None) -> PrepConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = PrepConfig(data_root=Path("."), ds="2000-01-01")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--ds", required=True, help="run date YYYY-MM-DD (last day of the window)")
    p.add_argument("--lookback-days", type=int, default=d.lookback_days)
    p.add_argument("--min-item-count", type=int, default=d.min_item_count)
    p.add_argument("--min-user-count", type=int, default=d.min_user_count)
    p.add_argument("--rare-items", choices=RARE_ITEMS, default=d.rare_items,
                   help="keep: rare items stay (shared id embedding, side features); drop: "
                        "remove items below --min-item-count (the paper's filter)")
    p.add_argument("--filter-rounds", type=int, default=d.filter_rounds)
    p.add_argument("--max-len", type=int, default=d.max_len)
    p.add_argument("--chunk-targets", type=int, default=d.chunk_targets,
                   help="C: consecutive training targets stored per row of the train table")
    p.add_argument("--split-buckets", type=int, default=d.split_buckets)
    p.add_argument("--valid-buckets", type=int, default=d.valid_buckets)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--min-row-groups", type=int, default=d.min_row_groups)
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file)
    p.add_argument("--write-threads", type=int, default=d.write_threads,
                   help="output tables written side by side (1: one after the other)")
    p.add_argument("--events-dir", type=Path, default=None)
    p.add_argument("--profiles-dir", type=Path, default=None)
    add_spark_arguments(p)
    options, conf = split_spark_arguments(p.parse_args(argv))
    return PrepConfig(**options, spark_conf=conf)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, expected=(InputError,))


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = parse_args(argv)
    stats = run(cfg)
    c = stats["counts"]
    print(f"ds={cfg.ds}: input {c['input']:,} = kept {c['kept']:,} + quarantined "
          f"{c['quarantined']:,} + duplicates {c['duplicates']:,} + filtered {c['filtered']:,}")
    print(f"users {stats['users']['total']:,} (train {stats['users']['train']:,}, valid "
          f"{stats['users']['valid']:,}, test {stats['users']['test']:,}), items "
          f"{stats['items']:,}, train samples {stats['train_samples']:,} -> {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
