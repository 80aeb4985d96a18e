"""Spark across two hosts: a standalone master + worker in one network namespace, the driver
in another, joined by a veth pair (addresses inside the namespaces only, as between two
machines). Executors connect back to the driver, so the job succeeds only when the driver
advertises an address the worker's host can reach (MIND_SPARK_DRIVER_HOST, jobs.spark); a
driver advertising loopback fails, within a bounded time.

Needs root (or CAP_NET_ADMIN) and `ip netns`; skipped with the reason otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.spark import ensure_java, spark_home
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TAG = f"m{os.getpid() % 100000}"
NS_CLUSTER, NS_DRIVER = f"{TAG}-cluster", f"{TAG}-driver"
CLUSTER_IP, DRIVER_IP = "10.231.7.1", "10.231.7.2"
MASTER = f"spark://{CLUSTER_IP}:7077"
EXECUTOR_WAIT_S = 60  # the driver's deadline for its first executor
FAIL_WITHIN_S = 180  # the loopback driver must have exited by then (start-up + the deadline)

DRIVER = """
import sys
import time
from jobs.spark import start_spark
spark = start_spark("two-host", master=sys.argv[1],
                    conf={"spark.cores.max": "1", "spark.executor.memory": "512m"})
sc = spark.sparkContext
# Bounded: an executor that cannot reach the driver never registers; the standalone master
# keeps relaunching it, so without a deadline the job would wait forever.
deadline = time.monotonic() + float(sys.argv[2])
while sc._jsc.sc().getExecutorMemoryStatus().size() < 2:  # the driver + >= 1 executor
    if time.monotonic() > deadline:
        print("NO_EXECUTOR: none registered within", sys.argv[2], "s; advertised driver host",
              sc.getConf().get("spark.driver.host"), flush=True)
        sys.exit(3)
    time.sleep(1)
