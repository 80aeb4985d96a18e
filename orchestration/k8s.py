"""Every Kubernetes object of the pipeline, rendered from the configuration (one source).

The `kubernetes` execution mode of the DAGs (`MIND_EXECUTION=kubernetes`) hands these
objects to the cncf-kubernetes provider's operators; `infra/k8s/` holds examples written
by `python -m orchestration.k8s --write infra/k8s` from the same functions (a test fails
when they differ). Two kinds of objects:

- cluster set-up, applied once (`python -m orchestration.k8s --setup | kubectl apply -f -`):
  the `spark` ServiceAccount + Role + RoleBinding (the Spark driver creates its executor
  pods), the `mind-airflow` Role bound to the Airflow workers' ServiceAccount (they create
  and watch SparkApplications, Jobs and pods), the `mind-runner` ServiceAccount (training
  and index pods: no API token), the ReadWriteMany data PVC and the headless Service that
  names the training pods for the torchrun rendezvous;
- per ds, with names unique per ds (the operators add a random suffix per try):
  SparkApplications of build_sequences and embed_users, the training Job (Indexed: one
  pod per torchrun node, c10d rendezvous on pod 0, recovery by replacing the pods) writing
  `training/ds=D/run-<fp>/` where the publish gate reads, and the index build's three Jobs
  (`jobs.build_index --stage`: plan, fill as an Indexed Job with one pod per shard, finish),
  run one after the other.

`ds`, `work_dir` and `warm_start` are strings: literal values, or the Jinja expressions
the DAG passes (rendered by Airflow at run time).

Every pod runs as the image's numeric non-root user (uid/gid 1000) with `fsGroup` 1000, so
a freshly provisioned volume is writable; no privilege escalation, no capabilities.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestration.config import PipelineConfig

IMAGE_ROOT = "/opt/mind"  # WORKDIR of infra/Dockerfile
UID = GID = 1000  # the image's `mind` user (infra/Dockerfile)
SPARK_VERSION = "3.5.9"  # the pyspark of requirements.lock
SPARK_SA = "spark"
RUNNER_SA = "mind-runner"
AIRFLOW_ROLE = "mind-airflow"
PVC = "mind-data"
TRAIN_SERVICE = "mind-train"  # headless: <job>-<index>.mind-train resolves each trainer pod
RDZV_PORT = 29500
JOB_RECOVERIES = 3  # times the training Job may replace all of its pods (resuming from last.pt)
PART_OF = {"app.kubernetes.io/part-of": "mind-pipeline"}

Obj = dict[str, Any]


def _labels(component: str) -> dict[str, str]:
    return {**PART_OF, "app.kubernetes.io/component": component}


def compact_ds(ds: str) -> str:
    """YYYY-MM-DD -> YYYYMMDD (shorter names); Jinja expressions get the same filter."""
    if ds.startswith("{{") and ds.endswith("}}"):
        return ds[:-2].rstrip() + " | replace('-', '') }}"
    return ds.replace("-", "")


def pod_security() -> Obj:
    """Pod securityContext: numeric non-root user, fsGroup so a fresh volume is writable."""
    return {"runAsUser": UID, "runAsGroup": GID, "runAsNonRoot": True, "fsGroup": GID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> Obj:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _data_volume() -> Obj:
    return {"name": "data", "persistentVolumeClaim": {"claimName": PVC}}


def _data_mount(cfg: PipelineConfig) -> Obj:
    return {"name": "data", "mountPath": str(cfg.data_root)}


# ------------------------------------------------------------------ cluster set-up


def setup_objects(cfg: PipelineConfig) -> list[Obj]:
    """The objects applied once per namespace (identity, storage, the rendezvous names)."""
    ns = cfg.k8s_namespace
    meta = lambda name, comp: {"name": name, "namespace": ns,  # noqa: E731
                               "labels": _labels(comp)}
    pvc: Obj = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": meta(PVC, "data"),
                "spec": {"accessModes": ["ReadWriteMany"],
                         "resources": {"requests": {"storage": cfg.pvc_size}}}}
    if cfg.storage_class:  # unset: the cluster's default class (it must offer ReadWriteMany)
        pvc["spec"]["storageClassName"] = cfg.storage_class
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(SPARK_SA, "spark")},
        # what a Spark driver does in cluster mode: executor pods, their services and configmaps
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": meta(SPARK_SA, "spark"),
         "rules": [{"apiGroups": [""],
                    "resources": ["pods", "services", "configmaps",
                                  "persistentvolumeclaims"],
                    "verbs": ["create", "get", "list", "watch", "delete", "deletecollection",
                              "patch", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(SPARK_SA, "spark"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SPARK_SA},
         "subjects": [{"kind": "ServiceAccount", "name": SPARK_SA, "namespace": ns}]},
        # the Airflow workers submit and watch the pipeline's objects (the provider's operators)
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": meta(AIRFLOW_ROLE, "airflow"),
         "rules": [{"apiGroups": ["sparkoperator.k8s.io"], "resources": ["sparkapplications"],
                    "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
                   {"apiGroups": ["batch"], "resources": ["jobs"],
                    "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
                   {"apiGroups": [""], "resources": ["pods", "pods/log", "events"],
                    "verbs": ["get", "list", "watch", "patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(AIRFLOW_ROLE, "airflow"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": AIRFLOW_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": cfg.airflow_sa, "namespace": ns}]},
        # training and index pods call no Kubernetes API: no token in them
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(RUNNER_SA, "runner"),
         "automountServiceAccountToken": False},
        pvc,
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(TRAIN_SERVICE, "trainer"),
         "spec": {"clusterIP": "None", "selector": _labels("trainer"),
                  # peers must resolve each other before they are Ready (rendezvous first)
                  "publishNotReadyAddresses": True,
                  "ports": [{"name": "rendezvous", "port": RDZV_PORT}]}},
    ]


# ------------------------------------------------------------------ Spark


def spark_application(cfg: PipelineConfig, job: str, ds: str, args: list[str]) -> Obj:
    """A SparkApplication (kubeflow spark-operator, v1beta2) running jobs/<job>.py for ds.

    Cluster mode: the operator's spark-submit starts the driver pod, which sets
    spark.driver.host to its own service (executors connect back to it) and starts the
    executor pods through the `spark` ServiceAccount.
    """
    comp = f"spark-{job.replace('_', '-')}"
    pod = lambda: {"labels": _labels(comp),  # noqa: E731
                   "securityContext": container_security(),
                   "podSecurityContext": pod_security(),
                   "volumeMounts": [_data_mount(cfg)],
                   "env": [{"name": "MIND_DATA_ROOT", "value": str(cfg.data_root)}]}
    return {
        "apiVersion": "sparkoperator.k8s.io/v1beta2", "kind": "SparkApplication",
        "metadata": {"name": f"mind-{comp.removeprefix('spark-')}-{compact_ds(ds)}",
                     "namespace": cfg.k8s_namespace, "labels": _labels(comp)},
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster",
            "image": cfg.image, "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": f"local://{IMAGE_ROOT}/jobs/{job}.py",
            "arguments": args,
            "sparkVersion": SPARK_VERSION,
            "sparkConf": {"spark.kubernetes.file.upload.path": f"{cfg.data_root}/tmp/spark"},
            # Airflow's retries re-submit; a second retry loop here would hide failures
            "restartPolicy": {"type": "Never"},
            "volumes": [_data_volume()],
            "driver": {**pod(), "cores": 1, "memory": cfg.driver_memory,
                       "serviceAccount": SPARK_SA},
            "executor": {**pod(), "instances": cfg.spark_executors,
                         "cores": cfg.executor_cores, "memory": cfg.executor_memory},
        },
    }


# ------------------------------------------------------------------ training


def training_args(cfg: PipelineConfig, seq_dir: str, work_dir: str, warm_start: str,
                  flags: list[str]) -> list[str]:
    """torchrun's arguments on every node: c10d rendezvous on pod 0 of this Job (JOB_NAME
    from the pod's label); `--max-restarts` in-place restarts (default 0: a failed worker
    ends every node's torchrun, the Job replaces the pods and training resumes from last.pt)."""
    nproc = cfg.train_gpus or cfg.train_nproc
    return [f"--nnodes={cfg.train_nodes}", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=$(JOB_NAME)-0.{TRAIN_SERVICE}:{RDZV_PORT}",
            "--rdzv-id=$(JOB_NAME)", f"--max-restarts={cfg.train_max_restarts}",
            "-m", "mind_model.train", "--data-dir", seq_dir, "--out-dir", work_dir,
            "--no-progress", *flags,
            # "" = no warm start (mind_model.train ignores an empty path)
            "--warm-start-from", warm_start]


