"""infra/: every manifest parses and names entry points that exist in this repository."""
from __future__ import annotations

import importlib.util
import re

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