total = sc.parallelize(range(1000), 4).map(lambda x: x * x).sum()  # Python on the executor
print("RESULT", total, sc.getConf().get("spark.driver.host"), flush=True)
spark.stop()
"""


def ip(*args: str, ns: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{TAG}-probe"
    r = ip("netns", "add", probe)
    if r.returncode != 0:
        return f"cannot create network namespaces ({r.stderr.strip() or 'ip netns add failed'})"
    ip("netns", "del", probe)
    return None


@pytest.fixture(scope="module")
def two_hosts():
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    try:
        for ns in (NS_CLUSTER, NS_DRIVER):
            assert ip("netns", "add", ns).returncode == 0
            assert ip("link", "set", "lo", "up", ns=ns).returncode == 0
        assert ip("link", "add", f"{TAG}a", "netns", NS_CLUSTER, "type", "veth", "peer", "name",
                  f"{TAG}b", "netns", NS_DRIVER).returncode == 0
        for ns, dev, addr in ((NS_CLUSTER, f"{TAG}a", CLUSTER_IP),
                              (NS_DRIVER, f"{TAG}b", DRIVER_IP)):
            assert ip("addr", "add", f"{addr}/24", "dev", dev, ns=ns).returncode == 0
            assert ip("link", "set", dev, "up", ns=ns).returncode == 0
        yield
    finally:
        for ns in (NS_CLUSTER, NS_DRIVER):
            ip("netns", "del", ns)  # removes the veth pair with it


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("MIND_SPARK_", "SPARK_", "PYSPARK_"))}
    e.update(JAVA_HOME=ensure_java(), SPARK_HOME=spark_home(), PYSPARK_PYTHON=sys.executable,
             PYTHONPATH=str(REPO_ROOT), **extra)
    return e


def in_ns(ns: str, args: list[str], log: Path, environ: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], env=environ,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO_ROOT)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster(two_hosts, tmp_path_factory):
    """Master and one worker (1 core) listening on the cluster namespace's address. The master
    gives up on an application after 2 executor failures in a row (a bounded failure)."""
    work = tmp_path_factory.mktemp("two-host")
    cls = str(Path(spark_home()) / "bin" / "spark-class")
    e = env(SPARK_LOCAL_IP=CLUSTER_IP, SPARK_MASTER_OPTS="-Dspark.deploy.maxExecutorRetries=2")
    procs = [in_ns(NS_CLUSTER, [cls, "org.apache.spark.deploy.master.Master", "--host",
                                CLUSTER_IP, "--port", "7077", "--webui-port", "8080"],
                   work / "master.log", e)]
    procs.append(in_ns(NS_CLUSTER, [cls, "org.apache.spark.deploy.worker.Worker", MASTER,
                                    "--host", CLUSTER_IP, "--cores", "1", "--memory", "1g",
                                    "--webui-port", "8081", "--work-dir", str(work / "w")],
                       work / "worker.log", e))
    probe = ("import json, urllib.request; s = json.load(urllib.request.urlopen("
             f"'http://{CLUSTER_IP}:8080/json', timeout=2)); "
             "print(sum(w['state'] == 'ALIVE' for w in s['workers']))")
    try:
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run(["ip", "netns", "exec", NS_CLUSTER, sys.executable, "-c", probe],
                               capture_output=True, text=True)
            if r.stdout.strip() == "1":
                break
            assert time.monotonic() < deadline, (work / "worker.log").read_text()[-3000:]
            time.sleep(2)
        yield work
    finally:
        for p in reversed(procs):
            stop(p)


def run_driver(work: Path, name: str, timeout: float, **extra: str) -> tuple[int | None, str]:
    """The driver in the other namespace; (exit code or None when killed at the timeout, log)."""
    script = work / "driver.py"
    script.write_text(DRIVER)
    log = work / f"{name}.log"
    proc = in_ns(NS_DRIVER, [sys.executable, str(script), MASTER, str(EXECUTOR_WAIT_S)], log,
                 env(**extra))
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop(proc)
    return code, log.read_text()


def test_networks_are_apart(two_hosts):
    """The namespaces reach each other only through the veth addresses."""
    r = subprocess.run(["ip", "netns", "exec", NS_DRIVER, sys.executable, "-c",
                        f"import socket; socket.create_connection(('{CLUSTER_IP}', 9), 2)"],
                       capture_output=True, text=True)
    assert "Connection refused" in r.stderr  # routed to the cluster namespace, no listener
    addrs = ip("-4", "-o", "addr", ns=NS_DRIVER).stdout
    assert DRIVER_IP in addrs and CLUSTER_IP not in addrs


def test_driver_advertising_its_address_runs_the_job(cluster):
    code, log = run_driver(cluster, "driver-ok", timeout=240, MIND_SPARK_DRIVER_HOST=DRIVER_IP)
    assert code == 0, log[-4000:]
    line = next(ln for ln in log.splitlines() if ln.startswith("RESULT"))
    assert line.split()[1:] == [str(sum(x * x for x in range(1000))), DRIVER_IP]


def test_driver_advertising_loopback_fails_within_a_bound(cluster):
    start = time.monotonic()
    code, log = run_driver(cluster, "driver-loopback", timeout=FAIL_WITHIN_S)
    elapsed = time.monotonic() - start
    assert "RESULT" not in log
    assert code == 3, log[-3000:]  # exited at its own deadline, not killed by the test
    assert "NO_EXECUTOR" in log and "advertised driver host 127.0.0.1" in log
    # the worker did launch executors; they were told to call the driver on loopback
    launched = [p.read_text(errors="replace") for p in (cluster / "w").rglob("stderr")]
    assert any("CoarseGrainedScheduler@127.0.0.1:" in s for s in launched)
    # the executors could not reach 127.0.0.1 from the cluster's host
    worker_logs = "\n".join(p.read_text(errors="replace")
                            for p in (cluster / "w").rglob("stderr"))
    assert "127.0.0.1" in worker_logs, worker_logs[-3000:]
    print(json.dumps({"loopback_failed_after_s": round(elapsed, 1), "exit": code}))
