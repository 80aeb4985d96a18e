"""The online service on real published artefacts (Spark embeddings, FAISS index, publish):
answers equal the retrieval library's, bad requests are 4xx with a reason, and a real
uvicorn server swaps versions on publish / rollback without a failed or mixed answer."""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from artefacts.index import SERVED_N
from artefacts.layout import DataLayout
from artefacts.pointer import Pointer, publish, rollback, version_pointer
from artefacts.vectors import read_user_vectors
from jobs.build_index import IndexConfig
from jobs.build_index import run as build_index
from jobs.embed_users import EmbedConfig
from jobs.embed_users import run as embed
from mind_model.checkpoint import save_checkpoint
from mind_model.data import load_meta
from mind_model.model import MIND
from serving.retrieval import NoKnownItems, Retriever
from serving.service import create_app
from serving.versions import VersionWatcher
from tests.conftest import REPO_ROOT, build_generated_sequences

pytestmark = pytest.mark.spark

DS1, DS2, BAD = "2026-11-27", "2026-11-28", "2026-11-29"


def make_version(spark, root: Path, ds: str, seed: int) -> None:
    """A model (random init, `seed`) over the sequences of `ds`, its embeddings and index."""
    layout = DataLayout(root)
    meta = load_meta(layout.sequences(ds))
    torch.manual_seed(seed)
    model = MIND(meta.model_config(embed_dim=16, n_interests=3, tower_hidden=(32,),
                                   profile_dim=4))
    model.set_item_side(torch.from_numpy(meta.item_category), torch.from_numpy(meta.item_brand))
    save_checkpoint(layout.model_file(ds), model=model.eval(), model_config=model.cfg)
    embed(EmbedConfig(data_root=root, ds=ds, batch_size=64, partitions=2), spark)
    build_index(IndexConfig(data_root=root, ds=ds, n_shards=2, recall_users=50))


@pytest.fixture(scope="module")
def versions(spark, tmp_path_factory):
    """Two published-ready versions of different models over the same users and items."""
    root = tmp_path_factory.mktemp("service") / "data"
    build_generated_sequences(spark, root, ds=DS1, days=2, n_events=6_000, seed=5,
                              min_row_groups=2)
    layout = DataLayout(root)
    shutil.copytree(layout.sequences(DS1), layout.sequences(DS2))
    make_version(spark, root, DS1, seed=0)
    make_version(spark, root, DS2, seed=1)
    publish(root, DS1)
    users = read_user_vectors(layout.user_vectors(DS1)).user_ids[:8]
    return SimpleNamespace(root=root, layout=layout, users=users)


def expected(root: Path, ds: str, users: list[str], n: int) -> dict[str, list[str]]:
    """The library's answer for each user from version `ds` (the reference), unpublished."""
    r = Retriever(root, pointer=Pointer(root, version_pointer(root, ds)), gpu=False)
    return {u: r.recommend_user(u, n).item_id for u in users}


@pytest.fixture()
def client(versions):
    publish(versions.root, DS1)
    watcher = VersionWatcher(versions.root)
    watcher.check()
    with TestClient(create_app(watcher, watch=False)) as c:
        yield SimpleNamespace(http=c, watcher=watcher)


# ------------------------------------------------------------------- answers and errors


