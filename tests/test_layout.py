"""The package layout: one kind of code per package, imports only downward (no cycles).

Every import of a first-party package, at module level or inside a function, is read
from the source (AST) and checked against the layering below, so a new upward import
fails here rather than in a reviewer's head.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# package -> the first-party packages it may import (besides itself), bottom to top
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "artefacts": {"schemas"},
    "ingest": {"schemas", "artefacts"},
    "mind_model": {"schemas", "artefacts"},
    "experiments": {"schemas", "artefacts", "mind_model"},
    "serving": {"schemas", "artefacts", "mind_model"},
    "jobs": {"schemas", "artefacts", "mind_model"},
    "orchestration": {"schemas", "artefacts", "ingest", "mind_model", "experiments", "serving",
                      "jobs"},
    "dags": {"orchestration"},
}
FIRST_PARTY = set(ALLOWED) | {"bench", "tests"}


def first_party_imports(path: Path) -> set[str]:
    """Top-level first-party packages imported anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & FIRST_PARTY
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_downward(package):
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    assert files, f"{package}/ holds no Python files"
    wrong = {str(f.relative_to(REPO_ROOT)): sorted(bad)
             for f in files if (bad := first_party_imports(f) - ALLOWED[package] - {package})}
    assert not wrong, f"imports against the layering: {wrong}"


def test_layering_has_no_cycle():
    seen: set[str] = set()
    order = []
    while len(order) < len(ALLOWED):  # peel packages whose dependencies are all placed
        ready = sorted(p for p, deps in ALLOWED.items() if p not in seen and deps <= seen)
        assert ready, f"cycle among {sorted(set(ALLOWED) - seen)}"
        seen |= set(ready)
        order += ready
    assert order[0] == "schemas" and order[-1] == "dags"


def test_every_package_is_installed_and_copied_into_the_image():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    dockerfile = (REPO_ROOT / "infra" / "Dockerfile").read_text()
    for package in ALLOWED:
        assert f'"{package}*"' in pyproject, f"{package} missing from pyproject packages"
        assert f"COPY {package} ./{package}" in dockerfile, f"{package} not in the image"
