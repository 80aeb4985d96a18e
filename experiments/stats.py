"""Standard errors of hit rates and of their differences (pure functions, no I/O)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def hr_se(hr: float, users: int) -> float:
    """Binomial standard error of a hit rate over `users` independent users."""
    return math.sqrt(max(hr * (1.0 - hr), 0.0) / users) if users else float("nan")


def relative(value: float, reference: float) -> float:
    """(value - reference) / reference; nan when the reference is 0."""
    return (value - reference) / reference if reference else float("nan")


def paired_difference(hits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-user difference of two hit vectors on the SAME
    users: much tighter than the two HRs' own errors when the methods agree on most users."""
    d = np.asarray(hits, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error sd / sqrt(n) (sample sd, n - 1); SE is nan for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
