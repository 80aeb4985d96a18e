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
# Widened where a data set's best point sat on an edge: ALS's alpha 40 (Yelp, Beauty),
# item-CF's window 20 / recent 10 (MovieLens, whose users rate films in sessions).
GRIDS: dict[str, dict[str, Sequence[Any]]] = {
    "als": {"factors": (64, 128, 256), "regularization": (0.01, 0.1, 1.0),
            "alpha": (5.0, 20.0, 40.0, 80.0)},
    "itemcf": {"window": (1, 2, 3, 5, 10, 20, 50), "recent": (3, 5, 10, 20, 50)},
}


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def at_edge(evidence: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen parameters that lie on the smallest or largest value tried for them (axes
    of numbers with at least two values): a wider grid there may find a better point."""
    edge = {}
    for key, value in chosen.items():
        tried = {e["params"][key] for e in evidence if key in e["params"]}
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tried)
        if len(tried) >= 2 and numeric and value in (min(tried), max(tried)):
            edge[key] = value
    return edge


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
    edge = at_edge(evidence, evidence[best]["params"])
    if edge:
        log.warning("baseline %s: the best point is on the grid's edge at %s; a wider grid may "
                    "score higher", name, edge)
    return {**(fixed or {}), **evidence[best]["params"]}, evidence
