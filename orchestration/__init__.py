"""Running the pipeline: settings (`config`), the bodies of the DAG tasks that are not jobs
of their own (`steps`), and `make local-pipeline` (`local_pipeline`: Airflow on this
machine, the report)."""
