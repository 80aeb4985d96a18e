"""Coupling heat map, interest report, and the cluster-recovery measure on known answers."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mind_model.config import ModelConfig
from mind_model.interpret import (
    GroundTruth,
    cluster_recovery,
    coupling_heatmap,
    coupling_matrices,
    interest_report,
    load_truth,
)
from mind_model.metrics import interest_diversity
from mind_model.model import MIND

L = 8
N_CLUSTERS, PER_CLUSTER = 3, 25
N_ITEMS = 2 + N_CLUSTERS * PER_CLUSTER
ITEM_CLUSTER = np.concatenate([[-1, -1], np.repeat(np.arange(N_CLUSTERS), PER_CLUSTER)])


def items_of(c: int) -> np.ndarray:
    return np.flatnonzero(ITEM_CLUSTER == c)


def samples_from(hists: list[list[int]]) -> dict:
    hist = np.zeros((len(hists), L), dtype=np.int64)
    for i, h in enumerate(hists):
        hist[i, :len(h)] = h
    return {"user_idx": np.arange(10, 10 + len(hists)), "hist": hist,
            "hist_len": np.array([len(h) for h in hists]), "target": np.full(len(hists), 2)}


@pytest.fixture(scope="module")
def random_model() -> MIND:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=N_ITEMS, embed_dim=8, n_interests=4, max_len=L, tower_hidden=(8,),
                      profile_vocab={"gender": 3}, profile_dim=2)
    return MIND(cfg).eval()


@pytest.fixture(scope="module")
def cluster_model() -> MIND:
    """Item embeddings = one-hot of the item's cluster, S = I, tower = identity: an
    interest vector is squash(sum of its behaviours' coupling weights per cluster)."""
    cfg = ModelConfig(n_items=N_ITEMS, embed_dim=N_CLUSTERS + 1, n_interests=3, max_len=L,
                      tower_hidden=())
    m = MIND(cfg).eval()
    with torch.no_grad():
        w = torch.zeros(N_ITEMS, N_CLUSTERS + 1)
        for i, c in enumerate(ITEM_CLUSTER):
            if c >= 0:
                w[i, c] = 1.0
        m.items.item.weight.copy_(w)
        m.routing.S.weight.copy_(torch.eye(N_CLUSTERS + 1))
        m.tower.mlp[0].weight.copy_(torch.eye(N_CLUSTERS + 1))
        m.tower.mlp[0].bias.zero_()
    return m


def test_recovery_measure_hand_built():
    masses = [
        [{1: 3, 2: 1}, {1: 2}],          # both interests on cluster 1; T = {1, 2}
        [{4: 2, 3: 1}],                  # wrong cluster; T = {3}
        [{5: 1, 2: 1}, {}, {7: 0.5}],    # tie -> smaller id (2); an empty interest; T = {2, 7, 9}
    ]
    true = [{1, 2}, {3}, {2, 7, 9}]
    observed = [[1, 2, 1], [3, 4], [2, 5]]  # O_u: user 3 never showed clusters 7 and 9
    got = cluster_recovery(masses, true, observed)
    assert got["coverage"] == pytest.approx(np.mean([1 / 2, 0, 2 / 3]))
    assert got["coverage_ceiling"] == pytest.approx(np.mean([1, 1, 1]))
    assert got["purity"] == pytest.approx(np.mean([3 / 4, 1, 2 / 3, 1 / 2, 1]))
    assert got["precision"] == pytest.approx(np.mean([1, 0, 1]))
    assert got["distinct"] == pytest.approx(np.mean([1 / 2, 1, 1]))
    # T ∩ O = {1, 2}, {3}, {2}
    assert got["coverage_observed"] == pytest.approx(np.mean([1 / 2, 0, 1]))
    assert got["coverage_observed_ceiling"] == pytest.approx(1.0)
    assert got["users"] == 3


def test_recovery_measure_perfect_and_collapsed():
    true = [{0, 1, 2}] * 2
    perfect = cluster_recovery([[{0: 5}, {1: 5}, {2: 5}]] * 2, true)
    for key in ("coverage", "purity", "precision", "distinct"):
        assert perfect[key] == 1.0
    collapsed = cluster_recovery([[{0: 5, 1: 1}, {0: 4}, {0: 3, 2: 2}]] * 2, true)
    assert collapsed["coverage"] == pytest.approx(1 / 3)
    assert collapsed["distinct"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        cluster_recovery([[{0: 1}]], [])


def test_coupling_heatmap_png_and_shapes(random_model, tmp_path):
    rng = np.random.default_rng(0)
    hists = [rng.integers(2, N_ITEMS, size=n).tolist() for n in (8, 3, 5, 1)]
    s = samples_from(hists)
    s["gender_idx"] = np.array([1, 2, 1, 2])
    path = tmp_path / "figs" / "coupling.png"
    names = {i: f"item-{i}" for i in range(N_ITEMS)}
    mats = coupling_heatmap(random_model, s, [0, 1, 2, 3], path, item_names=names)
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["coupling.png"]  # no temporary left
    # K'_u = max(1, min(K, floor(log2 n))) rows, one column per real behaviour
    assert [m.shape for m in mats] == [(3, 8), (1, 3), (2, 5), (1, 1)]
    for m in mats:  # each behaviour spreads itself over the active interests
        np.testing.assert_allclose(m.sum(0), 1.0, atol=1e-5)
    # the same as the model's routing output
    with torch.no_grad():
        out = random_model.interest_capsules(torch.as_tensor(s["hist"]),
                                             torch.as_tensor(s["hist_len"]))
    np.testing.assert_allclose(mats[0], out.coupling[0, :3, :8].numpy())
    np.testing.assert_allclose(coupling_matrices(random_model, s, [2])[0], mats[2])


def test_heatmap_needs_routing(tmp_path):
    from mind_model.config import youtube_dnn

    m = MIND(youtube_dnn(ModelConfig(n_items=N_ITEMS, embed_dim=4, max_len=L))).eval()
    with pytest.raises(ValueError, match="routing"):
        coupling_heatmap(m, samples_from([[2, 3]]), [0], tmp_path / "x.png")


def test_interest_report_known_answers(cluster_model):
    c0, c1, c2 = items_of(0), items_of(1), items_of(2)
    hists = [
        [c0[0], c0[1], c1[0]],                              # K' = 1: one interest takes everything
        [c0[2], c1[1], c0[3], c1[2], c0[4], c1[3], c2[0]],  # K' = 2
        [c2[1], c2[2], c2[3], c2[4]],                       # K' = 2, one cluster only
    ]
    s = samples_from(hists)
    truth = GroundTruth(ITEM_CLUSTER.copy(), {10: np.array([0, 1]), 11: np.array([0, 1, 2]),
                                              12: np.array([2, 0])})
    rep = interest_report(cluster_model, s, truth, n_top=20, batch_size=2)
    assert rep["users"] == 3
    assert rep["k_active"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    assert rep["k_active_mean"] == pytest.approx(5 / 3)
    rt, ro = rep["recovery"]["retrieval"], rep["recovery"]["routing"]
    # user 10, K' = 1: w = 1 on every behaviour -> routing mass {0: 2, 1: 1}, label 0
    # the interest vector points at cluster 0, its top 20 are all cluster-0 items
    assert rt["users"] == ro["users"] == 3
    # with one-hot cluster embeddings both views give each interest the same label ...
    for key in ("coverage", "precision", "distinct", "coverage_observed"):
        assert rt[key] == pytest.approx(ro[key])
    # ... every label is a cluster the user showed (all behaviours are in T_u) ...
    assert rt["precision"] == 1.0
    # ... and retrieval is pure: each interest's top 20 lie in one cluster of 25 items
    assert rt["purity"] == 1.0
    # user 12 only shows cluster 2: coverage 1/2, observed coverage 1; user 10 covers {0} of {0, 1}
    single = interest_report(cluster_model, samples_from([hists[0]]), GroundTruth(
        ITEM_CLUSTER.copy(), {10: np.array([0, 1])}))
    assert single["recovery"]["retrieval"]["coverage"] == pytest.approx(0.5)
    assert single["recovery"]["routing"]["purity"] == pytest.approx(2 / 3)
    assert single["recovery"]["routing"]["coverage_observed_ceiling"] == pytest.approx(0.5)
    only2 = interest_report(cluster_model, samples_from([hists[2]]), GroundTruth(
        ITEM_CLUSTER.copy(), {10: np.array([2, 0])}))["recovery"]["retrieval"]
    assert only2["coverage"] == pytest.approx(0.5) and only2["coverage_observed"] == 1.0
    assert only2["distinct"] == pytest.approx(0.5)  # two interests, both on cluster 2


def test_interest_report_diversity_matches_metrics(random_model):
    rng = np.random.default_rng(1)
    hists = [rng.integers(2, N_ITEMS, size=int(n)).tolist() for n in rng.integers(1, L + 1, 13)]
    s = samples_from(hists)
    s["gender_idx"] = rng.integers(1, 3, 13)
    rep = interest_report(random_model, s, batch_size=4)
    with torch.no_grad():
        V, mask = random_model.user_interests(torch.as_tensor(s["hist"]),
                                              torch.as_tensor(s["hist_len"]),
                                              {"gender_idx": torch.as_tensor(s["gender_idx"])})
    assert rep["diversity"] == pytest.approx(interest_diversity(V, mask), abs=1e-6)
    assert sum(rep["k_active"].values()) == pytest.approx(1.0)
    assert "recovery" not in rep
    assert not math.isnan(rep["k_active_mean"])


def test_load_truth_maps_raw_ids(tmp_path):
    seq = tmp_path / "seq"
    vocabs = {"item": [("i9", 2), ("i7", 3), ("i8", 4)], "user": [("u1", 2), ("u2", 3)]}
    for name, rows in vocabs.items():
        (seq / "vocab" / name).mkdir(parents=True)
        table = pa.table({"value": [r[0] for r in rows],
                          "idx": pa.array([r[1] for r in rows], pa.int32()),
                          "first_ds": ["2026-01-01"] * len(rows)})
        pq.write_table(table, seq / "vocab" / name / "part-0.parquet")
    truth = tmp_path / "truth"
    truth.mkdir()
    pq.write_table(pa.table({"item_id": ["i7", "i9", "i0"],
                             "cluster_id": pa.array([5, 6, 7], pa.int32())}),
                   truth / "items.parquet")
    pq.write_table(pa.table({"user_id": ["u2", "u3"], "clusters": [[5, 6], [7]]}),
                   truth / "user_interests.parquet")
    t = load_truth(truth, seq)
    assert t.item_cluster.tolist() == [-1, -1, 6, 5, -1]  # i8 has no truth; i0 was filtered out
    assert list(t.user_clusters) == [3] and t.user_clusters[3].tolist() == [5, 6]
