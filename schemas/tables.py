"""Every table the pipeline reads or writes, defined once.

A `Table` lists its columns with a logical type; `spark_schema()` and
`arrow_schema()` turn it into the schema of either engine, so the Spark jobs,
the pyarrow/petastorm readers and the tests all agree on names and types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # pyspark is heavy; import it only where a Spark schema is built
    from pyspark.sql.types import StructType

# Logical type name -> pyarrow type. Timestamps are UTC instants.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "list<int32>": pa.list_(pa.int32()),
    "list<float32>": pa.list_(pa.float32()),
    "list<list<float32>>": pa.list_(pa.list_(pa.float32())),
}


def _spark_type(logical: str):
    from pyspark.sql import types as T

    simple = {
        "string": T.StringType(),
        "int32": T.IntegerType(),
        "int64": T.LongType(),
        "float32": T.FloatType(),
        "float64": T.DoubleType(),
        "bool": T.BooleanType(),
        "timestamp": T.TimestampType(),
        "list<int32>": T.ArrayType(T.IntegerType(), containsNull=False),
        "list<float32>": T.ArrayType(T.FloatType(), containsNull=False),
        "list<list<float32>>": T.ArrayType(T.ArrayType(T.FloatType(), containsNull=False),
                                           containsNull=False),
    }
    return simple[logical]


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # a key of _ARROW_TYPES
    nullable: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in _ARROW_TYPES:
            raise ValueError(f"column {self.name!r}: unknown logical type {self.dtype!r}")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    doc: str = ""
    partition_by: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def data_names(self) -> list[str]:
        """Columns stored inside the files (partition columns live in the path)."""
        return [c.name for c in self.columns if c.name not in self.partition_by]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    def arrow_schema(self, *, include_partition: bool = True) -> pa.Schema:
        cols = self.columns if include_partition else [
            c for c in self.columns if c.name not in self.partition_by]
        return pa.schema([pa.field(c.name, _ARROW_TYPES[c.dtype], c.nullable) for c in cols])

    def spark_schema(self, *, include_partition: bool = True) -> "StructType":
        from pyspark.sql import types as T

        cols = self.columns if include_partition else [
            c for c in self.columns if c.name not in self.partition_by]
        return T.StructType([T.StructField(c.name, _spark_type(c.dtype), c.nullable) for c in cols])


# --------------------------------------------------------------------------- raw inputs

# Behaviour types, weakest to strongest signal (Tmall: page view / click, cart, favourite, buy).
BEHAVIORS: tuple[str, ...] = ("click", "cart", "fav", "buy")

# Profile fields carried to the model as embedding ids; all optional in the data.
PROFILE_FIELDS: tuple[str, ...] = ("gender", "age_bucket", "city_tier")
# Their dense-id columns in the prepared tables (and the model's batches).
PROFILE_COLUMNS: tuple[str, ...] = tuple(f"{f}_idx" for f in PROFILE_FIELDS)
# Item side features averaged into the item embedding.
ITEM_SIDE_FIELDS: tuple[str, ...] = ("category", "brand")

RAW_EVENTS = Table(
    "raw_events",
    (
        Column("user_id", "string", doc="raw user id as logged"),
        Column("item_id", "string", doc="raw item id"),
        Column("category_id", "string", doc="raw category id (may be null)"),
        Column("brand_id", "string", doc="raw brand or shop id (may be null)"),
        Column("behavior", "string", doc=f"one of {', '.join(BEHAVIORS)}"),
        Column("event_time", "timestamp", doc="when the event happened (UTC)"),
        Column("ds", "string", nullable=False, doc="log partition date YYYY-MM-DD"),
    ),
    doc="Raw behaviour logs, one row per event, partitioned by the day they were logged.",
    partition_by=("ds",),
)

USER_PROFILES = Table(
    "user_profiles",
    (
        Column("user_id", "string", nullable=False),
        Column("gender", "string"),
        Column("age_bucket", "string"),
        Column("city_tier", "string"),
    ),
    doc="User profile snapshot (optional input).",
)

# ---------------------------------------------------------------------- vocabularies

VOCAB = Table(
    "vocab",
    (
        Column("value", "string", nullable=False, doc="raw id"),
        Column("idx", "int32", nullable=False, doc="dense id; 0 = padding, 1 = unknown"),
        Column("first_ds", "string", nullable=False, doc="ds of the run that added it"),
    ),
    doc="Raw id -> dense id. Stable across days: existing ids keep their index, new ids append.",
)
PAD_IDX = 0
UNK_IDX = 1
FIRST_IDX = 2  # first index given to a real value
# One vocabulary per id kind.
VOCAB_NAMES: tuple[str, ...] = ("user", "item") + ITEM_SIDE_FIELDS + PROFILE_FIELDS

# --------------------------------------------------------------- data-prep outputs


def _profile_idx_columns() -> tuple[Column, ...]:
    return tuple(Column(f"{f}_idx", "int32", nullable=False, doc=f"dense {f} id (1 = unknown)")
                 for f in PROFILE_FIELDS)


ITEM_FEATURES = Table(
    "item_features",
    (
        Column("item_idx", "int32", nullable=False),
        Column("item_id", "string", nullable=False),
        Column("category_idx", "int32", nullable=False, doc="latest category seen (1 = unknown)"),
        Column("brand_idx", "int32", nullable=False, doc="latest brand seen (1 = unknown)"),
        Column("interactions", "int64", nullable=False, doc="kept events in the window"),
        Column("train_interactions", "int64", nullable=False,
               doc="kept events of training users in the window"),
        Column("id_embedding", "bool", nullable=False,
               doc="gets its own id embedding: train_interactions >= min_item_count; else it "
                   "shares the unknown id's and its side features tell it apart"),
    ),
    doc="Every item of the window (rare ones included), with its side ids.",
)

USERS = Table(
    "users",
    (
        Column("user_idx", "int32", nullable=False),
        Column("user_id", "string", nullable=False),
        Column("split", "string", nullable=False, doc="train, valid or test"),
        Column("n_events", "int64", nullable=False),
        *_profile_idx_columns(),
    ),
    doc="Every user kept by the filters, with split and profile ids.",
)

_SEQ_COLUMNS = (
    Column("user_idx", "int32", nullable=False),
    Column("hist", "list<int32>", nullable=False,
           doc="last L item idx before the target, oldest first, right-padded with 0 to L"),
    Column("hist_len", "int32", nullable=False, doc="number of real items in hist (1..L)"),
)

TRAIN_CHUNKS = Table(
    "train_chunks",
    (*_SEQ_COLUMNS,
     Column("targets", "list<int32>", nullable=False,
            doc="up to C consecutive item idx to predict, the first right after hist, "
                "right-padded with 0 to C"),
     Column("n_targets", "int32", nullable=False, doc="number of real items in targets (1..C)"),
     *_profile_idx_columns()),
    doc="The stored training table: per training user, its positions t >= 1 cut into chunks of "
        "up to C consecutive targets, each with the up-to-L items before its first target "
        "(fixed-length lists for petastorm). Target j of a chunk is the sample whose history is "
        "the last L items of hist[:hist_len] + targets[:j]; the reader expands chunks into "
        "TRAIN_SAMPLES.",
)

TRAIN_SAMPLES = Table(
    "train_samples",
    (*_SEQ_COLUMNS,
     Column("target", "int32", nullable=False, doc="item idx to predict"),
     *_profile_idx_columns()),
    doc="One training sample per position t >= 1 of a training user's sequence: what the "
        "reader yields from TRAIN_CHUNKS (not stored).",
)

EVAL_SAMPLES = Table(
    "eval_samples",
    (*_SEQ_COLUMNS,
     Column("target", "int32", nullable=False, doc="the held-out item (chosen at random, seeded)"),
     Column("target_pos", "int32", nullable=False, doc="its position in full_seq"),
     Column("full_seq", "list<int32>", nullable=False,
            doc="the user's whole sequence (variable length), for the ComiRec protocol"),
     *_profile_idx_columns()),
    doc="One row per held-out (test or valid) user: the paper's protocol.",
)

LATEST_SEQUENCES = Table(
    "latest_sequences",
    (*_SEQ_COLUMNS,
     Column("user_id", "string", nullable=False),
     *_profile_idx_columns()),
    doc="Every user's last L items, for computing serving-time interest vectors.",
)

QUARANTINE = Table(
    "quarantine",
    (
        *(c for c in RAW_EVENTS.columns if c.name != "ds"),
        Column("source_ds", "string", doc="partition the row came from"),
        Column("reason", "string", nullable=False, doc="first rule the row broke"),
    ),
    doc="Malformed raw rows, kept with the reason they were set aside.",
)

ALL_TABLES: tuple[Table, ...] = (
    RAW_EVENTS, USER_PROFILES, VOCAB, ITEM_FEATURES, USERS,
    TRAIN_CHUNKS, EVAL_SAMPLES, LATEST_SEQUENCES, QUARANTINE,
)

# ------------------------------------------------------------- serving artefacts

USER_VECTORS = Table(
    "user_vectors",
    (
        Column("user_idx", "int32", nullable=False),
        Column("user_id", "string", nullable=False),
        Column("vectors", "list<list<float32>>", nullable=False,
               doc="the K'_u ACTIVE interest vectors v_uj (K'_u x D); inactive ones are dropped"),
        Column("n_interests", "int32", nullable=False, doc="K'_u = number of vectors (1..K)"),
        Column("model_version", "string", nullable=False, doc="content hash of the model file"),
        Column("ds", "string", nullable=False, doc="ds of the sequences the vectors come from"),
    ),
    doc="Every user's serving-time interest vectors (f_user of their latest sequence + profile).",
)

ITEM_EMBEDDINGS = Table(
    "item_embeddings",
    (
        Column("item_idx", "int32", nullable=False, doc="dense id = the FAISS id"),
        Column("item_id", "string", nullable=False, doc="raw item id"),
        Column("embedding", "list<float32>", nullable=False, doc="e_i (D)"),
        Column("model_version", "string", nullable=False),
        Column("ds", "string", nullable=False),
    ),
    doc="Embeddings of today's active catalogue, exported from the model for the ANN index.",
)

ALL_TABLES = ALL_TABLES + (USER_VECTORS, ITEM_EMBEDDINGS)