def test_user_and_items_answers_equal_the_library(versions, client):
    r = Retriever(versions.root, gpu=False)
    for u in versions.users[:4]:
        got = client.http.post("/v1/recommend/user", json={"user_id": u, "n": 20})
        assert got.status_code == 200, got.text
        body = got.json()
        ref = r.recommend_user(u, 20)
        assert body["version"] == {"ds": DS1, "model_version": r.pointer.model_version}
        assert [i["item_id"] for i in body["items"]] == ref.item_id
        assert [i["interest"] for i in body["items"]] == ref.interest.tolist()
        np.testing.assert_allclose([i["score"] for i in body["items"]], ref.score, rtol=1e-6)
        assert body["n_interests"] == ref.n_interests
    u = versions.users[0]
    hist = r.item_ids(r.seen_items(u))
    got = client.http.post("/v1/recommend/items",
                           json={"items": hist + ["no-such-item"], "n": 10,
                                 "profile": {"gender": "F"}}).json()
    ref = r.recommend_items(hist + ["no-such-item"], {"gender": "F"}, n=10)
    assert [i["item_id"] for i in got["items"]] == ref.item_id
    assert not set(hist) & {i["item_id"] for i in got["items"]}  # seen items excluded
    seen = client.http.post("/v1/recommend/items",
                            json={"items": hist, "n": 10, "include_seen": True}).json()
    assert [i["item_id"] for i in seen["items"]] == r.recommend_items(
        hist, n=10, exclude_seen=False).item_id


@pytest.mark.parametrize("path,body,status,says", [
    ("/v1/recommend/user", {"user_id": "u", "n": 5, "colour": "red"}, 422, "colour"),
    ("/v1/recommend/user", {"user_id": "u", "n": 0}, 422, "greater than or equal to 1"),
    ("/v1/recommend/user", {"user_id": "u", "n": SERVED_N + 1}, 422,
     f"less than or equal to {SERVED_N}"),
    ("/v1/recommend/user", {"user_id": "u", "n": "5"}, 422, "valid integer"),
    ("/v1/recommend/user", {"n": 5}, 422, "user_id"),
    ("/v1/recommend/items", {"items": []}, 422, "at least 1 item"),
    ("/v1/recommend/items", {"items": ["x", "y"]}, 422, "none of the 2 item id(s)"),
    ("/v1/recommend/items", {"items": ["x"], "profile": {"shoe": "9"}}, 422, "shoe"),
    ("/v1/recommend/user", {"user_id": "nobody"}, 404, "/v1/recommend/items"),
])
def test_bad_requests_are_4xx_with_a_reason(client, path, body, status, says):
    got = client.http.post(path, json=body)
    assert got.status_code == status
    assert says in json.dumps(got.json()["detail"])


def test_malformed_json_is_422(client):
    got = client.http.post("/v1/recommend/user", content=b'{"user_id": "u",',
                           headers={"content-type": "application/json"})
    assert got.status_code == 422 and "json" in got.text.lower()


def test_no_known_items_in_the_library(versions):
    r = Retriever(versions.root, gpu=False)
    with pytest.raises(NoKnownItems, match="none of the 1 item"):
        r.recommend_items(["zzz"])


def test_health_and_version(versions, client):
    h = client.http.get("/health").json()
    assert h["status"] == "ok" and h["version"]["ds"] == DS1
    v = client.http.get("/version").json()
    assert v["serving"]["ds"] == DS1 and v["swaps"] == 1 and v["last_error"] is None
    assert v["serving"]["items"] > 0 and v["serving"]["recall"] == 1.0


def test_nothing_published_is_503_until_a_version_appears(versions, tmp_path):
    watcher = VersionWatcher(tmp_path)
    watcher.check()
    with TestClient(create_app(watcher, watch=False)) as c:
        assert c.get("/health").status_code == 503
        got = c.post("/v1/recommend/user", json={"user_id": versions.users[0]})
        assert got.status_code == 503 and "no version loaded" in got.text


# ------------------------------------------------------------------------------ swaps


