"""Load test of the retrieval service on loopback, with a publish and a rollback during it.

Builds two versions over the same generated catalogue (default 1M items, d = 64, items
in 2000 clusters; users whose histories come from 1-5 clusters; two MIND models, K = 5
interests, that differ in their user towers) with the real jobs (Spark embedding job,
the index job with its recall gate), publishes the first and starts
`python -m serving.service` on a free loopback port. Then:

1. one client for `--one-client-s` seconds: latency p50 / p99 of a request (the
   paper's "under 15 ms per request" is measured here at N = `--n`);
2. `--clients` concurrent clients for `--seconds`: throughput, p50 / p99, with the second
   version published at 1/3 of the run and rolled back at 2/3.

Every answer is checked against the retrieval library's answer for the version it names
(a sample of users computed in this process before the run): an answer that matches
neither is "mixed". Failed requests (not 200) and mixed answers must both be zero; the
JSON goes to bench/results/serve.json and the exit status is 1 otherwise.

Client and server share this machine's cores: the figures include the clients' cost.

    python -m bench.bench_serve [--items 1000000] [--clients 8] [--seconds 30] [--work DIR]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy / faiss / torch load

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench.bench_index import generate, make_sequences, percentiles  # noqa: E402

DS1, DS2 = "2026-11-27", "2026-11-28"
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ versions


def save_model(root: Path, ds: str, x: np.ndarray, seed: int) -> None:
    """A MIND model (K = 5, all interests active) whose item ids embed as `x` (N, D)."""
    import torch

    from artefacts.layout import DataLayout
    from mind_model.checkpoint import save_checkpoint
    from mind_model.data import load_meta
    from mind_model.model import MIND

    layout = DataLayout(root)
    torch.manual_seed(seed)
    model = MIND(load_meta(layout.sequences(ds)).model_config(
        embed_dim=x.shape[1], n_interests=5, dynamic_interests=False))
    with torch.no_grad():  # item vectors = the generated clusters (side rows add nothing)
        model.items.item.weight[2:2 + len(x)] = torch.from_numpy(x)
        for emb in model.items.sides.values():
            emb.weight.zero_()
    save_checkpoint(layout.model_file(ds), model=model.eval(), model_config=model.cfg)


def build_versions(root: Path, a: argparse.Namespace) -> None:
    """Sequences, two models, their embeddings (Spark job) and indexes (index job)."""
    from artefacts.layout import DataLayout
    from jobs.build_index import IndexConfig
    from jobs.build_index import run as build_index

    layout = DataLayout(root)
    labels: list = []
    x, _, _ = generate(a.items, 64, 2000, labels_out=labels)
    make_sequences(root, a.users, a.items, ds=DS1, labels=labels[0])
    shutil.copytree(layout.sequences(DS1), layout.sequences(DS2))
    for seed, ds in enumerate((DS1, DS2)):
        save_model(root, ds, x, seed)
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "jobs.embed_users", "--data-root", str(root), "--ds", ds,
               "--master", "local[2]", "--conf", "spark.ui.showConsoleProgress=false"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"embed_users failed:\n{proc.stderr[-4000:]}")
        print(f"[build] ds={ds}: embeddings in {time.perf_counter() - t:.0f}s", flush=True)
        t = time.perf_counter()
        m = build_index(IndexConfig(data_root=root, ds=ds, recall_users=a.gate_users))
        print(f"[build] ds={ds}: {m['factory']} {m['search_params']}, recall@{m['recall']['n']}"
              f" = {m['recall']['value']} in {time.perf_counter() - t:.0f}s", flush=True)


@dataclass
class Reference:
    """The library's answers per version for a sample of users (the mixed-version check)."""

    users: list[str]
    histories: dict[str, list[str]]
    by_user: dict[str, dict[str, list[str]]] = field(default_factory=dict)   # ds -> user -> ids
    by_items: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def reference(root: Path, n_users: int, n: int) -> Reference:
    from artefacts.pointer import Pointer, version_pointer
    from serving.retrieval import Retriever

    ref = None
    for ds in (DS1, DS2):
        r = Retriever(root, pointer=Pointer(root, version_pointer(root, ds)), gpu=False)
        if ref is None:
            from artefacts.vectors import read_user_vectors

            users = read_user_vectors(r.pointer.path("user_vectors")).user_ids[:n_users]
            ref = Reference(users, {u: r.item_ids(r.seen_items(u)) for u in users})
        ref.by_user[ds] = {u: r.recommend_user(u, n).item_id for u in ref.users}
        ref.by_items[ds] = {u: r.recommend_items(ref.histories[u], n=n).item_id
                            for u in ref.users}
        del r
    return ref


# -------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(root: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "serving.service", "--root", str(root),
                             "--port", str(port), "--poll-s", "0.5", "--cpu"],
                            env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the service did not come up in 600 s")


# -------------------------------------------------------------------------------- clients


