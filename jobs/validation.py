"""Input checks that stop a job with a message naming the file and the column."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import types as T

from artefacts.cli import ExpectedError
from schemas import Table


class InputError(ExpectedError):
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


def check_files_agree(folder: Path | str, columns: list[str]) -> None:
    """Raise InputError naming two files of `folder` whose types of a column differ.

    Spark reads a folder's schema from one file and fails mid-job (a long Java stack)
    on a file that disagrees; this reads only the footers, on the driver, first. A
    file that is not Parquet is named too.
    """
    first: dict[str, tuple[pa.DataType, Path]] = {}
    for f in sorted(Path(folder).rglob("*")):
        if not f.is_file() or f.name.startswith(("_", ".")):
            continue
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{f}: not a readable Parquet file ({e})") from None
        for name in columns:
            if name not in schema.names:
                continue  # check_schema reports a missing column
            t = schema.field(name).type
            seen = first.setdefault(name, (t, f))
            if seen[0] != t:
                raise InputError(f"{folder}: column '{name}' is {seen[0]} in {seen[1].name} "
                                 f"but {t} in {f.name}: rewrite one of the files with the "
                                 f"other's type")
