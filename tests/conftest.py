"""Shared fixtures: one Spark session for the whole run, paths to the real data sets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# MLflow tracking is off in tests unless a test switches it on (tests/test_tracking.py):
# otherwise every training of the suite would create a SQLite store in its temporary root.
os.environ.setdefault("MIND_TRACKING", "0")
SHARED_DATASETS = Path(os.environ.get("MIND_SHARED_DATASETS",
                                      REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def spark():
    """A local[2] session with few shuffle partitions, shared by every Spark test."""
    from jobs.spark import start_spark

    session = start_spark("mind-tests", "local[2]", {
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "4",
        "spark.sql.adaptive.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    })
    yield session
    session.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensor tests run faster (and steadier on a shared machine) on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATASETS} (set MIND_SHARED_DATASETS)")
    return SHARED_DATASETS


def import_beauty(shared_datasets: Path, raw: Path) -> str:
    """Amazon Beauty (the SASRec sequences) imported as raw logs under `raw`; returns its ds."""
    from ingest.importers import import_any

    folder = shared_datasets / "amazon_beauty"
    result = import_any("amazon-seq", [folder / "Beauty.txt",
                                       folder / "Beauty_item2attributes.json"], raw)
    (ds,) = result.rows_per_ds
    return ds


def build_generated_sequences(spark, root: Path, *, ds: str, days: int, n_events: int, seed: int,
                              min_row_groups: int = 4) -> Path:
    """Generated logs -> build_sequences output; returns the sequences/ds=<ds> folder."""
    from ingest.sample_data import generate
    from jobs.build_sequences import PrepConfig, run

    generate(root / "raw", end_ds=ds, days=days, n_events=n_events, seed=seed)
    run(PrepConfig(data_root=root, ds=ds, lookback_days=days, min_row_groups=min_row_groups),
        spark)
    return root / "sequences" / f"ds={ds}"


def build_published_root(spark, root: Path, *, ds: str, n_events: int, seed: int,
                         model_kw: dict, batch_size: int, partitions: int, n_shards: int,
                         recall_users: int):
    """Generated logs -> sequences -> a random MIND -> embeddings -> index -> published.
    Returns (layout, meta, model (eval mode), embedding manifest, index manifest)."""
    import torch

    from artefacts.layout import DataLayout
    from artefacts.pointer import publish
    from ingest.sample_data import generate
    from jobs.build_index import IndexConfig
    from jobs.build_index import run as build_index
    from jobs.build_sequences import PrepConfig
    from jobs.build_sequences import run as build_sequences
    from jobs.embed_users import EmbedConfig
    from jobs.embed_users import run as embed
    from mind_model.checkpoint import save_checkpoint
    from mind_model.data import load_meta
    from mind_model.model import MIND

    generate(root / "raw", end_ds=ds, days=2, n_events=n_events, seed=seed)
    build_sequences(PrepConfig(data_root=root, ds=ds, lookback_days=2, min_user_count=2,
                               min_row_groups=2), spark)
    layout = DataLayout(root)
    meta = load_meta(layout.sequences(ds))
    torch.manual_seed(0)
    model = MIND(meta.model_config(**model_kw))
    model.set_item_side(torch.from_numpy(meta.item_category), torch.from_numpy(meta.item_brand))
    model.eval()
    save_checkpoint(layout.model_file(ds), model=model, model_config=model.cfg)
    emb = embed(EmbedConfig(data_root=root, ds=ds, batch_size=batch_size, partitions=partitions),
                spark)
    idx = build_index(IndexConfig(data_root=root, ds=ds, n_shards=n_shards,
                                  recall_users=recall_users))
    publish(root, ds)
    return layout, meta, model, emb, idx


def no_traceback(text: str) -> None:
    """Bad input ends in a message, never a stack trace."""
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]


def assert_main_error(capsys, main, argv: list[str], *names: str) -> str:
    """An in-process `main(argv)` refusing bad input: exit 2, no traceback, and a last
    stderr line with `error: ` naming each of `names` (argparse's own flag errors:
    SystemExit(2) after the usage, `prog: error: ...`)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    no_traceback(out + err)
    assert code == 2, (out[-2000:], err[-2000:])
    line = err.strip().splitlines()[-1]
    assert "error: " in line and all(n in line for n in names), (names, line)
    return line
