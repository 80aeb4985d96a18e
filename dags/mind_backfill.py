"""Manual backfill: rebuild the sequence partitions of a date range, optionally retrain once."""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from dags.mind_common import CFG, TAGS, asset, default_args, model_chain

DOC = """
### MIND backfill

Params: `start` and `end` (YYYY-MM-DD, both included) and `retrain` (default false).

1. **dates**: the dates of the range, oldest first.
2. **rebuild_sequences**: `build_sequences` (Spark, connection `spark_mind`) for each
   date **in order** — each date's id vocabulary extends the one before it. A rerun
   replaces each date's partition.
3. with `retrain`: train on the end date's sequences, then the daily chain (gate,
   embed users, index, publish; the pointer never moves back to an older date).

The native alternative runs the whole daily DAG per date:
`airflow backfill create --dag-id mind_daily --from-date … --to-date … --max-active-runs 1`.
"""


@dag(
    dag_id="mind_backfill",
    schedule=None,
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),  # old data (imports) can be run too
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "start": Param(type="string", format="date", description="first date (YYYY-MM-DD)"),
        "end": Param(type="string", format="date", description="last date, included"),
        "retrain": Param(False, type="boolean", description="retrain once on the end date"),
    },
    tags=TAGS + ["backfill"],
    doc_md=DOC,
)
def mind_backfill():
    @task
    def dates(**context) -> list[str]:
        from orchestration.steps import date_range

        return date_range(context["params"]["start"], context["params"]["end"])

    @task(outlets=[asset(CFG, "sequences")])
    def rebuild_sequences(days: list[str]) -> list[str]:
        """One spark-submit per date, oldest first, through the `spark_mind` connection."""
        from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

        if CFG.execution != "local":  # one SparkApplication per date would need ordering
            raise ValueError("mind_backfill rebuilds with spark-submit (MIND_EXECUTION=local); "
                             "on Kubernetes run `airflow backfill create --dag-id mind_daily "
                             "--from-date ... --to-date ... --max-active-runs 1`")

        for ds in days:
            SparkSubmitHook(conn_id=CFG.spark_conn_id,
                            application_args=CFG.prep_args(ds),
                            driver_memory=CFG.driver_memory, env_vars=CFG.spark_env(),
                            name=f"mind-build_sequences-{ds}").submit(CFG.spark_job("build_sequences"))
        return days

    @task.short_circuit
    def retrain_requested(**context) -> bool:
        return bool(context["params"]["retrain"])

    @task
    def end_ds(days: list[str]) -> str:
        return days[-1]

    rebuilt = rebuild_sequences(dates())
    ds = end_ds(rebuilt)
    first, _ = model_chain(CFG, ds, "end_ds")
    rebuilt >> retrain_requested() >> ds
    ds >> first


mind_backfill()
