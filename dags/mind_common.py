"""Wiring shared by the MIND DAGs: default args, assets and the model chain.

Only Airflow objects are built here; what each task decides lives in
`orchestration.steps` and the jobs themselves, imported inside the tasks.
Configuration: `orchestration.config` (environment variables, documented there).
`MIND_EXECUTION` chooses where the heavy tasks run, with the same DAGs: `local`
(spark-submit to the `spark_mind` master, torchrun and the index build in the Airflow
worker) or `kubernetes` (SparkApplications, an Indexed Job of torchrun nodes, and the index
build's plan -> fill (Indexed, a pod per shard) -> finish Jobs, all rendered by
`orchestration.k8s`). The gate and publish run in the worker in both.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, task

from orchestration.config import PipelineConfig, load_config

CFG: PipelineConfig = load_config()
TAGS = ["mind", "recsys"]


def default_args(cfg: PipelineConfig = CFG) -> dict:
    return {"owner": "mind", "retries": cfg.retries,
            "retry_delay": timedelta(seconds=cfg.retry_delay_s)}


def asset(cfg: PipelineConfig, what: str) -> Asset:
    """The asset of one artefact family under the data root (one per folder, all dates).
    Named by its URI: two data roots (e.g. sample and imported data) are two assets."""
    return Asset(uri=f"file://{cfg.data_root}/{what}")


def spark_job(cfg: PipelineConfig, task_id: str, job: str, args: list[str], ds: str, **kwargs):
    """A Spark job: submitted to the master of the `spark_mind` connection (local), or a
    SparkApplication for ds (kubernetes). `ds` and `args` may hold Jinja."""
    if cfg.execution == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import (
            SparkKubernetesOperator,
        )

        from orchestration.k8s import spark_application

        return SparkKubernetesOperator(
            task_id=task_id, namespace=cfg.k8s_namespace, kubernetes_conn_id=cfg.k8s_conn_id,
            template_spec=spark_application(cfg, job, ds, args), get_logs=True, **kwargs)
    return SparkSubmitOperator(
        task_id=task_id, conn_id=cfg.spark_conn_id, application=cfg.spark_job(job),
        application_args=args,
        driver_memory=cfg.driver_memory, env_vars=cfg.spark_env(), name=f"mind-{job}",
        **kwargs)


def xcom(task_id: str, key: str | None = None) -> str:
    """Jinja for the value returned by `task_id` (templated operator arguments), or for one
    key of the dict it returned."""
    pick = f"['{key}']" if key else ""
    return "{{ ti.xcom_pull(task_ids='%s')%s }}" % (task_id, pick)


def k8s_job(cfg: PipelineConfig, task_id: str, pod_template: dict, job_spec: dict, **kwargs):
    """A Kubernetes Job of `pod_template` (Jinja rendered at run time); waits for it."""
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator

    return KubernetesJobOperator(
        task_id=task_id, namespace=cfg.k8s_namespace, kubernetes_conn_id=cfg.k8s_conn_id,
        pod_template_dict=pod_template, completion_mode=job_spec.get("completionMode"),
        completions=job_spec["completions"], parallelism=job_spec["parallelism"],
        backoff_limit=job_spec["backoffLimit"], wait_until_job_complete=True, get_logs=True,
        ttl_seconds_after_finished=86400, **kwargs)


def kubernetes_train(cfg: PipelineConfig, ds, ds_task_id: str):
    """plan_train (in the worker: the run's folder, old folders removed) -> the training Job
    writing where the gate reads. Returns (first, last)."""
    from orchestration.k8s import training_job_spec, training_pod_template
    from orchestration.steps import train_flags

    @task
    def plan_train(day: str) -> dict:
        from orchestration.steps import prepare_training

        plan = prepare_training(cfg, day)
        return {"seq_dir": plan["seq_dir"], "work_dir": plan["work_dir"],
                "fingerprint": plan["fingerprint"], "warm_start": plan["warm_start_from"] or ""}

    pod = training_pod_template(cfg, xcom(ds_task_id), xcom("plan_train", "seq_dir"),
                                xcom("plan_train", "work_dir"), xcom("plan_train", "warm_start"),
                                train_flags(cfg))
    job = k8s_job(cfg, "train", pod, training_job_spec(cfg),
                  name="mind-train-" + xcom("plan_train", "fingerprint"),
                  outlets=[asset(cfg, "training")])
    first = plan_train(ds)
    first >> job
    return first, job


def kubernetes_index(cfg: PipelineConfig, ds_task_id: str):
    """The index build as three Jobs, one after the other: plan (train the quantiser) ->
    fill (an Indexed Job, a pod per shard) -> finish (recall gate, publish index/ds=D).
    Returns (first, last)."""
    from orchestration.k8s import INDEX_STAGES, index_job_spec, index_pod_template

    day = xcom(ds_task_id)
    jobs = [k8s_job(cfg, f"build_index_{stage}", index_pod_template(cfg, day, stage),
                    index_job_spec(cfg, stage), name=f"mind-build-index-{stage}",
                    outlets=[asset(cfg, "index")] if stage == "finish" else [])
            for stage in INDEX_STAGES]
    jobs[0] >> jobs[1] >> jobs[2]
    return jobs[0], jobs[-1]


def model_chain(cfg: PipelineConfig, ds, ds_task_id: str):
    """train (torchrun) -> evaluate + gate -> embed users (Spark) -> build index -> publish.

    `ds` is the XComArg of the task `ds_task_id` that returns the partition date.
    Returns (first task, last task).
    """

    @task.bash(outlets=[asset(cfg, "training")])
    def train(day: str) -> str:
        """torchrun over `train_nproc` processes; warm start from the published model."""
        from orchestration.steps import train_command

        return train_command(cfg, day)

    @task(outlets=[asset(cfg, "models")])
    def evaluate_gate(day: str) -> dict:
        """HR@N of the new model vs the published one on ds's test users; skips the rest
        (embed, index, publish) when the new model is worse by more than the margin."""
        from airflow.sdk.exceptions import AirflowSkipException

        from orchestration.steps import evaluate_and_stage

        result = evaluate_and_stage(cfg, day)
        if not result["publish"]:
            raise AirflowSkipException(f"gate: {result['reason']}")
        return result

    embed = spark_job(cfg, "embed_users", "embed_users", cfg.embed_args(xcom(ds_task_id)),
                      xcom(ds_task_id), outlets=[asset(cfg, "embeddings")])

    @task.bash(outlets=[asset(cfg, "index")])
    def build_index(day: str) -> str:
        """Sharded FAISS index of the item embeddings; fails (nothing published) below the
        recall gate. A separate process: torch and faiss OpenMP runtimes stay apart."""
        return cfg.index_command(day)

    @task(outlets=[asset(cfg, "current.json")])
    def publish(day: str) -> dict:
        """Switch current.json to ds in one atomic rename (never back to an older ds)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from orchestration.steps import publish_decision, publish_version

        ok, why = publish_decision(cfg.data_root, day)
        if not ok:
            raise AirflowSkipException(why)
        return publish_version(cfg.data_root, day)

    if cfg.execution == "kubernetes":
        first, trained = kubernetes_train(cfg, ds, ds_task_id)
        index, indexed = kubernetes_index(cfg, ds_task_id)
    else:
        first = trained = train(ds)
        index = indexed = build_index(ds)
    gate = evaluate_gate(ds)
    last = publish(ds)
    trained >> gate >> embed >> index
    indexed >> last
    return first, last
