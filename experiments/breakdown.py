"""Where a method wins: HR@N of held-out users split into groups, with paired differences.

Two groupings of the same held-out users (pure functions over per-user hits):

- `k_active_groups(hist_len)`: the number of interests MIND gives a user with this many
  behaviours, K'_u = max(1, min(K, floor(log2 |I_u|))), shown as 1, 2, 3 and "4+"
  (K >= 4), i.e. histories of 1-3, 4-7, 8-15 and 16+ behaviours: where multiple
  interests can pay.
- `target_groups(targets, own)`: whether the held-out target is a rare or new item
  (fewer than min_item_count events of training users: it shares the unknown id's
  embedding) or not.

`breakdown(hits, groups, reference)` gives, per group, each method's HR@N and its HR@50
difference from the reference method on the same users with the paired standard error.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from experiments.stats import paired_difference
from mind_model.metrics import HR_NS

K_ACTIVE_LABELS = ("1", "2", "3", "4+")
TARGET_LABELS = ("rare or new", "frequent")


def k_active_groups(hist_len: np.ndarray) -> np.ndarray:
    """(U,) labels "1", "2", "3", "4+" from history lengths (K'_u with K >= 4)."""
    n = np.maximum(np.asarray(hist_len, dtype=np.int64), 1)
    k = np.clip(np.floor(np.log2(n)).astype(np.int64), 1, 4)
    return np.asarray(K_ACTIVE_LABELS, dtype=object)[k - 1]


def target_groups(targets: np.ndarray, own: np.ndarray) -> np.ndarray:
    """(U,) labels: "rare or new" where the target has no id embedding of its own."""
    targets = np.asarray(targets, dtype=np.int64)
    own = np.asarray(own, dtype=bool)
    has_own = np.zeros(len(targets), dtype=bool)
    known = targets < len(own)
    has_own[known] = own[targets[known]]
    return np.where(has_own, TARGET_LABELS[1], TARGET_LABELS[0]).astype(object)


def breakdown(hits: Mapping[str, Mapping[int, np.ndarray]], groups: np.ndarray,
              reference: str, labels: Sequence[str], ns: Sequence[int] = HR_NS,
              diff_n: int = 50) -> dict[str, dict[str, Any]]:
    """{group: {"users": U_g, "methods": {m: {"hr@N": ..., "diff_hr@50": ...,
    "diff_hr@50_se": ...}}}} for each label that has users, in `labels` order.

    hits: method -> {N: (U,) bool, True where the user's target is in the top N}."""
    groups = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        sel = groups == label
        if not sel.any():
            continue
        rows: dict[str, dict[str, float]] = {}
        for m, h in hits.items():
            row = {f"hr@{n}": float(np.mean(h[n][sel])) for n in ns if n in h}
            if reference in hits and m != reference:
                row[f"diff_hr@{diff_n}"], row[f"diff_hr@{diff_n}_se"] = paired_difference(
                    h[diff_n][sel], hits[reference][diff_n][sel])
            rows[m] = row
        out[label] = {"users": int(sel.sum()), "methods": rows}
    return out


def markdown(table: Mapping[str, Mapping[str, Any]], names: Mapping[str, str], title: str,
             reference_name: str, n: int = 50) -> str:
    """One row per method, one column per group: HR@n and the paired difference from the
    reference method (SE)."""
    if not table:
        return ""
    labels = list(table)
    methods = list(next(iter(table.values()))["methods"])
    head = " | ".join(f"{g} ({table[g]['users']} users)" for g in labels)
    lines = [f"{title} — HR@{n}, and HR@{n} − {reference_name} (paired SE):", "",
             f"| Method | {head} |", "|---|" + "---:|" * len(labels)]
    for m in methods:
        cells = []
        for g in labels:
            row = table[g]["methods"].get(m, {})
            cell = f"{row.get(f'hr@{n}', float('nan')):.4f}"
            if f"diff_hr@{n}" in row:
                cell += f" ({row[f'diff_hr@{n}']:+.4f} ± {row[f'diff_hr@{n}_se']:.4f})"
            cells.append(cell)
        lines.append(f"| {names.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