def test_swap_frees_the_old_version_and_a_failed_load_keeps_serving(versions, client, caplog):
    root, w = versions.root, client.watcher
    old = weakref.ref(w.current)
    publish(root, DS2)
    assert w.check() and w.current.pointer.ds == DS2 and w.swaps == 2
    gc.collect()
    assert old() is None  # nothing held the old version: freed
    # a corrupt index published under a valid pointer (publish checks manifests only)
    layout = versions.layout
    for part in ("sequences", "embeddings", "index"):
        shutil.rmtree(getattr(layout, part)(BAD) if part != "embeddings"
                      else layout.embeddings(BAD), ignore_errors=True)
    shutil.copytree(layout.sequences(DS2), layout.sequences(BAD))
    shutil.copytree(layout.embeddings(DS2), layout.embeddings(BAD))
    shutil.copytree(layout.index(DS2), layout.index(BAD))
    layout.models(BAD).mkdir(parents=True, exist_ok=True)
    shutil.copy(layout.model_file(DS2), layout.model_file(BAD))
    (layout.index(BAD) / "shard-000.faiss").write_bytes(b"not an index")
    publish(root, BAD)
    with caplog.at_level(logging.ERROR, logger="serving.versions"):
        assert not w.check()
    assert w.current.pointer.ds == DS2 and "could not load ds=" + BAD in caplog.text
    assert w.last_error["version"]["ds"] == BAD
    got = client.http.post("/v1/recommend/user", json={"user_id": versions.users[0]})
    assert got.status_code == 200 and got.json()["version"]["ds"] == DS2
    assert client.http.get("/version").json()["last_error"]["version"]["ds"] == BAD
    # a stale model: the file under the pointer is no longer the published model
    rollback(root)  # back to DS2: same version as served, nothing to load
    assert not w.check() and w.current.pointer.ds == DS2
    shutil.copy(layout.index(DS2) / "shard-000.faiss", layout.index(BAD) / "shard-000.faiss")
    publish(root, BAD)
    shutil.copy(layout.model_file(DS1), layout.model_file(BAD))  # rebuilt after publish
    assert not w.check() and "StaleVersionError" in w.last_error["error"]
    assert w.current.pointer.ds == DS2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(versions):
    """`python -m serving.service` on a free loopback port, polling every 0.1 s."""
    publish(versions.root, DS1)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "serving.service", "--root",
                             str(versions.root), "--port", str(port), "--poll-s", "0.1",
                             "--cpu", "--log-level", "warning"], env=env, cwd=REPO_ROOT,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the service did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_real_server_swaps_on_publish_and_rollback_without_a_failed_or_mixed_answer(
        versions, server):
    users, n = versions.users, 30
    want = {ds: expected(versions.root, ds, users, n) for ds in (DS1, DS2)}
    assert want[DS1] != want[DS2]  # the two models answer differently
    answers, errors, stop = [], [], threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server, timeout=30) as http:
            i = k
            while not stop.is_set():
                u = users[i % len(users)]
                i += 1
                r = http.post("/v1/recommend/user", json={"user_id": u, "n": n})
                if r.status_code != 200:
                    errors.append((r.status_code, r.text))
                    continue
                body = r.json()
                answers.append((time.monotonic(), body["version"]["ds"], u,
                                [x["item_id"] for x in body["items"]]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()

    def wait_for(ds: str) -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not any(a[1] == ds for a in answers[-5:]):
            time.sleep(0.05)

    time.sleep(0.5)
    publish(versions.root, DS2)
    wait_for(DS2)
    time.sleep(0.5)
    rollback(versions.root)
    wait_for(DS1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    served = [a[1] for a in answers]
    assert {DS1, DS2} <= set(served)
    # each answer is exactly the library's answer of the version it names: nothing mixed
    mixed = [a for a in answers if a[3] != want[a[1]][a[2]]]
    assert not mixed
    # ... and the swaps are clean cuts in time: DS1, then DS2, then DS1 again
    runs = [served[0]] + [b for a, b in zip(served, served[1:]) if a != b]
    assert runs[0] == DS1 and DS2 in runs and runs[-1] == DS1
    assert len(runs) <= 3 + 2 * 2  # in-flight requests may straddle each swap by a little


def test_cli_rejects_bad_flags(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for args, says in ((["--root", str(tmp_path / "none")], "is not a directory"),
                       (["--root", str(tmp_path), "--port", "70000"], "not a port number")):
        proc = subprocess.run([sys.executable, "-m", "serving.service", *args], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr
        assert "Traceback" not in proc.stderr
