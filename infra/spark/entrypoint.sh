#!/usr/bin/env bash
# Entry point of the image (under tini). Spark on Kubernetes starts the driver and executor
# pods of a SparkApplication with `driver ...` / `executor` as arguments, the contract of
# Spark 3.5's own Kubernetes images; every other command runs as given (airflow, torchrun,
# python -m ..., spark-class for a standalone master or worker).
set -euo pipefail

: "${SPARK_HOME:?SPARK_HOME is not set}"
: "${JAVA_HOME:?JAVA_HOME is not set}"

case "${1:-}" in
  driver)
    shift
    # The submission already chose cluster mode; inside the driver pod it is client mode,
    # listening on the pod's IP (SPARK_DRIVER_BIND_ADDRESS, set by Spark from status.podIP).
    exec "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:?}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    # Java options come numbered (SPARK_JAVA_OPT_0, _1, ...), in order.
    java_opts=()
    while IFS= read -r opt; do
      java_opts+=("${opt}")
    done < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/^[^=]*=//')
    exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY:?}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "${SPARK_HOME}/jars/*${SPARK_CLASSPATH:+:${SPARK_CLASSPATH}}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL:?}" --executor-id "${SPARK_EXECUTOR_ID:?}" \
      --cores "${SPARK_EXECUTOR_CORES:?}" --app-id "${SPARK_APPLICATION_ID:?}" \
      --hostname "${SPARK_EXECUTOR_POD_IP:?}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "${SPARK_EXECUTOR_POD_NAME:?}"
    ;;
  "")
    echo "usage: driver ARGS | executor | COMMAND [ARGS]" >&2
    exit 2
    ;;
  *)
    exec "$@"
    ;;
esac
