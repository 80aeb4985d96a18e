"""Training: 2-process DDP on CPU (gloo), resume, checkpoints, warm start, the reader.

One small generated data set is built per module (Spark, ~25 s); every training run
uses small dimensions and one thread per process so the module stays near a minute.
"""
from __future__ import annotations

import contextlib
import math
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import mind_model.train as train_mod
from mind_model.checkpoint import (
    load_checkpoint,
    load_model,
    load_optimizer_state,
    optimizer_param_names,
    save_checkpoint,
    warm_start,
)
from mind_model.config import ModelConfig
from mind_model.data import load_meta, read_eval, read_train
from mind_model.evaluate import HeldOutSample
from mind_model.loss import SampledSoftmaxLoss
from mind_model.model import MIND
from mind_model.reader import row_group_rows, shard_rows, train_batches
from mind_model.train import TrainConfig, TrainStep, param_groups, params_sha256, train
from schemas import PROFILE_COLUMNS
from tests.conftest import build_generated_sequences

DS = "2026-11-28"


@pytest.fixture(scope="module")
def seq_dir(spark, tmp_path_factory) -> Path:
    return build_generated_sequences(spark, tmp_path_factory.mktemp("train_data"), ds=DS,
                                     days=2, n_events=30_000, seed=7, min_row_groups=4)


def small_cfg(seq_dir: Path, out_dir: Path, **kw) -> TrainConfig:
    base = dict(data_dir=seq_dir, out_dir=out_dir, embed_dim=32, tower_hidden=(64,), profile_dim=8,
                n_neg=256, batch_size=64, lr=3e-3, epochs=3, threads=1, reader_workers=1,
                shuffle_buffer=2048, progress=False, log_every=20, eval_users=2000)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------- DDP (elastic_launch)


def _ddp_worker(cfg: TrainConfig) -> dict:
    """Runs in each spawned process: train under the torchrun-style environment."""
    return train(cfg)


@pytest.mark.spark
@pytest.mark.slow
def test_ddp_two_processes_learn_and_stay_in_sync(seq_dir, tmp_path):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = small_cfg(seq_dir, tmp_path / "run", eval_split="valid")
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn")
    results = elastic_launch(launch, _ddp_worker)(cfg)
    r0, r1 = results[0], results[1]

    meta = load_meta(seq_dir)
    spe = meta.train_samples // (cfg.batch_size * 2)
    # the same number of steps on both ranks although petastorm's shards differ in size
    assert shard_rows(seq_dir / "train", 0, 2) != shard_rows(seq_dir / "train", 1, 2)
    assert r0["step"] == r1["step"] == 3 * spe and r0["steps_per_epoch"] == spe
    # DDP kept the replicas bitwise equal, and rank 0 saved exactly that model
    assert r0["params_sha256"] == r1["params_sha256"]
    assert params_sha256(load_model(r0["last"])) == r0["params_sha256"]

    hist = r0["history"]
    print("losses", [round(h["loss"], 3) for h in hist], "valid hr@50",
          [round(h["valid_hr@50"], 3) for h in hist], "test", r0["test"], "random",
          50 / len(meta.active_items))
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5, [h["loss"] for h in hist]
    assert hist[-1]["loss"] < math.log(cfg.n_neg) - 1.5  # well below log(#negatives)
    random_hr50 = 50 / len(meta.active_items)
    best_hr50 = max(h["valid_hr@50"] for h in hist)
    assert r0["best_valid"]["valid_hr@50"] == best_hr50
    assert best_hr50 > 4 * random_hr50, (best_hr50, random_hr50)
    assert r0["test"]["hr@50"] > 4 * random_hr50
    assert {"last.pt", "best.pt", "metrics.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert load_checkpoint(r0["best"])["step"] == r0["best_valid"]["step"]


# --------------------------------------------------------------------- resume


def _adam_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}


