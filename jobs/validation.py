"""Input checks that stop a job with a message naming the file and the column."""
from __future__ import annotations

from pyspark.sql import types as T

from schemas import Table


class InputError(RuntimeError):
    """Missing input or wrong schema: the job stops, nothing is written."""


# Logical type -> Spark types accepted on input (cast to the logical type when read).
# Ids may arrive as integers (Taobao, MovieLens) and are read as strings.
_ACCEPTED: dict[str, tuple[type, ...]] = {
    "string": (T.StringType, T.IntegerType, T.LongType),
    "timestamp": (T.TimestampType, T.TimestampNTZType),
    "int32": (T.IntegerType, T.ShortType, T.ByteType),
    "int64": (T.LongType, T.IntegerType, T.ShortType, T.ByteType),
    "float32": (T.FloatType,),
    "float64": (T.DoubleType, T.FloatType),
    "bool": (T.BooleanType,),
}


def check_schema(actual: T.StructType, table: Table, path: str) -> list[str]:
    """Raise InputError if a data column of `table` is missing or has an unusable type.

    Returns the extra columns found (they are ignored by the reader).
    """
    found = {f.name: f.dataType for f in actual.fields}
    for col in table.columns:
        if col.name in table.partition_by:
            continue
        if col.name not in found:
            raise InputError(
                f"{path}: missing column '{col.name}' ({col.dtype}) of table {table.name}; "
                f"found columns: {', '.join(sorted(found)) or 'none'}")
        accepted = _ACCEPTED.get(col.dtype)
        if accepted is not None and not isinstance(found[col.name], accepted):
            raise InputError(
                f"{path}: column '{col.name}' of table {table.name} has type "
                f"{found[col.name].simpleString()}, expected {col.dtype}")
    return sorted(set(found) - set(table.names))
