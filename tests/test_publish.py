"""The "current" pointer: atomic switch, consistency checks, rollback (on stand-in artefacts)."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest

from artefacts import pointer as pub
from artefacts.layout import DataLayout
from artefacts.storage import write_json
from jobs.publish import main as publish_main


def make_version(root, ds: str, model_bytes: bytes, *, index_from: bytes | None = None) -> str:
    """Stand-in artefacts of one version; the index may claim another model's version."""
    layout = DataLayout(root)
    layout.models(ds).mkdir(parents=True)
    layout.model_file(ds).write_bytes(model_bytes)
    version = pub.model_version(layout.model_file(ds))
    for folder in (layout.user_vectors(ds), layout.item_embeddings(ds), layout.index(ds),
                   layout.sequences(ds)):
        folder.mkdir(parents=True, exist_ok=True)
    write_json(layout.embeddings(ds) / "manifest.json", {"model_version": version})
    index_version = version if index_from is None else hashlib.sha256(index_from).hexdigest()[:16]
    write_json(layout.index(ds) / "manifest.json", {"model_version": index_version})
    return version


def test_publish_and_rollback(tmp_path):
    v1 = make_version(tmp_path, "2026-11-27", b"model one")
    v2 = make_version(tmp_path, "2026-11-28", b"model two")
    with pytest.raises(pub.NoCurrentVersion):
        pub.read_current(tmp_path)
    pub.publish(tmp_path, "2026-11-27")
    p = pub.publish(tmp_path, "2026-11-28")
    assert (p.ds, p.model_version, p.previous.ds, p.previous.model_version) == (
        "2026-11-28", v2, "2026-11-27", v1)
    assert p.path("index") == tmp_path / "index" / "ds=2026-11-28"
    assert pub.read_current(tmp_path).data == p.data
    # republishing the served version keeps the real previous one
    assert pub.publish(tmp_path, "2026-11-28").previous.ds == "2026-11-27"
    back = pub.rollback(tmp_path)
    assert (back.ds, back.previous.ds) == ("2026-11-27", "2026-11-28")
    assert back.previous.previous is None  # one level is kept, not a growing chain
    assert pub.rollback(tmp_path).ds == "2026-11-28"  # a second rollback rolls forward
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def test_mismatched_or_missing_artefacts_are_not_published(tmp_path):
    make_version(tmp_path, "2026-11-27", b"model one")
    make_version(tmp_path, "2026-11-28", b"model two", index_from=b"a different model")
    pub.publish(tmp_path, "2026-11-27")
    before = DataLayout(tmp_path).current.read_bytes()
    with pytest.raises(pub.PublishError, match="different models"):
        pub.publish(tmp_path, "2026-11-28")
    with pytest.raises(pub.PublishError, match="missing: model"):
        pub.publish(tmp_path, "2026-11-29")
    assert DataLayout(tmp_path).current.read_bytes() == before


def test_rollback_refuses_a_rebuilt_previous_version(tmp_path):
    make_version(tmp_path, "2026-11-27", b"model one")
    make_version(tmp_path, "2026-11-28", b"model two")
    pub.publish(tmp_path, "2026-11-27")
    pub.publish(tmp_path, "2026-11-28")
    DataLayout(tmp_path).model_file("2026-11-27").write_bytes(b"retrained")
    with pytest.raises(pub.PublishError):
        pub.rollback(tmp_path)
    assert pub.read_current(tmp_path).ds == "2026-11-28"


def test_readers_never_see_a_partial_or_mixed_pointer(tmp_path):
    versions = {ds: make_version(tmp_path, ds, ds.encode()) for ds in ("2026-11-27", "2026-11-28")}
    pub.publish(tmp_path, "2026-11-27")
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                d = json.loads(DataLayout(tmp_path).current.read_text())
                assert versions[d["ds"]] == d["model_version"]
                assert d["index"] == f"index/ds={d['ds']}"
                seen.add(d["ds"])
            except Exception as e:  # noqa: BLE001 - any failure of a reader is the bug
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for k in range(100):
        pub.publish(tmp_path, ("2026-11-28", "2026-11-27")[k % 2])
    stop.set()
    t.join()
    assert not errors and seen == set(versions)


def test_cli(tmp_path, capsys):
    assert publish_main(["--data-root", str(tmp_path), "--show"]) == 2
    make_version(tmp_path, "2026-11-28", b"m")
    assert publish_main(["--data-root", str(tmp_path), "--ds", "2026-11-28"]) == 0
    assert json.loads(capsys.readouterr().out)["ds"] == "2026-11-28"
    assert publish_main(["--data-root", str(tmp_path), "--rollback"]) == 2
