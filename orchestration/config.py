"""The orchestration settings of the pipeline, in one place (read by the DAGs and the launcher).

Every setting comes from an environment variable (set it in the Airflow deployment,
`infra/docker-compose.yml`, or before `make local-pipeline`); the default is used
when the variable is unset. No Airflow import, no I/O beyond `os.environ`: the DAG
files call `load_config()` at parse time, which must stay cheap.

Settings, as `setting (environment variable; default): meaning`:

- data_root (MIND_DATA_ROOT; ./data): root of every artefact (artefacts.layout)
- spark_conn_id (MIND_SPARK_CONN_ID; spark_mind): Airflow connection holding the Spark
  master (`AIRFLOW_CONN_SPARK_MIND`)
- spark_conf (MIND_SPARK_CONF; none): extra Spark conf, `key=value,key=value`
- driver_memory (MIND_SPARK_DRIVER_MEMORY; 2g): spark-submit --driver-memory
- lookback_days (MIND_LOOKBACK_DAYS; 30): days of raw logs behind each ds
- min_item_count (MIND_MIN_ITEM_COUNT; 5): rare-item filter
- min_user_count (MIND_MIN_USER_COUNT; 5): rare-user filter
- min_row_groups (MIND_MIN_ROW_GROUPS; 16): >= the largest training process count
- train_nproc (MIND_TRAIN_NPROC; 2): torchrun --nproc_per_node
- train_epochs (MIND_TRAIN_EPOCHS; 30): most epochs per daily retrain
- train_patience (MIND_TRAIN_PATIENCE; 3): stop after this many epochs without a better
  valid HR@50 (the best epoch is kept)
- train_settings (MIND_TRAIN_SETTINGS; none): a settings.json of `experiments.tune`: the
  settings chosen on valid users (explicit train_args win)
- train_args (MIND_TRAIN_ARGS; none): extra `mind_model.train` flags, e.g.
  `--batch-size 512 --n-neg 256`
- gate_metric (MIND_GATE_METRIC; hr@50): test metric compared by the publish gate
- gate_margin (MIND_GATE_MARGIN; 0.01): largest allowed drop (absolute) vs the published
  model
- index_shards (MIND_INDEX_SHARDS; 2): FAISS shards
- index_workers (MIND_INDEX_WORKERS; index_shards): kubernetes mode: fill pods running at
  once (the parallelism of the index build's Indexed Job, one pod per shard)
- index_args (MIND_INDEX_ARGS; none): extra `jobs.build_index` flags, e.g.
  `--recall-threshold 0.9`
- retries (MIND_RETRIES; 2): retries of every task
- retry_delay_s (MIND_RETRY_DELAY_S; 120): seconds between retries
- execution (MIND_EXECUTION; local): `local` runs Spark through spark-submit (connection
  `spark_mind`) and torchrun / the index build inside the Airflow worker; `kubernetes` runs
  them as pods (SparkApplications, an Indexed Job of torchrun nodes, the index build's plan,
  fill (an Indexed Job, a pod per shard) and finish Jobs) rendered by `orchestration.k8s`
  (infra/OPERATIONS.md)

Kubernetes mode only (`data_root` is then the PVC's mount path in every pod and in the
Airflow worker, e.g. /data):

- image (MIND_IMAGE; required): the pipeline image with registry and a fixed tag
- gpu_image (MIND_GPU_IMAGE; MIND_IMAGE): the CUDA image used by training and the index
- k8s_namespace (MIND_K8S_NAMESPACE; mind), k8s_conn_id (MIND_K8S_CONN_ID;
  kubernetes_default)
- airflow_sa (MIND_K8S_AIRFLOW_SA; airflow-worker): the Airflow workers' ServiceAccount, bound
  to the Role that lets them create and watch the pipeline's SparkApplications, Jobs and pods
- storage_class (MIND_K8S_STORAGE_CLASS; cluster default): class of the ReadWriteMany PVC
- pvc_size (MIND_K8S_PVC_SIZE; 500Gi)
- train_nodes (MIND_TRAIN_NODES; 2): torchrun nodes (pods); each runs `train_nproc`
  processes (one per GPU where train_gpus > 0)
- train_gpus (MIND_TRAIN_GPUS; 0): GPUs per training pod (0 = CPU training)
- train_max_restarts (MIND_TRAIN_MAX_RESTARTS; 0): torchrun --max-restarts (in-place
  restarts of all workers; 0 = a failure ends every node's torchrun and the Job replaces the
  pods, see infra/OPERATIONS.md)
- spark_executors (MIND_SPARK_EXECUTORS; 2), executor_cores (MIND_SPARK_EXECUTOR_CORES; 2),
  executor_memory (MIND_SPARK_EXECUTOR_MEMORY; 4g)
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPARK_CONN_ID = "spark_mind"
# What the launcher and the tests put in AIRFLOW_CONN_SPARK_MIND when it is unset.
LOCAL_SPARK_CONNECTION = '{"conn_type": "spark", "host": "local[*]"}'


EXECUTION_MODES = ("local", "kubernetes")


def _pinned_image(ref: str) -> bool:
    """registry/name:tag or name@sha256:..., with a registry host and a tag other than latest."""
    if "@sha256:" in ref:
        return "/" in ref
    name, _, tag = ref.rpartition(":")
    return bool(name) and "/" in name and tag not in ("", "latest") and "/" not in tag


def _parse_conf(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"MIND_SPARK_CONF: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True)
class PipelineConfig:
    data_root: Path = Path("data")
    spark_conn_id: str = DEFAULT_SPARK_CONN_ID
    spark_conf: dict[str, str] = field(default_factory=dict)
    driver_memory: str = "2g"
    lookback_days: int = 30
    min_item_count: int = 5
    min_user_count: int = 5
    min_row_groups: int = 16
    train_nproc: int = 2
    train_epochs: int = 30
    train_patience: int = 3
    train_settings: Path | None = None
    train_args: tuple[str, ...] = ()
    gate_metric: str = "hr@50"
    gate_margin: float = 0.01
    index_shards: int = 2
    index_workers: int | None = None  # None: index_shards
    index_args: tuple[str, ...] = ()
    retries: int = 2
    retry_delay_s: int = 120
    execution: str = "local"
    image: str | None = None
    gpu_image: str | None = None
    k8s_namespace: str = "mind"
    k8s_conn_id: str = "kubernetes_default"
    airflow_sa: str = "airflow-worker"
    storage_class: str | None = None
    pvc_size: str = "500Gi"
    train_nodes: int = 2
    train_gpus: int = 0
    train_max_restarts: int = 0
    spark_executors: int = 2
    executor_cores: int = 2
    executor_memory: str = "4g"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_root", Path(self.data_root).absolute())
        if self.index_workers is None:  # every shard's pod at once
            object.__setattr__(self, "index_workers", self.index_shards)
        if self.train_nproc < 1 or self.lookback_days < 1 or self.index_shards < 1:
            raise ValueError("train_nproc, lookback_days and index_shards must be >= 1")
        if self.index_workers < 1:
            raise ValueError(f"MIND_INDEX_WORKERS must be >= 1, got {self.index_workers}")
        if self.gate_margin < 0:
            raise ValueError("gate_margin must be >= 0")
        if self.execution not in EXECUTION_MODES:
            raise ValueError(f"MIND_EXECUTION: one of {EXECUTION_MODES}, got {self.execution!r}")
        if self.execution == "kubernetes":
            for name, image in (("MIND_IMAGE", self.image), ("MIND_GPU_IMAGE", self.gpu_image)):
                if image is not None and not _pinned_image(image):
                    raise ValueError(f"{name}: {image!r} needs a registry and a fixed tag or "
                                     "digest (not :latest), e.g. ghcr.io/org/mind-pipeline:0.1.0")
            if self.image is None:
                raise ValueError("MIND_IMAGE is required with MIND_EXECUTION=kubernetes")
            if self.train_nodes < 1 or self.train_gpus < 0 or self.train_max_restarts < 0:
                raise ValueError("train_nodes >= 1, train_gpus >= 0, train_max_restarts >= 0")

    # ------------------------------------------------------------ command lines

    def prep_args(self, ds: str) -> list[str]:
        """Arguments of jobs/build_sequences.py for one ds."""
        return ["--data-root", str(self.data_root), "--ds", ds,
                "--lookback-days", str(self.lookback_days),
                "--min-item-count", str(self.min_item_count),
                "--min-user-count", str(self.min_user_count),
                "--min-row-groups", str(max(self.min_row_groups, self.train_nproc)),
                *self.conf_args()]

    def embed_args(self, ds: str) -> list[str]:
        return ["--data-root", str(self.data_root), "--ds", ds, *self.conf_args()]

    def conf_args(self) -> list[str]:
        """spark_conf as the jobs' own `--conf` flags: they override the jobs' defaults
        (jobs.spark.DEFAULT_CONF), which a spark-submit `--conf` would not."""
        return [a for k, v in sorted(self.spark_conf.items()) for a in ("--conf", f"{k}={v}")]

    def index_command(self, ds: str) -> str:
        """The whole index build in one process (local mode; kubernetes runs it in stages)."""
        return shlex.join([sys.executable, "-m", "jobs.build_index", "--stage", "all",
                           "--data-root", str(self.data_root), "--ds", ds,
                           "--shards", str(self.index_shards), *self.index_args])

    def spark_env(self) -> dict[str, str]:
        """Environment of spark-submit: the project's interpreter on the driver and executors,
        its bin/ (spark-submit) first on PATH, loopback unless configured."""
        bin_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
            "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                        os.environ.get("PYTHONPATH")])),
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            "PYTHONHASHSEED": "0",
        }
        # the driver's advertised/bind address (jobs.spark), for executors on other hosts
        for name in ("JAVA_HOME", "MIND_SPARK_DRIVER_HOST", "MIND_SPARK_DRIVER_BIND"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env

    def spark_job(self, name: str) -> str:
        """Path of a Spark job's script (submitted as the application)."""
        return str(PROJECT_ROOT / "jobs" / f"{name}.py")