@pytest.mark.spark
def test_resume_continues_from_last_checkpoint(seq_dir, tmp_path):
    out = tmp_path / "run"
    kw = dict(epochs=100, eval_every_epoch=False, test_at_end=False)
    r1 = train(small_cfg(seq_dir, out, max_steps=30, **kw))
    assert r1["step"] == 30 and r1["steps_run"] == 30
    ck1 = load_checkpoint(out / "last.pt")
    assert ck1["step"] == 30 and _adam_steps(ck1) == {30}

    r2 = train(small_cfg(seq_dir, out, max_steps=50, **kw))
    assert r2["resumed_from"] == str(out / "last.pt")
    assert r2["start_step"] == 30 and r2["steps_run"] == 20 and r2["step"] == 50
    ck2 = load_checkpoint(out / "last.pt")
    # Adam counts every step since the start: its state was restored, not restarted
    assert ck2["step"] == 50 and _adam_steps(ck2) == {50}
    assert ck2["train_config"]["max_steps"] == 50

    r3 = train(small_cfg(seq_dir, out, max_steps=50, **kw))  # nothing left to do
    assert r3["steps_run"] == 0 and r3["step"] == 50


@pytest.mark.spark
def test_killed_run_resumes(seq_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    kw = dict(epochs=100, max_steps=40, save_every_steps=15, eval_every_epoch=False,
              test_at_end=False)
    real_save = train_mod.save_checkpoint

    def save_then_die(path, **kwargs):
        real_save(path, **kwargs)
        if Path(path).name == "last.pt" and kwargs["step"] == 15:
            raise RuntimeError("killed")  # dies right after the checkpoint, mid-epoch

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        train(small_cfg(seq_dir, out, **kw))
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert load_checkpoint(out / "last.pt")["step"] == 15

    r = train(small_cfg(seq_dir, out, **kw))
    assert r["start_step"] == 15 and r["steps_run"] == 25 and r["step"] == 40
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 40 and _adam_steps(ck) == {40}


@pytest.mark.spark
def test_an_early_stopped_run_is_finished(seq_dir, tmp_path):
    """With patience, training stops once valid HR@50 has not improved for that many
    epochs and keeps the best epoch; rerunning the finished run trains nothing more."""
    out = tmp_path / "run"
    kw = dict(epochs=100, steps_per_epoch=3, patience=1, lr=1e-6, eval_users=300, min_samples=0)
    r1 = train(small_cfg(seq_dir, out, **kw))
    hist = r1["history"]
    assert r1["stopped"] == "early_stop" and len(hist) < 100
    best = max(range(len(hist)), key=lambda i: (hist[i]["valid_hr@50"], -i))
    assert r1["best_valid"]["epoch"] == best and len(hist) == best + 2  # one bad epoch
    r2 = train(small_cfg(seq_dir, out, **kw))
    assert r2["steps_run"] == 0 and r2["stopped"] == "early_stop"
    assert r2["params_sha256"] == r1["params_sha256"]


@pytest.mark.spark
def test_early_stopping_waits_for_min_samples(seq_dir, tmp_path):
    """Patience runs out only once min_samples training samples were seen: 3 steps of 64
    samples per epoch and min_samples = 6 epochs' worth, patience 1 -> the run stops at the
    first epoch from the 6th on (index >= 5) that does not beat every earlier one."""
    kw = dict(epochs=100, steps_per_epoch=3, patience=1, lr=1e-6, eval_users=300,
              min_samples=6 * 3 * 64)
    r = train(small_cfg(seq_dir, tmp_path / "run", **kw))
    scores = [h["valid_hr@50"] for h in r["history"]]
    improved = [i == 0 or s > max(scores[:i]) for i, s in enumerate(scores)]
    expected_stop = next(i for i in range(5, len(scores)) if not improved[i])
    assert r["stopped"] == "early_stop" and len(scores) == expected_stop + 1
    assert not all(improved[:5])  # lr 1e-6: an earlier epoch would have stopped without it


@pytest.mark.spark
def test_resume_refuses_a_different_model(seq_dir, tmp_path):
    out = tmp_path / "run"
    train(small_cfg(seq_dir, out, max_steps=2, eval_every_epoch=False, test_at_end=False))
    with pytest.raises(ValueError, match="different model"):
        train(small_cfg(seq_dir, out, max_steps=4, embed_dim=16, eval_every_epoch=False,
                        test_at_end=False))


@pytest.mark.spark
def test_checkpoint_from_before_a_config_field_existed_resumes(seq_dir, tmp_path):
    # Checkpoints written by an older version lack newer ModelConfig fields; with the
    # fields at their defaults they are the same model and must resume (a daily run
    # after an upgrade), not be refused as "a different model".
    out = tmp_path / "run"
    kw = dict(epochs=100, eval_every_epoch=False, test_at_end=False)
    train(small_cfg(seq_dir, out, max_steps=2, **kw))
    ckpt = load_checkpoint(out / "last.pt")
    for newer in ("embed_init_std", "routing_init_scale"):
        del ckpt["model_config"][newer]
    torch.save(ckpt, out / "last.pt")
    r = train(small_cfg(seq_dir, out, max_steps=4, **kw))
    assert r["start_step"] == 2 and r["step"] == 4
    # a non-default value of such a field is still a different model
    with pytest.raises(ValueError, match="different model"):
        train(small_cfg(seq_dir, out, max_steps=6, routing_init_scale=2.0, **kw))


@pytest.mark.spark
def test_train_warm_starts_from_a_previous_run(seq_dir, tmp_path):
    kw = dict(eval_every_epoch=False, test_at_end=False)
    prev = train(small_cfg(seq_dir, tmp_path / "day1", max_steps=5, **kw))
    r = train(small_cfg(seq_dir, tmp_path / "day2", max_steps=0, warm_start_from=prev["last"],
                        **kw))
    assert r["steps_run"] == 0 and r["params_sha256"] == prev["params_sha256"]
    # resuming wins over warm starting: day2's own last.pt is continued
    r = train(small_cfg(seq_dir, tmp_path / "day2", max_steps=3, warm_start_from=prev["last"],
                        **kw))
    assert r["start_step"] == 0 and r["resumed_from"] == str(tmp_path / "day2" / "last.pt")


# --------------------------------------------------------------------- checkpoints


def _tiny_model(n_items=40, n_categories=6, n_brands=5, **kw) -> MIND:
    cfg = ModelConfig(n_items=n_items, n_categories=n_categories, n_brands=n_brands,
                      profile_vocab={"gender": 4}, embed_dim=8, max_len=6, tower_hidden=(16,),
                      n_neg=16, **kw)
    torch.manual_seed(0)
    return MIND(cfg)


def _tiny_batch(n_items: int, B: int = 5, L: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.randint(1, L + 1, (B,), generator=g)
    hist = torch.randint(2, n_items, (B, L), generator=g)
    hist[torch.arange(L)[None, :] >= hist_len[:, None]] = 0
    return {"hist": hist, "hist_len": hist_len,
            "target": torch.randint(2, n_items, (B,), generator=g),
            "gender_idx": torch.randint(0, 4, (B,), generator=g)}


def test_checkpoint_is_weights_only_and_load_model_reproduces_user_vectors(tmp_path):
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    model.set_item_side(torch.randint(2, 6, (40,), generator=g),
                        torch.randint(2, 5, (40,), generator=g))
    step = TrainStep(model, SampledSoftmaxLoss(40, 16))
    opt = torch.optim.Adam(step.parameters(), lr=1e-2)
    for s in range(3):
        loss = step(_tiny_batch(40, seed=s))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_checkpoint(tmp_path / "ck" / "last.pt", model=model, model_config=model.cfg,
                           optimizer=opt, step=3, epoch=0,
                           train_config={"out_dir": tmp_path, "tower": (16,), "p": math.inf},
                           best={"valid_hr@50": np.float32(0.25)}, meta={"n": np.int64(40)})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left

    raw = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    assert raw["step"] == 3 and raw["train_config"]["out_dir"] == str(tmp_path)
    assert raw["model_config"]["pow_p"] == math.inf and raw["train_config"]["p"] == math.inf
    assert raw["best"]["valid_hr@50"] == pytest.approx(0.25) and raw["meta"]["n"] == 40
    assert {int(s["step"]) for s in raw["optimizer"]["state"].values()} == {3}

    loaded = load_model(path)
    assert not loaded.training
    model.eval()
    b = _tiny_batch(40, seed=9)
    V0, m0 = model.user_interests(b["hist"], b["hist_len"], b)
    V1, m1 = loaded.user_interests(b["hist"], b["hist_len"], b)
    assert torch.equal(m0, m1) and torch.allclose(V0, V1, atol=0, rtol=0)
    # item side ids (buffers) came back too: the item embeddings agree
    assert torch.equal(loaded.items.item_category, model.items.item_category)
    assert torch.allclose(loaded.all_item_embeddings(), model.all_item_embeddings(), atol=0, rtol=0)


def test_warm_start_grows_vocabularies(tmp_path):
    old = _tiny_model(n_items=40, n_categories=6)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(1.0)  # distinguishable from any fresh init
    path = save_checkpoint(tmp_path / "old.pt", model=old, model_config=old.cfg)

    new = _tiny_model(n_items=55, n_categories=9)
    new.set_item_side(torch.full((55,), 8), None)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    report = warm_start(new, path)
    assert report["grown"] == {"items.item.weight": [40, 55], "items.sides.category.weight": [6, 9]}

    olds, news = old.state_dict(), new.state_dict()
    for name, p in new.named_parameters():
        if name in report["grown"]:
            n_old = olds[name].shape[0]
            assert torch.equal(p[:n_old], olds[name])  # old ids keep their rows exactly
            assert torch.equal(p[n_old:], fresh[name][n_old:])  # new ids keep the fresh init
            assert p[n_old:].abs().sum() > 0
        else:
            assert torch.equal(p, olds[name]), name
    # buffers describe today's catalogue: not overwritten by yesterday's
    assert torch.equal(news["items.item_category"], fresh["items.item_category"])

    other = _tiny_model(n_items=55, n_categories=9, n_interests=2)  # fine: same shapes
    warm_start(other, path)
    wider = ModelConfig(**{**new.cfg.to_dict(), "embed_dim": 12, "tower_hidden": (16,)})
    with pytest.raises(ValueError, match="items.item.weight"):
        warm_start(MIND(wider), path)
    with pytest.raises(ValueError, match="vocabulary shrank"):
        warm_start(_tiny_model(n_items=30, n_categories=6), path)


# --------------------------------------------------------------------- reader


@pytest.mark.spark
def test_reader_batches_and_shards(seq_dir):
    train_dir = seq_dir / "train"
    assert len(row_group_rows(train_dir)) >= 4
    users = []
    for rank in (0, 1):
        with contextlib.closing(train_batches(train_dir, rank=rank, world_size=2, batch_size=32,
                                              seed=rank, workers=1)) as it:
            batches = [next(it) for _ in range(10)]
        b = batches[0]
        assert b["hist"].shape == (32, 50) and b["hist"].dtype == torch.int64
        for k in ("hist_len", "target", "user_idx", *PROFILE_COLUMNS):
            assert b[k].shape == (32,) and b[k].dtype == torch.int64, k
        assert all(x["hist"].shape[0] == 32 for x in batches)
        assert bool((b["hist_len"] >= 1).all()) and bool((b["target"] >= 2).all())
        users.append(set(torch.cat([x["user_idx"] for x in batches]).tolist()))
    assert not users[0] & users[1]  # files are partitioned by user: the shards are disjoint


@pytest.mark.spark
def test_too_few_row_groups_is_a_clear_error(seq_dir, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    table = pq.read_table(seq_dir / "train")
    pq.write_table(table.slice(0, 500), one / "part-0.parquet", row_group_size=10_000)
    with pytest.raises(ValueError, match=r"1 Parquet row group\(s\) but training runs 2 processes"):
        next(train_batches(one, rank=0, world_size=2, batch_size=8))
    with contextlib.closing(train_batches(one, rank=0, world_size=1, batch_size=8)) as it:
        assert next(it)["hist"].shape == (8, 50)


@pytest.mark.spark
def test_side_and_profile_features_can_be_switched_off(seq_dir, tmp_path):
    meta = load_meta(seq_dir)
    full = small_cfg(seq_dir, tmp_path / "full").model_config(meta)
    assert full.n_categories > 2 and full.n_brands > 2 and full.profile_vocab  # the data has them
    bare_cfg = small_cfg(seq_dir, tmp_path / "bare", side_features=False, profile_features=False,
                         max_steps=5, eval_every_epoch=False, test_at_end=False)
    bare = bare_cfg.model_config(meta)
    assert (bare.n_categories, bare.n_brands, bare.profile_vocab) == (0, 0, {})
    assert bare.replace(n_categories=full.n_categories, n_brands=full.n_brands,
                        profile_vocab=full.profile_vocab) == full  # nothing else changed
    assert train(bare_cfg)["step"] == 5
    model = load_model(tmp_path / "bare" / "last.pt")
    assert len(model.items.sides) == 0 and model.profile.fields == ()
    ev = read_eval(seq_dir, "test")
    V, mask = model.user_interests(torch.as_tensor(ev["hist"][:8]),
                                   torch.as_tensor(ev["hist_len"][:8]))
    assert torch.isfinite(V).all() and mask.any(1).all()  # no profile needed to serve


@pytest.mark.spark
def test_every_model_setting_of_a_run_reaches_the_model(seq_dir, tmp_path):
    """TrainConfig's model fields are ModelConfig's (inherited, not copied): a run's value
    of each one, every one changed from its default, is the value the model is built with."""
    import dataclasses

    from mind_model.config import ModelSettings

    changed = {"embed_dim": 24, "embed_init_std": 0.3, "tower_hidden": (16, 8), "profile_dim": 4,
               "n_interests": 3, "routing_iters": 5, "routing_sigma": 0.5,
               "routing_init_scale": 2.0, "dynamic_interests": False, "pow_p": 2.0, "n_neg": 64,
               "sampler": "popularity", "logit_scale": 3.0, "cosine_temperature": 0.1,
               "hist_dropout": 0.2, "history_window": 5, "extra_interests": 1}
    names = {f.name for f in dataclasses.fields(ModelSettings)}
    assert set(changed) == names  # a new setting must be added to this test too
    defaults = ModelSettings()
    assert all(getattr(defaults, k) != v for k, v in changed.items())
    assert all(TrainConfig.__dataclass_fields__[k].default == getattr(defaults, k)
               for k in names)
    mcfg = small_cfg(seq_dir, tmp_path, **changed).model_config(load_meta(seq_dir))
    assert {k: getattr(mcfg, k) for k in names} == changed


@pytest.mark.spark
def test_rare_items_share_the_unknown_row_in_training(seq_dir, tmp_path):
    meta = load_meta(seq_dir)
    rare = ~meta.item_own
    assert rare[meta.active_items].any()  # the generated data has items below the threshold
    kw = dict(max_steps=3, eval_every_epoch=False, test_at_end=False)
    train(small_cfg(seq_dir, tmp_path / "shared", **kw))
    rows = load_model(tmp_path / "shared" / "last.pt").items.item_row.numpy()
    ids = np.arange(meta.n_items)
    np.testing.assert_array_equal(rows[2:], np.where(meta.item_own, ids, 1)[2:])
    train(small_cfg(seq_dir, tmp_path / "own", shared_rare_ids=False, **kw))
    np.testing.assert_array_equal(load_model(tmp_path / "own" / "last.pt").items.item_row, ids)


def test_routing_map_learns_at_its_own_rate(tmp_path):
    cfg = TrainConfig(data_dir=tmp_path, out_dir=tmp_path, lr=2e-3, routing_lr_scale=0.1)
    model = MIND(ModelConfig(n_items=20, embed_dim=8, n_interests=2, n_neg=4))
    step = TrainStep(model, SampledSoftmaxLoss(20, 4))
    groups = param_groups(step, cfg)
    assert [len(g["params"]) for g in groups] == [len(list(step.parameters())) - 1, 1]
    assert (groups[1]["params"][0] is model.routing.S.weight
            and groups[1]["lr"] == pytest.approx(2e-4))
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-4])
    # YouTube DNN has no routing map: one group
    yt = TrainStep(MIND(ModelConfig(n_items=20, embed_dim=8, n_interests=1, pooling="mean")),
                   SampledSoftmaxLoss(20, 4))
    assert len(param_groups(yt, cfg)) == 1
    with pytest.raises(ValueError, match="routing_lr_scale"):
        TrainConfig(data_dir=tmp_path, out_dir=tmp_path, routing_lr_scale=-1)
    with pytest.raises(ValueError, match="train_context"):
        TrainConfig(data_dir=tmp_path, out_dir=tmp_path, train_context="future")


def test_optimizer_state_is_matched_by_name_across_a_regrouping(tmp_path):
    # A checkpoint written before S had its own learning rate: one Adam group over
    # named_parameters(), no "optimizer_params". Resuming it must not fail (the daily
    # DAG resumes finished runs) and every parameter must get its own moments back.
    cfg = TrainConfig(data_dir=tmp_path, out_dir=tmp_path, lr=2e-3, routing_lr_scale=0.1)
    model = MIND(ModelConfig(n_items=20, embed_dim=8, n_interests=2, n_neg=4))
    step = TrainStep(model, SampledSoftmaxLoss(20, 4))
    old = torch.optim.Adam(step.parameters(), lr=cfg.lr)
    for _ in range(3):
        for p in step.parameters():
            p.grad = torch.randn_like(p)
        old.step()
    new = torch.optim.Adam(param_groups(step, cfg), lr=cfg.lr)
    # the regrouping really changed the order: S moved to the end
    assert optimizer_param_names(new, step) != [n for n, _ in step.named_parameters()]
    load_optimizer_state(new, step, {"optimizer": old.state_dict()})
    for p in step.parameters():
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
        assert torch.equal(new.state[p]["exp_avg_sq"], old.state[p]["exp_avg_sq"])
        assert int(new.state[p]["step"]) == 3
    assert [g["lr"] for g in new.param_groups] == pytest.approx([2e-3, 2e-4])  # today's rates

    # a checkpoint that names its parameters round-trips exactly
    path = save_checkpoint(tmp_path / "last.pt", model=model, model_config=model.cfg, optimizer=new,
                           optimizer_params=optimizer_param_names(new, step))
    again = torch.optim.Adam(param_groups(step, cfg), lr=cfg.lr)
    load_optimizer_state(again, step, load_checkpoint(path))
    for p in step.parameters():
        assert torch.equal(again.state[p]["exp_avg"], new.state[p]["exp_avg"])

    # another model's optimizer state is refused
    yt = TrainStep(MIND(ModelConfig(n_items=20, embed_dim=8, n_interests=1, pooling="mean")),
                   SampledSoftmaxLoss(20, 4))
    with pytest.raises(ValueError, match="other parameters"):
        load_optimizer_state(torch.optim.Adam(yt.parameters()), yt, {"optimizer": old.state_dict()})


@pytest.mark.spark
def test_eval_sample_matches_read_eval(seq_dir):
    ev = HeldOutSample(load_meta(seq_dir), "test", 10_000, 0, torch.device("cpu"))
    assert ev.n_users == len(read_eval(seq_dir, "test")["target"])


def _stream_digest(train_dir: Path, seed: int, n_batches: int, pause_s: float = 0.0) -> str:
    import hashlib
    import time

    h = hashlib.sha256()
    with contextlib.closing(train_batches(train_dir, batch_size=64, seed=seed, workers=1)) as it:
        for _ in range(n_batches):
            b = next(it)
            h.update(b["target"].numpy().tobytes() + b["user_idx"].numpy().tobytes())
            torch.randn(100)  # the training loop draws from the same global RNG in between
            time.sleep(pause_s)  # a slower consumer: the reader thread's timing must not matter
    return h.hexdigest()


@pytest.mark.spark
def test_reader_stream_is_a_function_of_the_seed_across_passes(seq_dir):
    from collections import Counter

    train_dir = seq_dir / "train"
    every = read_train(seq_dir)  # the samples the stored chunks expand to
    rows = len(every["target"])
    per_pass = rows // 64  # full batches in one pass; the short rest is dropped
    n = 2 * per_pass + 5  # into the third pass: the second pass reshuffles the row groups
    torch.manual_seed(0)
    fast = _stream_digest(train_dir, seed=3, n_batches=n)
    torch.manual_seed(0)
    slow = _stream_digest(train_dir, seed=3, n_batches=n, pause_s=0.002)
    assert fast == slow
    torch.manual_seed(0)
    assert _stream_digest(train_dir, seed=4, n_batches=n) != fast

    # one pass = every row of the shard at most once, all but fewer than one batch of them
    every_row = Counter(zip(every["user_idx"].tolist(), every["hist_len"].tolist(),
                            every["target"].tolist()))
    with contextlib.closing(train_batches(train_dir, batch_size=64, seed=3, workers=1)) as it:
        first = [next(it) for _ in range(per_pass)]
    seen = Counter(r for b in first for r in zip(b["user_idx"].tolist(), b["hist_len"].tolist(),
                                                 b["target"].tolist()))
    assert sum(seen.values()) == per_pass * 64 > rows - 64
    assert not seen - every_row  # no row twice within the pass


@pytest.mark.spark
def test_a_seed_reproduces_a_training_run_bitwise(seq_dir, tmp_path):
    meta = load_meta(seq_dir)
    spe = meta.train_samples // 64
    kw = dict(epochs=100, max_steps=spe + 20, eval_every_epoch=False, test_at_end=False,
              reader_workers=1, n_interests=2)  # into the second pass over the data
    a = train(small_cfg(seq_dir, tmp_path / "a", **kw))
    b = train(small_cfg(seq_dir, tmp_path / "b", **kw))
    c = train(small_cfg(seq_dir, tmp_path / "c", seed=1, **kw))
    assert a["params_sha256"] == b["params_sha256"] != c["params_sha256"]
