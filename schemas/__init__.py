"""Schemas of every table in the pipeline (one source of truth for Spark and pyarrow)."""
from schemas.tables import *  # noqa: F401,F403
from schemas.tables import ALL_TABLES, Column, Table  # noqa: F401
