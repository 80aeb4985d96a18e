"""The online retrieval service: HTTP over the published version, swapped without downtime.

    python -m serving.service --root DATA_ROOT [--host 127.0.0.1 --port 8080]

Endpoints (JSON; unknown fields, n out of range, empty or malformed bodies -> 422 with
the reason):

    POST /v1/recommend/user   {"user_id": "u42", "n": 50, "include_seen": false}
    POST /v1/recommend/items  {"items": ["i1", "i7"], "profile": {"gender": "F"}, "n": 50}
    GET  /health              200 while a version is served, 503 before the first one
    GET  /version             the served version, when it was loaded, swaps, last load error

A recommendation lists items best first with their score and the interest that
produced each (the position among the user's K'_u active interest vectors), and the
version that answered: {"ds", "model_version"}. Every request is answered by one
version (`serving.versions`); an unknown user is a 404 that says to send items instead.

Requests run in a thread pool (handlers are plain functions: FAISS and torch release
the GIL while they compute). OMP_WAIT_POLICY=PASSIVE is set before the libraries load:
torch and FAISS each bring an OpenMP runtime whose spinning threads starve the other's.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy / faiss / torch load

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

from fastapi import FastAPI, HTTPException  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from artefacts.index import SERVED_N  # noqa: E402
from schemas import PROFILE_FIELDS  # noqa: E402
from serving.retrieval import NoKnownItems, Recommendation, UnknownUserError  # noqa: E402
from serving.versions import Served, VersionWatcher, load_version  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_N = 50
MAX_ITEMS = 1000  # a history longer than the model's L is cut to its last L anyway


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    n: int = Field(DEFAULT_N, ge=1, le=SERVED_N,
                   description=f"items to return, 1..{SERVED_N} (the recall gate checks "
                               f"{SERVED_N})")
    include_seen: bool = Field(False, description="also return the items of the history")


class UserRequest(_Request):
    user_id: str = Field(min_length=1, description="a user with stored interest vectors")


class ItemsRequest(_Request):
    items: list[str] = Field(min_length=1, max_length=MAX_ITEMS,
                             description="raw item ids of the user's recent behaviours, "
                                         "oldest first")
    profile: dict[str, str] | None = Field(
        None, description=f"raw profile values by field: {', '.join(PROFILE_FIELDS)}")


class Item(BaseModel):
    rank: int
    item_id: str
    item_idx: int
    score: float
    interest: int


class Version(BaseModel):
    ds: str
    model_version: str


class RecommendResponse(BaseModel):
    version: Version
    n_interests: int
    items: list[Item]


def _response(served: Served, rec: Recommendation) -> Response:
    """The JSON of a RecommendResponse, written directly: validating 1000 items through
    pydantic again would cost more than the search (the model documents the schema)."""
    body = {"version": served.version(), "n_interests": rec.n_interests,
            "items": rec.records()}
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def create_app(watcher: VersionWatcher, *, watch: bool = True) -> FastAPI:
    """The FastAPI app over `watcher`'s version; `watch` starts (and stops) its polling."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:
        if watch:
            watcher.start()
        yield
        if watch:
            watcher.stop()

    app = FastAPI(title="MIND retrieval", lifespan=lifespan,
                  description="Multi-interest retrieval from the published version")

    def served() -> Served:
        s = watcher.current  # read once: the whole request uses this version
        if s is None:
            raise HTTPException(503, f"no version loaded yet from {watcher.root} "
                                     f"(nothing published, or its load failed: GET /version)")
        return s

    @app.post("/v1/recommend/user", response_model=RecommendResponse)
    def recommend_user(req: UserRequest) -> Response:
        s = served()
        try:
            rec = s.retriever.recommend_user(req.user_id, req.n,
                                             exclude_seen=not req.include_seen)
        except UnknownUserError:
            raise HTTPException(404, f"user {req.user_id!r} has no stored vectors in ds="
                                     f"{s.pointer.ds}: POST /v1/recommend/items with the "
                                     f"user's recent item ids instead") from None
        return _response(s, rec)

    @app.post("/v1/recommend/items", response_model=RecommendResponse)
    def recommend_items(req: ItemsRequest) -> Response:
        s = served()
        try:
            rec = s.retriever.recommend_items(req.items, req.profile, req.n,
                                              exclude_seen=not req.include_seen)
        except NoKnownItems as e:
            raise HTTPException(422, str(e)) from None
        except ValueError as e:  # an unknown profile field
            raise HTTPException(422, str(e)) from None
        return _response(s, rec)

    @app.get("/health")
    def health() -> JSONResponse:
        s = watcher.current
        if s is None:
            return JSONResponse({"status": "unavailable", "version": None}, status_code=503)
        return JSONResponse({"status": "ok", "version": s.version()})

    @app.get("/version")
    def version() -> dict[str, Any]:
        s = watcher.current
        info = None if s is None else {
            **s.version(), "published_at": s.pointer.data.get("published_at"),
            "loaded_at": s.loaded_at, "load_seconds": s.load_seconds,
            "index": s.retriever.manifest.get("factory"),
            "items": int(s.retriever.index.ntotal),
            "search_params": s.retriever.manifest.get("search_params", {}),
            "recall": s.retriever.manifest.get("recall", {}).get("value"),
        }
        return {"serving": info, "swaps": watcher.swaps, "last_error": watcher.last_error,
                "root": str(watcher.root)}

    return app


# --------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MIND retrieval service (FastAPI + uvicorn)")
    p.add_argument("--root", required=True, type=Path, help="data root (holds current.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default loopback; put a proxy in front to expose it)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--poll-s", type=float, default=1.0,
                   help="seconds between checks of current.json")
    p.add_argument("--cpu", action="store_true", help="never use GPUs")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    if not a.root.is_dir():
        p.error(f"--root {a.root} is not a directory")
    if not 0 <= a.port <= 65535:
        p.error(f"--port {a.port} is not a port number (0..65535)")
    if a.poll_s <= 0:
        p.error(f"--poll-s must be > 0, got {a.poll_s}")
    return a


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    a = parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watcher = VersionWatcher(a.root, poll_s=a.poll_s,
                             loader=functools.partial(load_version, gpu=False if a.cpu else None))
    app = create_app(watcher)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level,
                access_log=a.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
