"""The local-pipeline launcher's Airflow set-up: a metadata DB left by an older version
of the DAGs (the same paths declared as assets under other names) must not block a run.

Everything Airflow runs in child processes with this test's own AIRFLOW_HOME, so the
module never imports airflow (other test modules configure it their own way).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orchestration.airflow_local import airflow_env, migrate, refresh_assets


@pytest.fixture()
def env(tmp_path) -> dict[str, str]:
    e = airflow_env(airflow_home=tmp_path / "airflow", data_root=tmp_path / "data", nproc=1,
                    epochs=1, lookback=3)
    migrate(e)
    return e


def _active(db: Path, uri: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT name, uri FROM asset_active WHERE uri = ?", (uri,)).fetchall()


@pytest.mark.slow
def test_refresh_assets_replaces_a_stale_asset_of_the_same_path(env):
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    uri = f"file://{env['MIND_DATA_ROOT']}/sequences"
    refresh_assets(env)  # first registration: the DAGs' own asset is active
    assert _active(db, uri) == [(uri, uri)]

    # What an older version of the DAGs left behind: the same URI active under another
    # name, so the current asset cannot be activated (tasks would fail at start).
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM asset_active WHERE uri = ?", (uri,))
        c.execute("INSERT INTO asset (name, uri, \"group\", extra, created_at, updated_at) "
                  "VALUES ('mind_sequences', ?, 'asset', '{}', datetime('now'), datetime('now'))",
                  (uri,))
        c.execute("INSERT INTO asset_active (name, uri) VALUES ('mind_sequences', ?)", (uri,))
    assert _active(db, uri) == [("mind_sequences", uri)]

    refresh_assets(env)
    assert _active(db, uri) == [(uri, uri)]
