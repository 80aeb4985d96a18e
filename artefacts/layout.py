"""Where each stage's artefacts live under the data root (one place, so jobs agree).

    <root>/sequences/ds=D/                 build_sequences (vocab/, latest/, items/, stats.json)
    <root>/models/ds=D/model.pt            training (mind_model.checkpoint)
    <root>/models/ds=D/evaluation.json     the publish gate (decision, MLflow run id)
    <root>/embeddings/ds=D/users/          embed_users: USER_VECTORS
    <root>/embeddings/ds=D/items/          embed_users: ITEM_EMBEDDINGS (active catalogue)
    <root>/embeddings/ds=D/manifest.json   embed_users: model version, counts, timings
    <root>/index/ds=D/shard-000.faiss ...  build_index: one FAISS file per shard
    <root>/index/ds=D/manifest.json        build_index: factory, search parameters, recall
    <root>/index/_build-ds=D/              build_index in stages: plan, shards being filled
    <root>/current.json                    publish: the pointer to the served version

Every folder keyed by ds is written staged (artefacts.storage) and never modified in place.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from artefacts.storage import BUILD_PREFIX

MODEL_FILE = "model.pt"
EVALUATION = "evaluation.json"
MANIFEST = "manifest.json"
CURRENT = "current.json"


def check_ds(ds: str) -> str:
    """`ds` if it is a date YYYY-MM-DD; else ValueError naming it (and the --ds flag)."""
    try:
        if len(ds) != 10:
            raise ValueError("expected YYYY-MM-DD")
        dt.date.fromisoformat(ds)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--ds {ds!r} is not a date YYYY-MM-DD ({e})") from None
    return ds


@dataclass(frozen=True)
class DataLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def sequences(self, ds: str) -> Path:
        return self.root / "sequences" / f"ds={check_ds(ds)}"

    def models(self, ds: str) -> Path:
        return self.root / "models" / f"ds={check_ds(ds)}"

    def model_file(self, ds: str) -> Path:
        return self.models(ds) / MODEL_FILE

    def evaluation(self, ds: str) -> Path:
        return self.models(ds) / EVALUATION

    def embeddings(self, ds: str) -> Path:
        return self.root / "embeddings" / f"ds={check_ds(ds)}"

    def user_vectors(self, ds: str) -> Path:
        return self.embeddings(ds) / "users"

    def item_embeddings(self, ds: str) -> Path:
        return self.embeddings(ds) / "items"

    def index(self, ds: str) -> Path:
        return self.root / "index" / f"ds={check_ds(ds)}"

    def index_build(self, ds: str) -> Path:
        """The work folder of an index build in stages; renamed to `index(ds)` when done."""
        return self.root / "index" / f"{BUILD_PREFIX}ds={check_ds(ds)}"

    @property
    def current(self) -> Path:
        return self.root / CURRENT

    def relative(self, path: Path) -> str:
        """`path` relative to the root (pointers store relative paths: the root may move)."""
        return str(Path(path).relative_to(self.root))