def training_pod_template(cfg: PipelineConfig, ds: str, seq_dir: str, work_dir: str,
                          warm_start: str, flags: list[str]) -> Obj:
    """The pod template of the training Job (one pod per torchrun node)."""
    resources: Obj = {"requests": {"cpu": str(cfg.train_nproc), "memory": "8Gi"}}
    if cfg.train_gpus:
        resources["limits"] = {"nvidia.com/gpu": str(cfg.train_gpus)}
    return {
        "metadata": {"labels": {**_labels("trainer"), "mind/ds": compact_ds(ds)}},
        "spec": {
            # hostname <job>-<index> + subdomain = a DNS name on the headless Service
            "subdomain": TRAIN_SERVICE,
            "serviceAccountName": RUNNER_SA,
            # a failed pod is replaced by one with the same index, hence the same hostname;
            # the provider's operators submit pods with Never in any case
            "restartPolicy": "Never",
            "securityContext": pod_security(),
            "containers": [{
                "name": "base",  # the provider's operators read logs of container `base`
                "image": cfg.gpu_image or cfg.image,
                "command": ["torchrun"],
                "args": training_args(cfg, seq_dir, work_dir, warm_start, flags),
                "env": [{"name": "JOB_NAME", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
                    {"name": "MIND_DATA_ROOT", "value": str(cfg.data_root)}],
                "ports": [{"name": "rendezvous", "containerPort": RDZV_PORT}],
                "resources": resources,
                "securityContext": container_security(),
                "volumeMounts": [_data_mount(cfg), {"name": "shm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [_data_volume(),
                        # NCCL and data-loader workers need more than the default 64 MiB
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}],
        },
    }


def training_job_spec(cfg: PipelineConfig) -> Obj:
    """The Job fields around the pod template (also the operator's arguments)."""
    return {"completionMode": "Indexed", "completions": cfg.train_nodes,
            "parallelism": cfg.train_nodes,
            # a failure ends every node's torchrun: each recovery replaces all the pods
            "backoffLimit": cfg.train_nodes * JOB_RECOVERIES}


def training_job(cfg: PipelineConfig, ds: str, fingerprint: str, seq_dir: str, work_dir: str,
                 warm_start: str, flags: list[str]) -> Obj:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"mind-train-{compact_ds(ds)}-{fingerprint}",
                         "namespace": cfg.k8s_namespace, "labels": _labels("trainer")},
            "spec": {**training_job_spec(cfg),
                     "template": training_pod_template(cfg, ds, seq_dir, work_dir,
                                                       warm_start, flags)}}


# ------------------------------------------------------------------ index


INDEX_STAGES = ("plan", "fill", "finish")  # jobs.build_index --stage, in this order
INDEX_STAGE_LABEL = "mind/index-stage"      # kubectl apply -f build-index.yaml -l <it>=plan
INDEX_CPU, INDEX_MEMORY = 2, "8Gi"          # requests of every index pod


def index_args(cfg: PipelineConfig, ds: str, stage: str) -> list[str]:
    """jobs.build_index's arguments for one stage. Only plan takes the build's settings;
    fill and finish read them from the plan, and a fill pod's shard is its completion
    index (JOB_COMPLETION_INDEX, set by the Indexed Job): the same args in every pod."""
    args = ["-m", "jobs.build_index", "--data-root", str(cfg.data_root), "--ds", ds,
            "--stage", stage]
    if stage == "plan":
        args += ["--shards", str(cfg.index_shards), *cfg.index_args]
    return args


def index_pod_template(cfg: PipelineConfig, ds: str, stage: str) -> Obj:
    """The pod of one index stage. plan trains the quantiser and finish runs the recall gate:
    a GPU where training has them; fill pods are CPU only, one FAISS thread per requested
    core. One image for the three, so one FAISS build writes and reads every file."""
    resources: Obj = {"requests": {"cpu": str(INDEX_CPU), "memory": INDEX_MEMORY}}
    container: Obj = {"name": "base", "image": cfg.gpu_image or cfg.image,
                      "command": ["python"], "args": index_args(cfg, ds, stage),
                      "resources": resources, "securityContext": container_security(),
                      "volumeMounts": [_data_mount(cfg)]}
    if stage == "fill":  # OpenMP would otherwise start a thread per core of the node
        container["env"] = [{"name": "OMP_NUM_THREADS", "value": str(INDEX_CPU)}]
    elif cfg.train_gpus:
        resources["limits"] = {"nvidia.com/gpu": "1"}
    return {
        "metadata": {"labels": {**_labels("index"), INDEX_STAGE_LABEL: stage,
                                "mind/ds": compact_ds(ds)}},
        "spec": {"serviceAccountName": RUNNER_SA, "restartPolicy": "Never",
                 "securityContext": pod_security(),
                 "containers": [container],
                 "volumes": [_data_volume()]},
    }


def index_job_spec(cfg: PipelineConfig, stage: str) -> Obj:
    """The Job fields of one index stage (also the operator's arguments): fill is an Indexed
    Job, one completion per shard, `index_workers` pods at a time."""
    if stage != "fill":
        return {"completions": 1, "parallelism": 1, "backoffLimit": 0}
    return {"completionMode": "Indexed", "completions": cfg.index_shards,
            "parallelism": min(cfg.index_workers, cfg.index_shards),
            # a failed fill pod is replaced (its shard is rewritten whole), about once a shard
            "backoffLimit": cfg.index_shards}


def index_job(cfg: PipelineConfig, ds: str, stage: str) -> Obj:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"mind-build-index-{stage}-{compact_ds(ds)}",
                         "namespace": cfg.k8s_namespace,
                         "labels": {**_labels("index"), INDEX_STAGE_LABEL: stage}},
            "spec": {**index_job_spec(cfg, stage),
                     "template": index_pod_template(cfg, ds, stage)}}


