"""The build-sequences job on a real Spark standalone cluster (master + worker on loopback)
gives the same output as local mode."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from jobs import build_sequences
from jobs.build_sequences import run
from jobs.cluster import StandaloneCluster, spark_submit
from tests.test_build_sequences import D2, config, make_logs

pytestmark = [pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow]

TABLES = ("train", "valid", "test", "latest", "users", "items", "quarantine",
          "vocab/item", "vocab/user", "vocab/category")


def content(folder) -> dict[str, list[str]]:
    return {t: sorted(map(str, pq.read_table(folder / t).to_pylist())) for t in TABLES}


def test_standalone_cluster_matches_local(spark, tmp_path):
    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    make_logs(local_root)
    shutil.copytree(local_root / "raw", cluster_root / "raw")
    local_stats = run(config(local_root), spark)

    cfg = config(cluster_root)
    args = ["--data-root", str(cluster_root), "--ds", D2, "--lookback-days", "2",
            "--min-item-count", "2", "--min-user-count", "2", "--max-len", str(cfg.max_len),
            "--chunk-targets", str(cfg.chunk_targets),
            "--min-row-groups", "3", "--split-buckets", "5", "--valid-buckets", "1",
            "--seed", str(cfg.seed)]
    with StandaloneCluster(workers=1, cores=2, memory="1g") as cluster:
        assert cluster.alive_workers() == 1
        proc = spark_submit(cluster.master_url, build_sequences.__file__, args,
                            conf={"spark.executor.memory": "1g",
                                  "spark.sql.shuffle.partitions": "4"})
        assert "input " in proc.stdout
        # The job really ran on the cluster (not in a local master inside spark-submit).
        assert cluster.completed_apps() == ["mind-build-sequences"]
        processes = list(cluster.procs)
    assert processes and all(p.poll() is not None for p in processes)  # the cluster is stopped

    out_local = local_root / "sequences" / f"ds={D2}"
    out_cluster = cluster_root / "sequences" / f"ds={D2}"
    cluster_stats = json.loads((out_cluster / "stats.json").read_text())
    assert cluster_stats["counts"] == local_stats["counts"]
    assert content(out_cluster) == content(out_local)
