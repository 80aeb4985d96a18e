"""infra/: every manifest parses and names entry points that exist in this repository."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
IMAGE_ROOT = "/opt/mind"  # WORKDIR of infra/Dockerfile


def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def modules_in(args: list[str]) -> list[str]:
    """Python modules started by a command line (`python -m X`, `torchrun ... -m X`)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m"]


def assert_module_exists(name: str) -> None:
    assert importlib.util.find_spec(name) is not None, f"module {name} does not exist"


def test_k8s_manifests_parse_and_name_real_entry_points():
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"SparkApplication", "Job", "Service", "PersistentVolumeClaim"} <= kinds
    for path, d in docs:
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), path
        if d["kind"] == "SparkApplication":
            main = d["spec"]["mainApplicationFile"]
            assert main.startswith(f"local://{IMAGE_ROOT}/"), path
            assert (REPO_ROOT / main.removeprefix(f"local://{IMAGE_ROOT}/")).is_file(), main
            assert d["spec"]["sparkVersion"].startswith("3.5"), "image ships pyspark 3.5"
        if d["kind"] == "Job":
            for c in d["spec"]["template"]["spec"]["containers"]:
                mods = modules_in([*c.get("command", []), *c.get("args", [])])
                assert mods, f"{path}: no python module started"
                for m in mods:
                    assert_module_exists(m)
        for vol in _volumes(d):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] == "mind-data"


def _volumes(d: dict) -> list[dict]:
    spec = d.get("spec", {})
    return spec.get("volumes", []) + spec.get("template", {}).get("spec", {}).get("volumes", [])


def test_training_job_uses_torchrun_rendezvous_on_the_headless_service():
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    job = docs[("Job", "mind-train")]
    svc = docs[("Service", "mind-train")]
    assert svc["spec"]["clusterIP"] == "None"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    args = pod["containers"][0]["args"]
    nnodes = int(next(a.split("=")[1] for a in args if a.startswith("--nnodes=")))
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nnodes
    assert "--node_rank=$(JOB_COMPLETION_INDEX)" in args
    assert job["spec"]["completionMode"] == "Indexed"
    assert any(a.startswith("--master_addr=mind-train-0.mind-train") for a in args)


def test_compose_services_and_loopback_ports():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"spark-master", "spark-worker", "airflow", "trainer"} <= set(services)
    for name, s in services.items():
        for port in s.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        cmd = [*s.get("entrypoint", []), *s.get("command", [])]
        for m in modules_in(cmd):
            assert_module_exists(m)
    assert "spark://spark-master:7077" in services["spark-worker"]["command"]
    dags = services["airflow"]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"]
    assert (REPO_ROOT / dags.removeprefix(f"{IMAGE_ROOT}/")).is_dir()


def test_dockerfile_copies_what_exists():
    text = (INFRA / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", text, flags=re.M):
        assert (REPO_ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert "requirements.lock" in text and "openjdk-17" in text


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