@dataclass
class Tally:
    latency: list[float] = field(default_factory=list)
    answers: list[tuple[float, str]] = field(default_factory=list)  # (time, ds)
    failed: list[str] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(url: str, ref: Reference, n: int, items_share: float, seed: int, stop: threading.Event,
           tally: Tally) -> None:
    """Requests back to back until `stop`; 1 in 1/items_share sends items, not a user id."""
    import httpx

    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            u = ref.users[rng.integers(len(ref.users))]
            by_items = rng.random() < items_share
            body = ({"items": ref.histories[u], "n": n} if by_items else {"user_id": u, "n": n})
            t = time.perf_counter()
            try:
                r = http.post("/v1/recommend/items" if by_items else "/v1/recommend/user",
                              json=body)
            except httpx.HTTPError as e:
                with tally.lock:
                    tally.failed.append(f"{type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t
            with tally.lock:
                if r.status_code != 200:
                    tally.failed.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                out = r.json()
                ds, got = out["version"]["ds"], [i["item_id"] for i in out["items"]]
                want = (ref.by_items if by_items else ref.by_user).get(ds, {}).get(u)
                if not consistent(got, want, exact=not by_items):
                    tally.mixed.append(f"ds={ds} user={u} items={by_items}")
                tally.latency.append(dt)
                tally.answers.append((time.monotonic(), ds))


def consistent(got: list[str], want: list[str] | None, *, exact: bool) -> bool:
    """The answer is the named version's: the same list (stored vectors), or, for vectors
    computed on the fly (float sums in another process), the same items up to near-ties."""
    if want is None:
        return False
    if exact:
        return got == want
    return len(set(got) & set(want)) >= 0.98 * len(want)


def run_clients(url: str, ref: Reference, a: argparse.Namespace, clients: int, seconds: float,
                events=()) -> tuple[Tally, float, list]:
    """`clients` threads for `seconds`; `events` = [(at_s, name, fn)] run during it."""
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=client, args=(url, ref, a.n, a.items_share, k, stop,
                                                     tally)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    done = []
    for at, name, fn in events:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        fn()
        done.append((name, round(time.monotonic() - t0, 2)))
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    stop.set()
    for t in threads:
        t.join()
    return tally, time.monotonic() - t0, [(n, at, t0) for n, at in done]


def swap_delays(tally: Tally, events: list, versions: list[str]) -> list[dict]:
    """For each event: seconds until the first answer from the version it made current."""
    out = []
    for (name, at, t0), ds in zip(events, versions):
        first = next((t - t0 for t, v in tally.answers if t - t0 >= at and v == ds), None)
        out.append({"event": name, "at_s": at, "to": ds,
                    "first_answer_after_s": None if first is None else round(first - at, 2)})
    return out


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--n", type=int, default=1000, help="items per request")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--one-client-s", type=float, default=15)
    p.add_argument("--items-share", type=float, default=0.2,
                   help="share of requests sending raw items (vectors computed on the fly)")
    p.add_argument("--sample-users", type=int, default=200)
    p.add_argument("--gate-users", type=int, default=300)
    p.add_argument("--work", type=Path, default=None,
                   help="keep the built versions here and reuse them on the next run")
    p.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    a = p.parse_args(argv)

    from artefacts.pointer import publish, rollback

    load_before = os.getloadavg()
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    root = work / "data"
    proc = None
    try:
        t0 = time.perf_counter()
        if not (root / "index" / f"ds={DS2}" / "manifest.json").is_file():
            build_versions(root, a)
        build_s = time.perf_counter() - t0
        publish(root, DS1)
        ref = reference(root, a.sample_users, a.n)
        port = free_port()
        proc = start_service(root, port, work / "service.log")
        url = f"http://127.0.0.1:{port}"
        rss0 = psutil.Process(proc.pid).memory_info().rss
        print(f"[serve] {url} up; one client for {a.one_client_s:.0f}s ...", flush=True)
        one, one_s, _ = run_clients(url, ref, a, 1, a.one_client_s)
        print(f"[serve] {a.clients} clients for {a.seconds:.0f}s, publish at 1/3, rollback at "
              f"2/3 ...", flush=True)
        rss_peak = [rss0]

        def watch_rss():
            while proc.poll() is None and not stop_rss.is_set():
                rss_peak[0] = max(rss_peak[0], psutil.Process(proc.pid).memory_info().rss)
                time.sleep(0.2)

        stop_rss = threading.Event()
        threading.Thread(target=watch_rss, daemon=True).start()
        many, many_s, events = run_clients(
            url, ref, a, a.clients, a.seconds,
            [(a.seconds / 3, "publish", lambda: publish(root, DS2)),
             (2 * a.seconds / 3, "rollback", lambda: rollback(root))])
        stop_rss.set()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)

    import faiss

    report = {
        "benchmark": "serve", "items": a.items, "users": a.users, "dim": 64, "interests": 5,
        "n": a.n, "items_share": a.items_share, "build_seconds": round(build_s, 1),
        "one_client": {"seconds": round(one_s, 1), "requests": len(one.latency),
                       **percentiles(one.latency), "failed": len(one.failed),
                       "mixed": len(one.mixed)},
        "concurrent": {"clients": a.clients, "seconds": round(many_s, 1),
                       "requests": len(many.latency),
                       "requests_per_second": round(len(many.latency) / many_s, 1),
                       **percentiles(many.latency), "failed": len(many.failed),
                       "mixed": len(many.mixed), "failures_sample": many.failed[:5],
                       "mixed_sample": many.mixed[:5],
                       "versions_answered": sorted({ds for _, ds in many.answers}),
                       "swaps": swap_delays(many, events, [DS2, DS1]),
                       "service_rss_mib": {"before": round(rss0 / 2**20),
                                           "peak": round(rss_peak[0] / 2**20)}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "faiss": faiss.__version__,
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "note": "clients and service share the machine's cores"},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    o, c = report["one_client"], report["concurrent"]
    print(f"\none client: {o['requests']} requests, p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms "
          f"(N={a.n}, {a.items:,} items)")
    print(f"{c['clients']} clients: {c['requests_per_second']} req/s, p50 {c['p50_ms']} ms, "
          f"p99 {c['p99_ms']} ms; failed {c['failed']}, mixed {c['mixed']}; swaps {c['swaps']}; "
          f"service RSS {c['service_rss_mib']} MiB")
    print(f"wrote {a.out}")
    ok = not (o["failed"] or o["mixed"] or c["failed"] or c["mixed"]) and \
        c["versions_answered"] == [DS1, DS2]
    if not ok:
        print("FAILED: failed or mixed answers, or a swap was not seen", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
