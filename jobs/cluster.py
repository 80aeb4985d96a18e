"""A real Spark standalone cluster (master + workers) on loopback, from the pyspark package.

Used by the cluster tests and for trying the jobs against `spark://` before a
real cluster exists:

    python -m jobs.cluster --cores 2 --memory 2g     # runs until Ctrl-C
    python -m jobs.build_sequences --master spark://127.0.0.1:7077 ...
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from jobs.spark import ensure_java, spark_home

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class StandaloneCluster:
    """Start a master and `workers` workers bound to 127.0.0.1; stop them on exit."""

    def __init__(self, *, workers: int = 1, cores: int = 2, memory: str = "2g",
                 port: int | None = None, work_dir: Path | None = None,
                 start_timeout: float = 90.0) -> None:
        self.workers, self.cores, self.memory = workers, cores, memory
        self.port = port or free_port()
        self.webui_port = free_port()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="spark-standalone-"))
        self.start_timeout = start_timeout
        self.procs: list[subprocess.Popen] = []

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    def _env(self) -> dict[str, str]:
        ensure_java()
        env = dict(os.environ)
        env.update(SPARK_HOME=spark_home(), SPARK_LOCAL_IP=HOST,
                   PYSPARK_PYTHON=env.get("PYSPARK_PYTHON", sys.executable))
        return env

    def _spawn(self, name: str, args: list[str]) -> None:
        cls = Path(spark_home()) / "bin" / "spark-class"
        logf = open(self.work_dir / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(
            [str(cls), *args], env=self._env(), stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True))  # own process group: stop() kills the JVM and its children

    def state(self) -> dict:
        """The master's status JSON (workers, active and completed applications)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.webui_port}/json", timeout=2) as r:
            return json.load(r)

    def alive_workers(self) -> int:
        try:
            state = self.state()
        except OSError:
            return -1
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def completed_apps(self) -> list[str]:
        """Names of the applications that ran on this cluster and finished."""
        return [a.get("name", "") for a in self.state().get("completedapps", [])]

    def start(self) -> "StandaloneCluster":
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", HOST,
                               "--port", str(self.port), "--webui-port", str(self.webui_port)])
        for k in range(self.workers):
            wdir = self.work_dir / f"worker-{k}"
            wdir.mkdir(exist_ok=True)
            self._spawn(f"worker-{k}", [
                "org.apache.spark.deploy.worker.Worker", self.master_url, "--host", HOST,
                "--cores", str(self.cores), "--memory", self.memory,
                "--webui-port", str(free_port()), "--work-dir", str(wdir)])
        deadline = time.time() + self.start_timeout
        while self.alive_workers() < self.workers:
            if any(p.poll() is not None for p in self.procs) or time.time() > deadline:
                self.stop()
                logs = "\n".join((self.work_dir / f).read_text(errors="replace")[-2000:]
                                 for f in os.listdir(self.work_dir) if f.endswith(".log"))
                raise RuntimeError(f"Spark standalone cluster did not start:\n{logs}")
            time.sleep(0.5)
        log.info("Spark standalone cluster up at %s (%d worker(s) x %d cores)",
                 self.master_url, self.workers, self.cores)
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def spark_submit(master: str, script: Path | str, args: list[str], *,
                 conf: dict[str, str] | None = None, timeout: float = 600
                 ) -> subprocess.CompletedProcess:
    """Run `spark-submit` of a Python job against `master`; raises on a non-zero exit."""
    ensure_java()
    cmd = [str(Path(spark_home()) / "bin" / "spark-submit"), "--master", master,
           "--conf", f"spark.driver.host={HOST}", "--conf", f"spark.driver.bindAddress={HOST}"]
    for k, v in (conf or {}).items():
        cmd += ["--conf", f"{k}={v}"]
    env = dict(os.environ, SPARK_HOME=spark_home(), SPARK_LOCAL_IP=HOST,
               PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable),
               PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run([*cmd, str(script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"spark-submit {script} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run a Spark standalone cluster on 127.0.0.1")
    p.add_argument("--port", type=int, default=7077)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--memory", default="2g")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with StandaloneCluster(workers=a.workers, cores=a.cores, memory=a.memory, port=a.port) as c:
        print(f"master {c.master_url}, web UI http://{HOST}:{c.webui_port} — Ctrl-C to stop",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