def load_config(env: Mapping[str, str] | None = None) -> PipelineConfig:
    """The configuration from the environment (see the module docstring)."""
    e = os.environ if env is None else env

    def get(name: str, conv, default):
        v = e.get(name)
        return default if v is None or v == "" else conv(v)

    d = PipelineConfig()
    return PipelineConfig(
        data_root=get("MIND_DATA_ROOT", Path, PROJECT_ROOT / "data"),
        spark_conn_id=get("MIND_SPARK_CONN_ID", str, d.spark_conn_id),
        spark_conf=get("MIND_SPARK_CONF", _parse_conf, {}),
        driver_memory=get("MIND_SPARK_DRIVER_MEMORY", str, d.driver_memory),
        lookback_days=get("MIND_LOOKBACK_DAYS", int, d.lookback_days),
        min_item_count=get("MIND_MIN_ITEM_COUNT", int, d.min_item_count),
        min_user_count=get("MIND_MIN_USER_COUNT", int, d.min_user_count),
        min_row_groups=get("MIND_MIN_ROW_GROUPS", int, d.min_row_groups),
        train_nproc=get("MIND_TRAIN_NPROC", int, d.train_nproc),
        train_epochs=get("MIND_TRAIN_EPOCHS", int, d.train_epochs),
        train_patience=get("MIND_TRAIN_PATIENCE", int, d.train_patience),
        train_settings=get("MIND_TRAIN_SETTINGS", Path, None),
        train_args=get("MIND_TRAIN_ARGS", lambda s: tuple(shlex.split(s)), ()),
        gate_metric=get("MIND_GATE_METRIC", str, d.gate_metric),
        gate_margin=get("MIND_GATE_MARGIN", float, d.gate_margin),
        index_shards=get("MIND_INDEX_SHARDS", int, d.index_shards),
        index_workers=get("MIND_INDEX_WORKERS", int, None),
        index_args=get("MIND_INDEX_ARGS", lambda s: tuple(shlex.split(s)), ()),
        retries=get("MIND_RETRIES", int, d.retries),
        retry_delay_s=get("MIND_RETRY_DELAY_S", int, d.retry_delay_s),
        execution=get("MIND_EXECUTION", str, d.execution),
        image=get("MIND_IMAGE", str, None),
        gpu_image=get("MIND_GPU_IMAGE", str, None),
        k8s_namespace=get("MIND_K8S_NAMESPACE", str, d.k8s_namespace),
        k8s_conn_id=get("MIND_K8S_CONN_ID", str, d.k8s_conn_id),
        airflow_sa=get("MIND_K8S_AIRFLOW_SA", str, d.airflow_sa),
        storage_class=get("MIND_K8S_STORAGE_CLASS", str, None),
        pvc_size=get("MIND_K8S_PVC_SIZE", str, d.pvc_size),
        train_nodes=get("MIND_TRAIN_NODES", int, d.train_nodes),
        train_gpus=get("MIND_TRAIN_GPUS", int, d.train_gpus),
        train_max_restarts=get("MIND_TRAIN_MAX_RESTARTS", int, d.train_max_restarts),
        spark_executors=get("MIND_SPARK_EXECUTORS", int, d.spark_executors),
        executor_cores=get("MIND_SPARK_EXECUTOR_CORES", int, d.executor_cores),
        executor_memory=get("MIND_SPARK_EXECUTOR_MEMORY", str, d.executor_memory),
    )
