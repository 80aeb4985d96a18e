"""Multi-interest retrieval from the published ("current") model + index + user vectors.

Library:

    r = Retriever("data")                       # reads data/current.json once
    rec = r.recommend_user("u00042", n=50)      # the user's stored K'_u vectors
    rec = r.recommend_items(["i17", "i3"], profile={"gender": "F"}, n=50)  # computed now
    rec.records()  # [{"rank", "item_id", "item_idx", "score", "interest"}, ...]

Each active interest vector searches the index; candidates are merged, each item
keeps its best score (and the interest that gave it: `interest` is the position
among the user's active vectors), the list is sorted by (score desc, item idx asc)
and cut to n. Items already seen are excluded by default: for a stored user, the
items of their latest behaviour sequence (the last L); for a list of items, those
items. Raw ids are mapped through the vocabularies of the published ds; unknown
ids become 1 = unknown, which is never retrieved. A list with no known item at all
(empty, or only ids the published version has never seen) raises NoKnownItems (a
ValueError: a service maps it to a 4xx) rather than answering from nothing.

All artefacts are opened through one read of the pointer, and their model versions
are checked against it, so a Retriever never mixes two versions; it keeps serving
the version it opened until a new Retriever is made.

Performance: a process that both computes vectors (torch) and searches (faiss) runs
two OpenMP runtimes whose idle threads spin by default and starve each other (30x
slower f_user after a search on 2 cores); start it with OMP_WAIT_POLICY=PASSIVE.
Searches need k <= 2048 per interest on GPUs (n plus the number of excluded items).

CLI:
    python -m serving.retrieval --root DATA_ROOT --user-id U [-n 50] [--include-seen]
    python -m serving.retrieval --root DATA_ROOT --items i1,i2,... [--profile gender=F]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import faiss
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from artefacts import index as ix
from artefacts.cli import run_main
from artefacts.pointer import ARTEFACTS, Pointer, read_current, read_manifest
from artefacts.vectors import UserVectors, read_user_vectors
from schemas import LATEST_SEQUENCES, PROFILE_FIELDS, UNK_IDX, VOCAB

log = logging.getLogger(__name__)


class UnknownUserError(KeyError):
    """The user has no stored vectors in the published version."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class StaleVersionError(RuntimeError):
    """An artefact under the pointer was rebuilt by another model since it was published."""


class NoKnownItems(ValueError):
    """recommend_items got no item the published version knows: nothing to go on."""


class MissingArtefact(FileNotFoundError):
    """current.json names an artefact that is not on disk."""


@dataclass
class Recommendation:
    """One user's top n, best first."""

    item_idx: np.ndarray   # (n,) int64
    item_id: list[str]     # (n,) raw ids
    score: np.ndarray      # (n,) float32 best inner product over the user's interests
    interest: np.ndarray   # (n,) int64 which active interest (0..K'_u-1) gave the score
    n_interests: int       # K'_u

    def records(self) -> list[dict[str, Any]]:
        return [{"rank": r + 1, "item_id": i, "item_idx": x, "score": s, "interest": k}
                for r, (i, x, s, k) in enumerate(zip(  # tolist: Python numbers in one pass
                    self.item_id, self.item_idx.tolist(), self.score.tolist(),
                    self.interest.tolist()))]


def _read_vocab(seq_dir: Path, name: str) -> tuple[dict[str, int], np.ndarray]:
    """raw -> idx, and idx -> raw (object array, index = idx; None where unused)."""
    path = seq_dir / "vocab" / name
    if not path.is_dir():
        return {}, np.array([None, None], dtype=object)
    t = pads.dataset(str(path), format="parquet", schema=VOCAB.arrow_schema()).to_table(
        columns=["value", "idx"])
    values, idx = t.column("value").to_pylist(), t.column("idx").to_numpy()
    inverse = np.full(int(idx.max(initial=UNK_IDX)) + 1, None, dtype=object)
    inverse[idx] = values
    return dict(zip(values, idx.tolist())), inverse


