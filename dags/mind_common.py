"""Wiring shared by the MIND DAGs: default args, assets and the model chain.

Only Airflow objects are built here; what each task decides lives in
`orchestration.steps` and the jobs themselves, imported inside the tasks.
Configuration: `orchestration.config` (environment variables, documented there).
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


def spark_job(cfg: PipelineConfig, task_id: str, job: str, args: list[str], **kwargs):
    """A Spark job submitted to the master of the `spark_mind` connection."""
    return SparkSubmitOperator(
        task_id=task_id, conn_id=cfg.spark_conn_id, application=cfg.spark_job(job),
        application_args=args,
        driver_memory=cfg.driver_memory, env_vars=cfg.spark_env(), name=f"mind-{job}",
        **kwargs)


def xcom(task_id: str) -> str:
    """Jinja for the ds returned by `task_id` (templated operator arguments)."""
    return "{{ ti.xcom_pull(task_ids='%s') }}" % task_id


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
                      outlets=[asset(cfg, "embeddings")])

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

    first = train(ds)
    gate = evaluate_gate(ds)
    index = build_index(ds)
    last = publish(ds)
    first >> gate >> embed >> index >> last
    return first, last
