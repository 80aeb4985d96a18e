"""The non-neural baselines tuned as carefully as the model: a small grid on the valid users.

`tune(name, train, valid, n_items, candidates, grid)` fits the baseline once per point of
`grid` on the training samples, scores HR@50 on the VALID users (never the test users),
and returns the best parameters with every point's score as evidence. `experiments.compare`
then fits the chosen parameters and scores them on the split it reports.

Default grids (`GRIDS`): ALS's factors x regularisation x alpha (implicit's confidence
scale), item-CF's co-occurrence window x number of recent behaviours. Popularity has
nothing to tune.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np

from mind_model.baselines import build
from mind_model.evaluate import evaluate

log = logging.getLogger(__name__)

SELECT = "hr@50"
GRIDS: dict[str, dict[str, Sequence[Any]]] = {
    "als": {"factors": (64, 128, 256), "regularization": (0.01, 0.1, 1.0),
            "alpha": (5.0, 20.0, 40.0)},
    "itemcf": {"window": (1, 2, 3, 5, 10, 20), "recent": (3, 5, 10)},
}


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def tune(name: str, train: Mapping[str, np.ndarray], valid: Mapping[str, Any], n_items: int,
         candidates: np.ndarray, grid: Mapping[str, Sequence[Any]] | None = None,
         fixed: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(best parameters, [{"params", "hr@50", "fit_s"} per grid point]) of one baseline,
    chosen by HR@50 on `valid`; ties keep the earlier point. `fixed` parameters are
    passed to every point (e.g. num_threads)."""
    grid = GRIDS.get(name, {}) if grid is None else grid
    if not grid:
        return dict(fixed or {}), []
    evidence = []
    for params in points(grid):
        t0 = time.perf_counter()
        rec = build(name, n_items, candidates, **{**(fixed or {}), **params}).fit(train)
        score = float(evaluate(rec, valid)[SELECT])
        evidence.append({"params": params, SELECT: score, "fit_s": time.perf_counter() - t0})
        log.info("baseline %s %s: valid %s %.4f", name, params, SELECT, score)
    best = max(range(len(evidence)), key=lambda i: (evidence[i][SELECT], -i))
    return {**(fixed or {}), **evidence[best]["params"]}, evidence