# ------------------------------------------------------------------ examples


EXAMPLE_DS = "2026-11-28"
EXAMPLE_FINGERPRINT = "0123456789ab"


def example_config() -> PipelineConfig:
    """The settings infra/k8s/ is written with (independent of this shell's environment)."""
    return PipelineConfig(data_root=Path("/data"), execution="kubernetes",
                          image="registry.example.com/mind/mind-pipeline:0.1.0",
                          gpu_image="registry.example.com/mind/mind-pipeline-gpu:0.1.0",
                          storage_class="nfs-rwx", train_nodes=2, train_gpus=8,
                          train_nproc=8, index_shards=4, spark_executors=4,
                          executor_cores=4, executor_memory="8g", driver_memory="4g")


def examples(cfg: PipelineConfig, ds: str = EXAMPLE_DS,
             fingerprint: str = EXAMPLE_FINGERPRINT) -> dict[str, list[Obj]]:
    """file name -> objects, as written into infra/k8s/."""
    from orchestration.steps import train_flags  # steps imports artefacts: only when used

    seq = f"{cfg.data_root}/sequences/ds={ds}"
    work = f"{cfg.data_root}/training/ds={ds}/run-{fingerprint}"
    warm = f"{cfg.data_root}/models/ds=2026-11-27/model.pt"
    return {
        "setup.yaml": setup_objects(cfg),
        "spark-build-sequences.yaml": [spark_application(cfg, "build_sequences", ds,
                                                         cfg.prep_args(ds))],
        "spark-embed-users.yaml": [spark_application(cfg, "embed_users", ds,
                                                     cfg.embed_args(ds))],
        "train.yaml": [training_job(cfg, ds, fingerprint, seq, work, warm, train_flags(cfg))],
        "build-index.yaml": [index_job(cfg, ds, stage) for stage in INDEX_STAGES],
    }


HEADER = ("# Generated by `python -m orchestration.k8s --write infra/k8s` from orchestration/k8s.py"
          "\n# (example settings, ds={ds}); edit the code, not this file.\n")


def dump(objs: list[Obj], ds: str = EXAMPLE_DS) -> str:
    return HEADER.format(ds=ds) + yaml.safe_dump_all(objs, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render the pipeline's Kubernetes objects")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--setup", action="store_true",
                   help="print the cluster set-up objects for the current MIND_* settings")
    g.add_argument("--write", type=Path, metavar="DIR", help="write the examples into DIR")
    a = p.parse_args(argv)
    if a.setup:
        from orchestration.config import load_config

        try:
            cfg = load_config()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        sys.stdout.write(yaml.safe_dump_all(setup_objects(cfg), sort_keys=False))
        return 0
    a.write.mkdir(parents=True, exist_ok=True)
    for name, objs in examples(example_config()).items():
        (a.write / name).write_text(dump(objs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
