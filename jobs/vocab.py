"""Stable, distributed vocabularies: raw id -> dense id, extended day by day.

Existing values keep their index; today's new values are appended in a deterministic
order (most frequent first, then by value). The index of a new value is its rank in
that order, computed like RDD.zipWithIndex without leaving the DataFrame API:

    1. range-partition and sort the new values (a distributed sort, no single partition);
    2. tag each row with its partition and its position inside it
       (monotonically_increasing_id = partition << 33 | position);
    3. count the rows of each partition (one small row per partition reaches the driver)
       and turn the counts into per-partition offsets;
    4. idx = previous max idx + offset[partition] + position + 1.

The order is total (values are unique), so the ids do not depend on how Spark splits
the data: local mode and a cluster give the same vocabulary.
"""
from __future__ import annotations

from itertools import accumulate

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from schemas import FIRST_IDX, VOCAB

_POSITION_BITS = 33  # monotonically_increasing_id: the partition id sits above bit 33


def extend_vocab(values: DataFrame, previous: DataFrame | None, ds: str) -> DataFrame:
    """Previous vocabulary + today's new values appended (most frequent first).

    `values` has columns (value, n). Existing values keep their index; the result
    is deterministic for the same inputs, so a rerun of a ds reproduces it exactly.
    The result is persisted (MEMORY_AND_DISK); the caller unpersists it.
    """
    spark = values.sparkSession
    if previous is None:
        previous = spark.createDataFrame([], VOCAB.spark_schema())
    last = previous.agg(F.max("idx")).first()[0]  # one number, whatever the vocabulary size
    base = FIRST_IDX - 1 if last is None else last
    new = values.join(previous.select("value"), "value", "left_anti")
    # (partition, position) of every new value in the global order, fixed once computed
    tagged = (new.orderBy(F.col("n").desc(), F.col("value"))
              .select("value", F.spark_partition_id().alias("pid"),
                      F.monotonically_increasing_id().alias("mid"))
              .persist(StorageLevel.MEMORY_AND_DISK))
    counts = dict(tagged.groupBy("pid").count().collect())  # one row per partition
    n_parts = max(counts, default=-1) + 1
    starts = [0, *accumulate(counts.get(p, 0) for p in range(n_parts))][:n_parts]
    start = (F.element_at(F.array(*[F.lit(s) for s in starts]), F.col("pid") + 1)
             if starts else F.lit(0))
    position = F.col("mid") - F.shiftleft(F.col("pid").cast("long"), _POSITION_BITS)
    appended = tagged.select(
        "value", (F.lit(base + 1) + start + position).cast("int").alias("idx"),
        F.lit(ds).alias("first_ds"))
    # materialised here, so that the tags are computed once and their cache can go
    out = previous.unionByName(appended).persist(StorageLevel.MEMORY_AND_DISK)
    out.count()
    tagged.unpersist()
    return out
