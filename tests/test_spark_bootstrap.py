"""Where the Spark master comes from (no JVM needed)."""
from __future__ import annotations

from jobs.spark import DEFAULT_MASTER, MASTER_ENV, driver_address_conf, resolve_master


def test_master_precedence(monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.delenv(MASTER_ENV, raising=False)
    assert resolve_master() == DEFAULT_MASTER
    monkeypatch.setenv(MASTER_ENV, "spark://127.0.0.1:7077")
    assert resolve_master() == "spark://127.0.0.1:7077"
    assert resolve_master("local[1]") == "local[1]"


def test_spark_submit_master_is_not_overridden(monkeypatch):
    # spark-submit (e.g. Airflow's SparkSubmitOperator) sets the gateway port; its --master wins
    # over the environment and the default, but an explicit --master flag of the job still applies.
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")
    monkeypatch.setenv(MASTER_ENV, "spark://elsewhere:7077")
    assert resolve_master() is None
    assert resolve_master("local[1]") == "local[1]"


def test_job_flags_parse_master_and_conf():
    from jobs.build_sequences import parse_args

    cfg = parse_args(["--data-root", "/tmp/x", "--ds", "2026-11-28", "--master", "local[1]",
                      "--conf", "spark.a=1", "--conf", "spark.b=x=y"])
    assert cfg.master == "local[1]"
    assert cfg.spark_conf == {"spark.a": "1", "spark.b": "x=y"}


def test_driver_address_is_loopback_unless_configured():
    assert driver_address_conf({}) == {"spark.driver.host": "127.0.0.1",
                                       "spark.driver.bindAddress": "127.0.0.1"}
    # an address of this host: listen and advertise it
    assert driver_address_conf({"MIND_SPARK_DRIVER_HOST": "10.0.0.2"}) == {
        "spark.driver.host": "10.0.0.2", "spark.driver.bindAddress": "10.0.0.2"}
    # a name that resolves elsewhere (NAT, container name): listen on all addresses
    assert driver_address_conf({"MIND_SPARK_DRIVER_HOST": "airflow",
                                "MIND_SPARK_DRIVER_BIND": "0.0.0.0"}) == {
        "spark.driver.host": "airflow", "spark.driver.bindAddress": "0.0.0.0"}