class Retriever:
    """Top-n items for users, from the published version under `root` (see module doc).

    gpu: None = use GPUs when faiss sees any, False = CPU. preload_users: read all
    user vectors and histories into memory (a long-running service) instead of
    looking each user up in the Parquet files (a CLI call, a notebook).
    """

    def __init__(self, root: Path | str, *, pointer: Pointer | None = None,
                 gpu: bool | None = None, preload_users: bool = False, mmap: bool = False):
        self.pointer = pointer or read_current(root)
        p = self.pointer
        for name in ARTEFACTS:
            if not p.path(name).exists():
                raise MissingArtefact(
                    f"the published version (ds={p.ds}) names {name} {p.path(name)}, which is "
                    f"missing: rebuild it, or publish/roll back to a complete version "
                    f"(python -m jobs.publish --ds DS | --rollback)")
        self.manifest = read_manifest(p.path("index"))
        emb_manifest = read_manifest(p.path("user_vectors").parent)
        for what, m in (("index", self.manifest), ("embeddings", emb_manifest)):
            if m.get("model_version") != p.model_version:
                raise StaleVersionError(
                    f"the {what} of ds={p.ds} was made by model {m.get('model_version')}, "
                    f"but the published model is {p.model_version}: republish "
                    f"(python -m jobs.publish) after the rebuild completes")
        shards = ix.read_shards(p.path("index"), [s["file"] for s in self.manifest["shards"]],
                                mmap=mmap)
        if gpu is not False and faiss.get_num_gpus():
            self.index, self.on_gpu = ix.to_gpus(shards)
        else:  # one merged index: no per-search threads per shard (memory-mapped: as shards)
            self.index, self.on_gpu = ix.combine(shards, merge=not mmap), False
        ix.set_search_params(self.index, self.manifest.get("search_params", {}), gpu=self.on_gpu)
        self._shards = shards  # keep the CPU shards alive while the index is used
        self._model = None
        self._vocab: dict[str, tuple[dict[str, int], np.ndarray]] = {}
        self._users: dict[str, np.ndarray] | None = None
        self._seen: dict[str, np.ndarray] | None = None
        if preload_users:
            self._preload()
        log.info("serving ds=%s, model %s: %s, %d items, %d shard(s)%s", p.ds,
                 p.model_version, self.manifest["factory"], self.index.ntotal,
                 len(shards), " on GPU" if self.on_gpu else "")

    # ------------------------------------------------------------------ ids and vocabularies

    def vocab(self, name: str) -> tuple[dict[str, int], np.ndarray]:
        if name not in self._vocab:
            self._vocab[name] = _read_vocab(self.pointer.path("sequences"), name)
        return self._vocab[name]

    def item_idx(self, item_ids: Iterable[str]) -> np.ndarray:
        """Raw item ids -> item idx (unknown -> 1)."""
        fwd, _ = self.vocab("item")
        return np.array([fwd.get(str(i), UNK_IDX) for i in item_ids], dtype=np.int64)

    def item_ids(self, item_idx: np.ndarray) -> list[str]:
        _, inv = self.vocab("item")
        return [inv[i] if 0 <= i < len(inv) and inv[i] is not None else f"#{i}"
                for i in np.asarray(item_idx).tolist()]

    # ----------------------------------------------------------------------------- users

    def _check_versions(self, uv: UserVectors) -> None:
        if uv.model_versions - {self.pointer.model_version}:
            raise StaleVersionError(f"user vectors of model(s) {uv.model_versions} under a "
                                    f"pointer to model {self.pointer.model_version}")

    def _preload(self) -> None:
        uv = read_user_vectors(self.pointer.path("user_vectors"))
        self._check_versions(uv)
        self._users = dict(zip(uv.user_ids, uv.vectors))
        t = self._latest()
        self._seen = dict(zip(t.column("user_id").to_pylist(), self._histories(t)))
        log.info("preloaded %d users", len(self._users))

    def _latest(self, user_id: str | None = None):
        path = self.pointer.path("sequences") / "latest"
        flt = None if user_id is None else pc.field("user_id") == user_id
        return pads.dataset(str(path), format="parquet",
                            schema=LATEST_SEQUENCES.arrow_schema()).to_table(
            columns=["user_id", "hist", "hist_len"], filter=flt)

    @staticmethod
    def _histories(t) -> list[np.ndarray]:
        hist = t.column("hist").to_pylist()
        return [np.asarray(h[:n], dtype=np.int64)
                for h, n in zip(hist, t.column("hist_len").to_pylist())]

    def user_vectors(self, user_id: str) -> np.ndarray:
        """The user's stored active interest vectors (K'_u, D); UnknownUserError if none."""
        if self._users is not None:
            v = self._users.get(user_id)
        else:
            uv = read_user_vectors(self.pointer.path("user_vectors"), [user_id])
            self._check_versions(uv)
            v = uv.vectors[0] if len(uv) else None
        if v is None:
            raise UnknownUserError(f"user {user_id!r} has no vectors in the published version "
                                   f"(ds={self.pointer.ds}); use recommend_items with their "
                                   f"recent items instead")
        return v

    def seen_items(self, user_id: str) -> np.ndarray:
        """Item idx of the user's latest behaviour sequence (empty if unknown)."""
        if self._seen is not None:
            return self._seen.get(user_id, np.zeros(0, np.int64))
        h = self._histories(self._latest(user_id))
        return h[0] if h else np.zeros(0, np.int64)

    # ----------------------------------------------------------------------------- model

    @property
    def model(self):
        """The published model (loaded on first use: only on-the-fly vectors need it)."""
        if self._model is None:
            from artefacts.pointer import model_version
            from mind_model.checkpoint import load_model

            path = self.pointer.path("model")
            if model_version(path) != self.pointer.model_version:
                raise StaleVersionError(f"{path} is no longer model {self.pointer.model_version}")
            self._model = load_model(path)
        return self._model

    def vectors_for_items(self, item_ids: Sequence[str],
                          profile: Mapping[str, str] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Active interest vectors (K', D) computed now from raw item ids (oldest first) and
        raw profile values ({"gender": "F", ...}); returns (vectors, item idx)."""
        from mind_model.inference import interest_vectors, pad_history

        unknown = set(profile or {}) - set(PROFILE_FIELDS)
        if unknown:
            raise ValueError(f"unknown profile field(s) {sorted(unknown)}; "
                             f"known: {list(PROFILE_FIELDS)}")
        idx = self.item_idx(item_ids)
        if not (idx > UNK_IDX).any():
            raise NoKnownItems(
                f"none of the {len(idx)} item id(s) given is known to the published version "
                f"(ds={self.pointer.ds}): {_sample(item_ids)}" if len(idx) else
                "no item id given: recommendations from items need at least one known item")
        hist, hist_len = pad_history(idx, self.model.cfg.max_len)
        prof = {f: np.array([self.vocab(f)[0].get(str(v), UNK_IDX)])
                for f, v in (profile or {}).items() if v is not None}
        vectors, _ = interest_vectors(self.model, hist, hist_len, prof)
        return vectors[0], idx

    # ---------------------------------------------------------------------------- search

    def search(self, vectors: Sequence[np.ndarray], n: int = 50,
               exclude: Sequence[Iterable[int]] | None = None) -> list[Recommendation]:
        """Batch retrieval: one (K'_u, D) array per user, optional item idx to exclude."""
        hits = ix.multi_interest_search(self.index, vectors, n, exclude)
        return [Recommendation(h.ids, self.item_ids(h.ids), h.scores, h.interest, len(v))
                for h, v in zip(hits, vectors)]

    def recommend_user(self, user_id: str, n: int = 50, exclude_seen: bool = True
                       ) -> Recommendation:
        vectors = self.user_vectors(user_id)
        seen = [self.seen_items(user_id)] if exclude_seen else None
        return self.search([vectors], n, seen)[0]

    def recommend_items(self, item_ids: Sequence[str], profile: Mapping[str, str] | None = None,
                        n: int = 50, exclude_seen: bool = True) -> Recommendation:
        vectors, idx = self.vectors_for_items(item_ids, profile)
        return self.search([vectors], n, [idx] if exclude_seen else None)[0]


# --------------------------------------------------------------------------------- CLI


def _sample(ids: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(str(i)) for i in list(ids)[:k])
    return shown + (" ..." if len(ids) > k else "")


def _profile(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        return dict(kv.split("=", 1) for kv in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--profile must be field=value,...; got {text!r}")


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, expected=(UnknownUserError, StaleVersionError))


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="Top-n items for a user from the published index")
    p.add_argument("--root", required=True, type=Path, help="data root (holds current.json)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", help="a user with stored vectors")
    who.add_argument("--items", help="comma-separated raw item ids, oldest first")
    p.add_argument("--profile", type=_profile, default=None,
                   help=f"with --items: field=value,... of {', '.join(PROFILE_FIELDS)}")
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--include-seen", action="store_true", help="do not exclude seen items")
    p.add_argument("--cpu", action="store_true", help="never use GPUs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"-n must be >= 1, got {a.n}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if a.items is not None:
        items = [i.strip() for i in a.items.split(",") if i.strip()]
        if not items:
            p.error(f"--items holds no item id ({a.items!r}): give comma-separated raw ids")
    r = Retriever(a.root, gpu=False if a.cpu else None)
    if a.user_id is not None:
        rec = r.recommend_user(a.user_id, a.n, exclude_seen=not a.include_seen)
    else:
        rec = r.recommend_items(items, a.profile, a.n, exclude_seen=not a.include_seen)
    if a.json:
        print(json.dumps({"ds": r.pointer.ds, "model_version": r.pointer.model_version,
                          "n_interests": rec.n_interests, "items": rec.records()}, indent=1))
    else:
        print(f"ds={r.pointer.ds} model={r.pointer.model_version} interests={rec.n_interests}")
        print(f"{'rank':>4}  {'item_id':<20} {'score':>10}  interest")
        for row in rec.records():
            print(f"{row['rank']:>4}  {row['item_id']:<20} {row['score']:>10.4f}  "
                  f"{row['interest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
