"""Deterministic Tmall-like behaviour logs with a known multi-interest structure.

The generative model (all of it recorded under `truth/` so tests can check what a
model learns against what was planted):

* Items belong to latent interest clusters. Each cluster owns a few categories and
  brands (ids are global, so a category or brand belongs to exactly one cluster);
  item popularity inside a cluster is Zipf-like.
* Each user has 1..5 interests (skewed towards 2-3), i.e. clusters with weights,
  and a heavy-tailed activity level, so sequence lengths vary.
* Events come in sessions: an event starts a new session with probability
  `switch_p` (default `SWITCH_P`), a session draws one of the user's interests by weight, and every
  event of the session picks an item of that cluster by popularity (a few % of
  events pick a uniformly random item instead). Sequences therefore carry signal.
* How multi-interest the users are is a parameter: `switch_p` near 1 interleaves
  the interests event by event (the next item's interest is unknown from the last
  one, so one pooled vector must cover several clusters), and `interest_count_p`
  (P(1..5 interests)) sets how many interests a user has. The defaults give short
  single-interest sessions, which a model can follow from the last few events; the
  "multi-interest" preset (`MULTI_INTEREST`, CLI `--preset multi`) is 3-5
  interests per user, interleaved (switch_p = 1), and fine-grained: ~15 items per
  cluster, so a catalogue of 15k items has ~1,000 clusters, far more than the
  embedding dimension. A few large clusters (the default, <= 100) can each get
  a direction of their own, and then one pooled vector covers a user's 3-5 of them
  about as well as K vectors do; with ~1,000 it cannot, which is the situation
  multi-interest retrieval is for.
* Behaviour types follow the Taobao UserBehavior shares (click >> cart > fav > buy).

Output under `out_root` (each folder published atomically, a rerun with the same
arguments replaces it with identical content):

    events/ds=YYYY-MM-DD/part-00000.parquet   RAW_EVENTS without the ds column
    profiles/part-00000.parquet               USER_PROFILES
    truth/{user_interests,items}.parquet, truth/summary.json

Rows of a partition are in time order within each chunk of users (one chunk below
~2M events a day). Partitions of an earlier run with other dates are left alone.

Generation is vectorised numpy and runs day by day in chunks of users, each chunk
seeded from (seed, day, chunk), so memory stays bounded and the output does not
depend on anything but the arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artefacts.cli import run_main
from artefacts.storage import staged_dir, write_json
from schemas.tables import BEHAVIORS, RAW_EVENTS, USER_PROFILES

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
# Normal event times are even microseconds (2 us ticks): an injected "future" row gets
# an odd time, so it can never coincide with a normal row.
TICK_US = 2
DAY_TICKS = DAY_US // TICK_US

BEHAVIOR_P = (0.895, 0.055, 0.029, 0.021)  # Taobao UserBehavior: pv, cart, fav, buy
INTEREST_COUNT_P = (0.15, 0.30, 0.30, 0.15, 0.10)  # P(user has 1..5 interests)
MAX_INTERESTS = len(INTEREST_COUNT_P)
SWITCH_P = 0.25  # chance an event starts a new session: sessions average ~4 events
# Strongly multi-interest users: 3..5 fine-grained interests each (~15 items per cluster,
# so there are far more clusters than embedding dimensions), a fresh interest at every event.
MULTI_INTEREST = {"switch_p": 1.0, "interest_count_p": (0.0, 0.0, 0.4, 0.35, 0.25),
                  "items_per_cluster": 15}
NOISE_P = 0.03  # chance an event ignores the user's interests (uniform item)
ZIPF_ITEM = 0.8  # mild, so tail items still reach min_item_count on small data
ZIPF_CLUSTER = 0.5  # some interests are more common than others
ACTIVITY_SIGMA = 1.0  # lognormal activity: heavy tail of very active users
EVENTS_PER_USER = 40
EVENTS_PER_ITEM = 20
CHUNK_EVENTS = 1 << 21  # ~2M events per chunk keeps peak memory well under 1 GB

AGE_BUCKETS = ("<18", "18-24", "25-29", "30-34", "35-39", "40-49", "50+")
AGE_P = (0.05, 0.25, 0.25, 0.18, 0.12, 0.10, 0.05)
CITY_TIERS = ("1", "2", "3", "4", "5")
CITY_P = (0.12, 0.20, 0.28, 0.24, 0.16)
PROFILE_NULL_P = 0.02  # profiles are optional data: a few fields are missing

INJECT_KINDS = ("null_user_id", "null_item_id", "unknown_behavior", "null_event_time",
                "event_time_outside_window", "duplicate")
UNKNOWN_BEHAVIOR = "share"  # not in BEHAVIORS
_TS = pa.timestamp("us", tz="UTC")


def default_sizes(n_events: int, n_users: int | None = None, n_items: int | None = None,
                  n_clusters: int | None = None,
                  items_per_cluster: int | None = None) -> tuple[int, int, int]:
    """Users, items and clusters for `n_events` when not given (~40 events/user, ~20/item;
    clusters: n_items / items_per_cluster, else items/100 in [8, 100])."""
    n_users = n_users or max(1, n_events // EVENTS_PER_USER)
    n_items = n_items or max(8, n_events // EVENTS_PER_ITEM)
    if items_per_cluster is not None and items_per_cluster < 1:
        raise ValueError(f"items_per_cluster must be >= 1, got {items_per_cluster}")
    if not n_clusters:
        n_clusters = (max(1, n_items // items_per_cluster) if items_per_cluster
                      else int(np.clip(n_items // 100, 8, 100)))
    return n_users, n_items, min(n_clusters, n_items)


def _ids(prefix: str, numbers: np.ndarray, min_width: int) -> pa.Array:
    width = max(min_width, len(str(max(int(numbers.max(initial=0)), 0))))
    return pa.array([f"{prefix}{n:0{width}d}" for n in numbers.tolist()], pa.string())


def _normalise(p: np.ndarray) -> np.ndarray:
    # multinomial() rejects sum(p[:-1]) > 1 from rounding; shave a hair off.
    return p / (p.sum() * (1 + 1e-12))


# ------------------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class Catalogue:
    """Items stored by position; a cluster's items are contiguous, most popular first."""

    item_cluster: np.ndarray  # (I,) cluster of each position
    cum_pop: np.ndarray  # (I,) cluster index + cumulative popularity within the cluster
    item_ids: pa.Array  # (I,) raw ids, shuffled so ids do not reveal clusters
    item_category: pa.Array  # (I,)
    item_brand: pa.Array  # (I,)
    n_categories: int
    n_brands: int

    def sample(self, cluster: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item positions drawn by popularity inside `cluster`, given uniforms `u` in [0,1)."""
        # cum_pop is increasing and cluster c spans (c, c+1], so one search serves all.
        return np.searchsorted(self.cum_pop, cluster + u, side="right")


def _catalogue(rng: np.random.Generator, n_items: int, n_clusters: int) -> Catalogue:
    size_w = rng.lognormal(0.0, 0.3, n_clusters)
    sizes = 1 + rng.multinomial(n_items - n_clusters, _normalise(size_w))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    item_cluster = np.repeat(np.arange(n_clusters), sizes)
    rank = np.arange(n_items) - starts[item_cluster] + 1
    w = rank.astype(np.float64) ** -ZIPF_ITEM
    cs = np.cumsum(w)
    before = np.concatenate([[0.0], cs[starts[1:] - 1]])
    total = np.add.reduceat(w, starts)
    within = (cs - before[item_cluster]) / total[item_cluster]
    within[starts + sizes - 1] = 1.0  # exact end, so a draw never spills into the next cluster
    cum_pop = item_cluster + within

    # Categories: 3..8 per cluster; brands: ~1 per 25 items (>= 2), popular ones first.
    n_cat = np.minimum(rng.integers(3, 9, n_clusters), sizes)
    n_brand = np.minimum(np.maximum(2, sizes // 25), sizes)
    cat_off = np.concatenate([[0], np.cumsum(n_cat)[:-1]])
    brand_off = np.concatenate([[0], np.cumsum(n_brand)[:-1]])
    u_cat, u_brand = rng.random(n_items), rng.random(n_items)
    item_cat = cat_off[item_cluster] + (u_cat * n_cat[item_cluster]).astype(np.int64)
    item_brand = brand_off[item_cluster] + (u_brand ** 2 * n_brand[item_cluster]).astype(np.int64)

    item_numbers = rng.permutation(n_items)
    return Catalogue(
        item_cluster=item_cluster, cum_pop=cum_pop,
        item_ids=_ids("i", item_numbers, 6),
        item_category=_ids("c", item_cat, 3), item_brand=_ids("b", item_brand, 4),
        n_categories=int(n_cat.sum()), n_brands=int(n_brand.sum()))


# ---------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class Users:
    ids: pa.Array  # (U,)
    n_interests: np.ndarray  # (U,)
    interests: np.ndarray  # (U, 5) cluster ids, -1 past n_interests
    weights: np.ndarray  # (U, 5) interest weights, 0 past n_interests
    cum_w: np.ndarray  # (U, 5) cumulative weights, 2.0 from the last real interest on
    counts: np.ndarray  # (U, D) events per user and day


def _users(rng: np.random.Generator, n_users: int, n_clusters: int, n_events: int,
           days: int, interest_count_p: tuple[float, ...] = INTEREST_COUNT_P) -> Users:
    cluster_p = (np.arange(1, n_clusters + 1) ** -ZIPF_CLUSTER)[rng.permutation(n_clusters)]
    log_p = np.log(cluster_p / cluster_p.sum())
    k = rng.choice(np.arange(1, MAX_INTERESTS + 1), size=n_users, p=interest_count_p)
    k = np.minimum(k, n_clusters)
    top = min(MAX_INTERESTS, n_clusters)
    interests = np.full((n_users, MAX_INTERESTS), -1, np.int64)
    for lo in range(0, n_users, 50_000):  # (users x clusters) keys, bounded in memory
        hi = min(lo + 50_000, n_users)
        # Gumbel top-k: weighted sampling without replacement, vectorised.
        keys = log_p + rng.gumbel(size=(hi - lo, n_clusters))
        best = np.argsort(-keys, axis=1)[:, :top]
        interests[lo:hi, :top] = best
    real = np.arange(MAX_INTERESTS)[None, :] < k[:, None]
    interests[~real] = -1
    weights = rng.gamma(1.0, size=(n_users, MAX_INTERESTS)) * real
    weights /= weights.sum(axis=1, keepdims=True)
    cum_w = np.cumsum(weights, axis=1)
    cum_w[np.arange(MAX_INTERESTS)[None, :] >= (k - 1)[:, None]] = 2.0

    # Activity: a floor of a few events each, the rest spread by a lognormal weight.
    floor = min(3, n_events // n_users)
    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, n_users)
    per_user = floor + rng.multinomial(n_events - floor * n_users, _normalise(activity))
    day_w = 1.0 + 0.2 * rng.uniform(-1.0, 1.0, days)
    counts = rng.multinomial(per_user, _normalise(day_w))  # (U, D)
    return Users(ids=_ids("u", np.arange(n_users), 6), n_interests=k, interests=interests,
                 weights=weights, cum_w=cum_w, counts=counts)


def _profiles(rng: np.random.Generator, users: Users, n_clusters: int) -> pa.Table:
    # Gender leans with the user's interests, so profile features carry some signal.
    female_share = rng.uniform(0.2, 0.8, n_clusters)
    p_f = (female_share[np.maximum(users.interests, 0)] * users.weights).sum(axis=1)
    n = len(p_f)
    gender = np.where(rng.random(n) < p_f, "F", "M")
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P)
    city = rng.choice(len(CITY_TIERS), size=n, p=CITY_P)
    nulls = rng.random((3, n)) < PROFILE_NULL_P
    return pa.table({
        "user_id": users.ids,
        "gender": pa.array(gender, pa.string(), mask=nulls[0]),
        "age_bucket": pa.array(np.array(AGE_BUCKETS)[age], pa.string(), mask=nulls[1]),
        "city_tier": pa.array(np.array(CITY_TIERS)[city], pa.string(), mask=nulls[2]),
    }, schema=USER_PROFILES.arrow_schema())


# --------------------------------------------------------------------------------- events


def _chunk_events(rng: np.random.Generator, users: Users, cat: Catalogue,
                  user_idx: np.ndarray, counts: np.ndarray,
                  switch_p: float = SWITCH_P) -> dict[str, np.ndarray]:
    """Events of the given users on one day, ordered by (time, user)."""
    n = int(counts.sum())
    group = np.repeat(np.arange(len(user_idx)), counts)  # (n,)
    user = user_idx[group]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[group]
    # Distinct times per user: sorted draws in [0, DAY_TICKS - count) plus the rank.
    t = (rng.random(n) * (DAY_TICKS - counts[group])).astype(np.int64)
    t = np.sort(group * DAY_TICKS + t) - group * DAY_TICKS + rank  # sorted within user

    new_session = rng.random(n) < switch_p
    new_session[starts] = True
    session = np.cumsum(new_session) - 1
    s_user = user[new_session]
    pick = (users.cum_w[s_user] < rng.random(len(s_user))[:, None]).sum(axis=1)
    cluster = users.interests[s_user, pick][session]
    item = cat.sample(cluster, rng.random(n))
    noise = rng.random(n) < NOISE_P
    item[noise] = rng.integers(0, len(cat.cum_pop), int(noise.sum()))
    behavior = np.searchsorted(np.cumsum(BEHAVIOR_P)[:-1], rng.random(n), side="right")

    order = np.lexsort((user, t))  # log order: by time, ties by user
    return {"user": user[order], "item": item[order], "behavior": behavior[order],
            "t_us": t[order] * TICK_US}


def _inject(rng: np.random.Generator, ev: dict[str, np.ndarray],
            n_kind: dict[str, int]) -> dict[str, np.ndarray]:
    """Add malformed rows and duplicates, each right after the valid row it copies."""
    n = len(ev["user"])
    total = sum(n_kind.values())
    if total == 0:
        return {**ev, "kind": np.full(n, -1)}
    if total > n:
        raise ValueError(f"cannot inject {total} bad rows into a chunk of {n} events")
    # Distinct templates: no two injected rows can be equal to each other.
    templates = rng.choice(n, size=total, replace=False)
    kinds = np.repeat([INJECT_KINDS.index(k) for k in n_kind], list(n_kind.values()))
    src = np.concatenate([np.arange(n), templates])
    kind = np.concatenate([np.full(n, -1), kinds])
    order = np.argsort(src, kind="stable")
    out = {k: v[src[order]] for k, v in ev.items()}
    out["kind"] = kind[order]
    future = out["kind"] == INJECT_KINDS.index("event_time_outside_window")
    # 1-2 days ahead of its partition, odd microsecond: never equal to a normal row.
    out["t_us"][future] += rng.integers(1, 3, int(future.sum())) * DAY_US + 1
    return out


def _events_table(ev: dict[str, np.ndarray], day_start_us: int, users: Users,
                  cat: Catalogue) -> pa.Table:
    kind = ev["kind"]

    def is_kind(name: str) -> np.ndarray:
        return kind == INJECT_KINDS.index(name)

    behavior_vocab = pa.array(list(BEHAVIORS) + [UNKNOWN_BEHAVIOR], pa.string())
    behavior = np.where(is_kind("unknown_behavior"), len(BEHAVIORS), ev["behavior"])
    item = pa.array(ev["item"])
    # take() with a null index gives a null: the other fields stay those of a valid row.
    return pa.table({
        "user_id": users.ids.take(pa.array(ev["user"], mask=is_kind("null_user_id"))),
        "item_id": cat.item_ids.take(pa.array(ev["item"], mask=is_kind("null_item_id"))),
        "category_id": cat.item_category.take(item),
        "brand_id": cat.item_brand.take(item),
        "behavior": behavior_vocab.take(pa.array(behavior)),
        "event_time": pa.array(day_start_us + ev["t_us"], _TS, mask=is_kind("null_event_time")),
    }, schema=RAW_EVENTS.arrow_schema(include_partition=False))


def _split_evenly(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


def injected_per_kind(n_events: int) -> int:
    """How many rows of each bad kind `bad_rows=True` adds (~0.1 % of events, >= 3)."""
    return max(3, n_events // 1000)


# ----------------------------------------------------------------------------- generate


def generate(out_root: Path, *, end_ds: str, days: int, n_events: int,
             n_users: int | None = None, n_items: int | None = None,
             n_clusters: int | None = None, seed: int = 0, bad_rows: bool = False,
             switch_p: float = SWITCH_P,
             interest_count_p: tuple[float, ...] = INTEREST_COUNT_P,
             items_per_cluster: int | None = None) -> dict:
    """Write `n_events` events over `days` days ending at `end_ds`; return the summary.
    `switch_p`, `interest_count_p` and `items_per_cluster` (how fine-grained an
    interest is, when `n_clusters` is not given) set how multi-interest users are
    (module docstring)."""
    if days < 1 or n_events < 1:
        raise ValueError("days and n_events must be >= 1")
    if not 0.0 < switch_p <= 1.0:
        raise ValueError(f"switch_p must be in (0, 1], got {switch_p}")
    interest_count_p = tuple(float(x) for x in interest_count_p)
    if len(interest_count_p) != MAX_INTERESTS or min(interest_count_p) < 0 \
            or abs(sum(interest_count_p) - 1.0) > 1e-6:
        raise ValueError(f"interest_count_p: {MAX_INTERESTS} probabilities summing to 1")
    n_users, n_items, n_clusters = default_sizes(n_events, n_users, n_items, n_clusters,
                                                 items_per_cluster)
    if n_users > n_events:
        raise ValueError(f"n_users={n_users} > n_events={n_events}: every user needs an event")
    out_root = Path(out_root)
    end = date.fromisoformat(end_ds)
    ds_list = [(end - timedelta(days=days - 1 - d)).isoformat() for d in range(days)]
    loud = logging.INFO if n_events >= 1_000_000 else logging.DEBUG
    t0 = time.perf_counter()

    rng = np.random.default_rng([seed, 0])
    cat = _catalogue(rng, n_items, n_clusters)
    users = _users(rng, n_users, n_clusters, n_events, days, interest_count_p)
    profiles = _profiles(rng, users, n_clusters)
    log.log(loud, "catalogue and %d users ready in %.1fs", n_users, time.perf_counter() - t0)

    per_kind = injected_per_kind(n_events) if bad_rows else 0
    inj_by_day = {k: _split_evenly(per_kind, days) for k in INJECT_KINDS}
    injected = dict.fromkeys(INJECT_KINDS, 0)
    rows_per_ds: dict[str, int] = {}
    for d, ds in enumerate(ds_list):
        day_start_us = int(datetime.fromisoformat(ds).replace(tzinfo=timezone.utc)
                           .timestamp()) * 1_000_000
        active = np.flatnonzero(users.counts[:, d])
        c = users.counts[active, d]
        # Whole users per chunk; a chunk starts where the running total crosses CHUNK_EVENTS.
        chunk_of = (np.cumsum(c) - c) // CHUNK_EVENTS
        bounds = np.flatnonzero(np.diff(chunk_of, prepend=-1)).tolist() + [len(active)]
        with staged_dir(out_root / "events" / f"ds={ds}") as tmp:
            schema = RAW_EVENTS.arrow_schema(include_partition=False)
            with pq.ParquetWriter(tmp / "part-00000.parquet", schema) as writer:
                n_rows = 0
                for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                    crng = np.random.default_rng([seed, 1, d, b])
                    ev = _chunk_events(crng, users, cat, active[lo:hi], c[lo:hi], switch_p)
                    # All of a day's bad rows go into its first chunk.
                    n_kind = {k: v[d] for k, v in inj_by_day.items()} if b == 0 else {}
                    ev = _inject(crng, ev, n_kind)
                    for k, v in n_kind.items():
                        injected[k] += v
                    table = _events_table(ev, day_start_us, users, cat)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                    n_rows += table.num_rows
                    log.log(loud, "ds=%s chunk %d: %d rows (%.1fs)", ds, b, table.num_rows,
                            time.perf_counter() - t0)
                if n_rows == 0:
                    writer.write_table(schema.empty_table())
        rows_per_ds[ds] = n_rows

    with staged_dir(out_root / "profiles") as tmp:
        pq.write_table(profiles, tmp / "part-00000.parquet")

    if sum(injected.values()) != per_kind * len(INJECT_KINDS):
        log.warning("injected %s instead of %d per kind (days without events)",
                    injected, per_kind)
    summary = {
        "end_ds": end_ds, "days": days, "ds": ds_list, "seed": seed, "bad_rows": bad_rows,
        "n_events": n_events, "n_users": n_users, "n_items": n_items,
        "n_clusters": n_clusters, "n_categories": cat.n_categories, "n_brands": cat.n_brands,
        "rows_per_ds": rows_per_ds, "total_rows": sum(rows_per_ds.values()),
        "injected": injected, "switch_p": switch_p,
        "interest_count_p": list(interest_count_p),
    }
    with staged_dir(out_root / "truth") as tmp:
        _write_truth(tmp, users, cat)
        write_json(tmp / "summary.json", summary)
    log.log(loud, "wrote %d rows in %.1fs", summary["total_rows"], time.perf_counter() - t0)
    return summary


def _write_truth(folder: Path, users: Users, cat: Catalogue) -> None:
    k = users.n_interests
    offsets = pa.array(np.concatenate([[0], np.cumsum(k)]).astype(np.int32))
    real = users.interests >= 0  # row-major: each user's interests in sampling order
    pq.write_table(pa.table({
        "user_id": users.ids,
        "clusters": pa.ListArray.from_arrays(
            offsets, pa.array(users.interests[real].astype(np.int32))),
        "weights": pa.ListArray.from_arrays(
            offsets, pa.array(users.weights[real].astype(np.float32))),
        "n_events": pa.array(users.counts.sum(axis=1).astype(np.int64)),
    }), folder / "user_interests.parquet")
    pq.write_table(pa.table({
        "item_id": cat.item_ids,
        "cluster_id": pa.array(cat.item_cluster.astype(np.int32)),
        "category_id": cat.item_category,
        "brand_id": cat.item_brand,
    }), folder / "items.parquet")


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)  # expected failures: one line, exit 2


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True,
                   help="output root (events/, profiles/, truth/)")
    p.add_argument("--end-ds", required=True, help="last partition date, YYYY-MM-DD")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--events", type=int, default=20_000, help="normal events in total")
    p.add_argument("--users", type=int, default=None, help=f"default events/{EVENTS_PER_USER}")
    p.add_argument("--items", type=int, default=None, help=f"default events/{EVENTS_PER_ITEM}")
    p.add_argument("--clusters", type=int, default=None,
                   help="default items/--items-per-cluster, else items/100 in [8, 100]")
    p.add_argument("--items-per-cluster", type=int, default=None,
                   help="size of an interest cluster (multi: 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad-rows", action="store_true", help="inject malformed rows and duplicates")
    p.add_argument("--preset", choices=("default", "multi"), default="default",
                   help="multi: 3-5 interleaved fine-grained interests per user (MULTI_INTEREST)")
    p.add_argument("--switch-p", type=float, default=None,
                   help=f"chance an event starts a new session (default {SWITCH_P}; multi 1.0)")
    p.add_argument("--interest-count-p", default=None,
                   help="P(1..5 interests), comma-separated (default "
                        + ",".join(map(str, INTEREST_COUNT_P)) + ")")
    args = p.parse_args(argv)
    shape = dict(MULTI_INTEREST) if args.preset == "multi" else {}
    if args.switch_p is not None:
        shape["switch_p"] = args.switch_p
    if args.interest_count_p is not None:
        shape["interest_count_p"] = tuple(float(x) for x in args.interest_count_p.split(","))
    if args.items_per_cluster is not None:
        shape["items_per_cluster"] = args.items_per_cluster
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    s = generate(args.out, end_ds=args.end_ds, days=args.days, n_events=args.events,
                 n_users=args.users, n_items=args.items, n_clusters=args.clusters,
                 seed=args.seed, bad_rows=args.bad_rows, **shape)
    print(f"wrote {s['total_rows']:,} rows ({s['n_events']:,} events"
          f" + {sum(s['injected'].values()):,} injected) for {s['n_users']:,} users,"
          f" {s['n_items']:,} items, {s['n_clusters']} clusters"
          f" in {time.perf_counter() - t0:.1f}s")
    for ds, n in s["rows_per_ds"].items():
        print(f"  ds={ds}: {n:,} rows")
    print(f"output: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
