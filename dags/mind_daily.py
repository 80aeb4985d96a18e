"""Daily retrain of MIND: sequences -> train -> gate -> user embeddings -> index -> publish."""
from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from dags.mind_common import CFG, TAGS, asset, default_args, model_chain, spark_job, xcom

DOC = """
### MIND daily retrain

Runs once per day for the day that just ended (`ds` = the start of the run's data
interval, or the `ds` param of a manual run):

1. **build_sequences** (Spark, connection `spark_mind`): raw logs of the look-back
   window -> `sequences/ds=…`
2. **train** (torchrun, `MIND_TRAIN_NPROC` processes), warm start from the published
   model -> `training/ds=…/run-…`
3. **evaluate_gate**: HR@50 of the new model vs the published one on the same test
   users -> `models/ds=…/` (model.pt, evaluation.json). Worse by more than
   `MIND_GATE_MARGIN`: the rest is skipped and evaluation.json says why.
4. **embed_users** (Spark) -> `embeddings/ds=…/`
5. **build_index** (FAISS, sharded, recall gate) -> `index/ds=…/`
6. **publish**: `current.json` switched atomically.

Every task rewrites only its own date's folder (staged, renamed in); a failed task
leaves the served version untouched. Backfill: `airflow backfill create --dag-id
mind_daily --from-date … --to-date …`, or the `mind_backfill` DAG.
"""


@dag(
    dag_id="mind_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),  # old data (imports) can be run too
    catchup=False,
    max_active_runs=1,  # each day's vocabulary and warm start build on the day before
    default_args=default_args(),
    params={"ds": Param(None, type=["null", "string"], format="date",
                        description="partition date YYYY-MM-DD (default: the logical date)")},
    tags=TAGS + ["daily"],
    doc_md=DOC,
)
def mind_daily():
    @task
    def resolve_ds(**context) -> str:
        """The partition date of this run."""
        from orchestration.steps import resolve_ds as resolve

        return resolve(context["params"].get("ds"), context.get("logical_date"))

    ds = resolve_ds()
    sequences = spark_job(CFG, "build_sequences", "build_sequences",
                          CFG.prep_args(xcom("resolve_ds")), xcom("resolve_ds"),
                          outlets=[asset(CFG, "sequences")])
    first, _ = model_chain(CFG, ds, "resolve_ds")
    ds >> sequences >> first


mind_daily()
