"""Amazon review sequences in the S3-Rec format (e.g. `Beauty.txt`).

* `<name>.txt`: one line per user, `user item_1 ... item_n`, oldest item first.
  There are no timestamps: event_time = `base_time` + position seconds, so each
  user's file order is the time order (positions continue if a user recurs).
  Every interaction is a "click".
* `<name>_item2attributes.json`: `{item: [attribute ids]}`, categories and brands
  merged in one id space.

Attribute heuristic. S3-Rec built each list as [brand (if known), then the item's
category path(s) without the root "Beauty"], e.g. [40, 17, 2, 41, 42, 43] is
brand 40, then Skin Care > Face > ... > leaf. The data bear this out (Beauty:
637 attributes; 202 ever appear at list position >= 1, they are categories with
a small set of top-level departments 17, 4, 1, 64, 15, 8 always first among them;
the other 435 appear only at position 0, each on few items (median 9): brands).
So:
  categories = attributes seen at a position >= 1 anywhere in the file;
  brand_id    = the first attribute when it is not a category, else null;
  category_id = the last category attribute of the list: the most specific one,
                like Tmall's leaf categories (~195 values on Beauty; the first one
                would give only ~6 departments).
Items without attributes get null category and brand.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from ingest.importers.common import (
    TIMESTAMP,
    InputFormatError,
    ReadStats,
    raw_table,
    require_file,
)

log = logging.getLogger(__name__)

# The Amazon 2014 reviews end in July 2014; the exact instant only has to be fixed.
DEFAULT_BASE_TIME = datetime(2014, 7, 1, tzinfo=timezone.utc)


def attribute_map(item2attributes_json: Path | str) -> dict[str, tuple[str | None, str | None]]:
    """item id -> (category_id, brand_id) by the heuristic of the module docstring."""
    path = require_file(item2attributes_json)
    try:
        raw = json.loads(path.read_bytes())  # JSON is UTF-8 (or -16/-32, detected)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFormatError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise InputFormatError(f"{path}: expected a JSON object {{item: [attributes]}}")
    lists = {str(k): [str(a) for a in v] for k, v in raw.items()}
    categories = {a for attrs in lists.values() for a in attrs[1:]}
    out: dict[str, tuple[str | None, str | None]] = {}
    for item, attrs in lists.items():
        brand = attrs[0] if attrs and attrs[0] not in categories else None
        cats = [a for a in attrs if a in categories]
        out[item] = (cats[-1] if cats else None, brand)
    return out


def read_amazon_seq(seq_txt: Path | str, item2attributes_json: Path | str | None = None, *,
                    base_time: datetime = DEFAULT_BASE_TIME,
                    stats: ReadStats | None = None) -> pa.Table:
    """All interactions as RAW_EVENTS data rows, in file order."""
    stats = stats if stats is not None else ReadStats()
    path = require_file(seq_txt)
    attrs = attribute_map(item2attributes_json) if item2attributes_json is not None else {}
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    next_pos: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw_line in enumerate(f, 1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as e:  # one bad line, not the whole file
                stats.add_malformed(f"{path}:{lineno}: {raw_line[:40]!r} (not UTF-8: "
                                    f"byte {raw_line[e.start]:#04x} at {e.start})")
                continue
            tokens = line.split()
            if not tokens:
                continue  # blank line: no data
            user, seq = tokens[0], tokens[1:]
            if not seq:
                stats.add_malformed(f"{path}:{lineno}: {line.rstrip()!r} (user without items)")
                continue
            start = next_pos.get(user, 0)
            next_pos[user] = start + len(seq)
            users.extend([user] * len(seq))
            items.extend(seq)
            positions.extend(range(start, start + len(seq)))
    base_us = int(base_time.timestamp()) * 1_000_000
    times = pa.array(base_us + np.asarray(positions, np.int64) * 1_000_000, TIMESTAMP)
    item_attrs = [attrs.get(i, (None, None)) for i in items]
    table = raw_table(pa.array(users, pa.string()), pa.array(items, pa.string()), times,
                      category_id=pa.array([a[0] for a in item_attrs], pa.string()),
                      brand_id=pa.array([a[1] for a in item_attrs], pa.string()))
    missing = len(set(items) - attrs.keys()) if attrs else 0
    if missing:
        log.warning("%s: %d item(s) have no attributes (null category and brand)", path, missing)
    stats.rows += table.num_rows
    return table
