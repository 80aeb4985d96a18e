"""Stable, distributed vocabularies: raw id -> dense id, extended day by day.

Existing values keep their index; today's new values are appended in a deterministic
order (most frequent first, then by value). All of a run's vocabularies (users, items,
side ids, profile fields) are extended together, in one distributed sort, rows tagged
with the vocabulary's `name`. The index of a new value is its rank among its
vocabulary's new values, computed like RDD.zipWithIndex without leaving the DataFrame API:

    1. range-partition and sort the new values by (name, -n, value) (a distributed
       sort, no single partition);
    2. tag each row with its partition and its position inside it
       (monotonically_increasing_id = partition << 33 | position);
    3. count the rows of each (partition, name) (one small row each reaches the driver)
       and turn the counts into per-(partition, name) offsets;
    4. idx = previous max idx of the name + offset[partition, name] + position + 1.

The order is total (values are unique within a name), so the ids do not depend on how
Spark splits the data: local mode and a cluster give the same vocabulary.
"""
from __future__ import annotations

from collections import defaultdict

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from schemas import FIRST_IDX, VOCAB

_POSITION_BITS = 33  # monotonically_increasing_id: the partition id sits above bit 33


def partition_offsets(counts: list[tuple[int, str, int]],
                      bases: dict[str, int]) -> list[tuple[int, str, int]]:
    """(pid, name, offset) such that idx = offset + position in the partition, where
    `counts` holds the rows per (pid, name) of new values sorted by (name, ...) across
    partitions in pid order and `bases` the previous max idx per name."""
    seen: dict[str, int] = defaultdict(int)  # rows of the name in earlier partitions
    out = []
    by_pid: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for pid, name, n in counts:
        by_pid[pid].append((name, n))
    for pid in sorted(by_pid):
        before = 0  # rows of smaller names earlier in this partition
        for name, n in sorted(by_pid[pid]):
            out.append((pid, name, bases.get(name, FIRST_IDX - 1) + 1 + seen[name] - before))
            seen[name] += n
            before += n
    return out


def extend_vocabularies(values: DataFrame, previous: DataFrame | None, ds: str) -> DataFrame:
    """Previous vocabularies + today's new values appended (most frequent first).

    `values` has columns (name, value, n): how often each value of each vocabulary occurs
    today; `previous` (name, value, idx, first_ds). Existing values keep their index; the
    result (name, value, idx, first_ds) is deterministic for the same inputs, so a rerun
    of a ds reproduces it exactly. It is persisted (MEMORY_AND_DISK); the caller
    unpersists it."""
    spark = values.sparkSession
    if previous is None:  # a first run: every value is new, every name starts at FIRST_IDX
        new, bases = values, {}
    else:  # one row per vocabulary, whatever their sizes
        bases = {r[0]: r[1] for r in previous.groupBy("name").agg(F.max("idx")).collect()}
        new = values.join(previous.select("name", "value"), ["name", "value"], "left_anti")
    # (partition, position) of every new value in the global order, fixed once computed
    tagged = (new.orderBy("name", F.col("n").desc(), "value")
              .select("name", "value", F.spark_partition_id().alias("pid"),
                      F.monotonically_increasing_id().alias("mid"))
              .persist(StorageLevel.MEMORY_AND_DISK))
    counts = [(r["pid"], r["name"], r["count"])  # one row per (partition, vocabulary)
              for r in tagged.groupBy("pid", "name").count().collect()]
    offsets = spark.createDataFrame(partition_offsets(counts, bases),
                                    "pid int, name string, offset long")
    position = F.col("mid") - F.shiftleft(F.col("pid").cast("long"), _POSITION_BITS)
    appended = (tagged.join(F.broadcast(offsets), ["pid", "name"])
                .select("name", "value", (F.col("offset") + position).cast("int").alias("idx"),
                        F.lit(ds).alias("first_ds")))
    # materialised here, so that the tags are computed once and their cache can go
    if previous is not None:
        appended = previous.select("name", *VOCAB.names).unionByName(appended)
    out = appended.persist(StorageLevel.MEMORY_AND_DISK)
    out.count()
    tagged.unpersist()
    return out

