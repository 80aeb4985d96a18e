"""`--set` overrides of the experiment commands: TrainConfig fields, for every variant or one.

    ["embed_dim=32", "mind.n_interests=3", "tower_hidden=256,128"]
    -> ({"embed_dim": 32, "tower_hidden": (256, 128)}, {"mind": {"n_interests": 3}})
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

from mind_model.train import VARIANTS, TrainConfig


def parse_value(raw: str, type_name: str) -> Any:
    """JSON when it parses, a tuple for a comma list, else the string ("inf" -> float inf)."""
    value: Any
    if raw.lower() in ("inf", "infinity"):
        value = math.inf
    elif "," in raw:
        value = tuple(json.loads(x) for x in raw.split(",") if x)
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
    if type_name.startswith("tuple") and not isinstance(value, tuple):
        value = (value,)  # "tower_hidden=256": one layer
    return value


def parse_overrides(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """[ "[VARIANT.]FIELD=VALUE", ...] -> (common overrides, {variant: overrides})."""
    common: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {}
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        variant, dot, name = key.partition(".")
        if not dot:
            variant, name = "", key
        elif variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} in {item!r} (one of {VARIANTS})")
        if name not in types:
            raise ValueError(f"unknown TrainConfig field {name!r} in {item!r}")
        (per.setdefault(variant, {}) if variant else common)[name] = parse_value(raw, types[name])
    return common, per
