"""HR by group (K'_u, rare targets) with paired differences, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.breakdown import (
    K_ACTIVE_LABELS,
    breakdown,
    k_active_groups,
    markdown,
    target_groups,
)


def test_k_active_groups_follow_the_dynamic_interest_rule():
    lens = np.array([0, 1, 3, 4, 7, 8, 15, 16, 50])
    assert list(k_active_groups(lens)) == ["1", "1", "1", "2", "2", "3", "3", "4+", "4+"]


def test_target_groups_by_own_id_embedding():
    own = np.array([True, True, False, True, False])  # ids 2 and 4 are rare
    targets = np.array([2, 3, 4, 9])  # 9 is newer than the vocabulary
    assert list(target_groups(targets, own)) == ["rare or new", "frequent", "rare or new",
                                                 "rare or new"]


def test_breakdown_by_hand():
    groups = np.array(["1", "1", "2", "2", "2", "4+"], dtype=object)
    hits = {"youtube": {10: np.array([0, 0, 1, 0, 0, 1], bool),
                        50: np.array([1, 0, 1, 0, 1, 1], bool)},
            "mind": {10: np.array([0, 1, 0, 0, 1, 1], bool),
                     50: np.array([1, 1, 1, 1, 0, 1], bool)}}
    out = breakdown(hits, groups, "youtube", K_ACTIVE_LABELS, ns=(10, 50))
    assert list(out) == ["1", "2", "4+"]  # "3" has no users
    assert [out[g]["users"] for g in out] == [2, 3, 1]
    g2 = out["2"]["methods"]
    assert g2["youtube"]["hr@50"] == pytest.approx(2 / 3)
    assert g2["mind"]["hr@50"] == pytest.approx(2 / 3)
    assert g2["mind"]["hr@10"] == pytest.approx(1 / 3)
    # per-user differences in group "2": 0, +1, -1 -> mean 0, sd 1, SE 1/sqrt(3)
    assert g2["mind"]["diff_hr@50"] == pytest.approx(0.0)
    assert g2["mind"]["diff_hr@50_se"] == pytest.approx(1 / math.sqrt(3))
    assert "diff_hr@50" not in g2["youtube"]  # the reference has no difference from itself
    assert out["1"]["methods"]["mind"]["diff_hr@50"] == pytest.approx(0.5)
    text = markdown(out, {"mind": "MIND-K", "youtube": "YouTube DNN"}, "By K'_u", "YouTube DNN")
    assert "| MIND-K | 1.0000 (+0.5000 ± 0.5000) | 0.6667 (+0.0000 ± 0.5774) | 1.0000" in text
    assert "2 (3 users)" in text

