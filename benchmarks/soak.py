#!/usr/bin/env python3
"""Soak: steady mixed load through one pgtenant process for a long time, sampling its RSS (is memory flat?).

Run from the repo root:  .venv/bin/python benchmarks/soak.py [--duration 1800] [--clients 8] [--out DIR]

Each client thread loops: repeated texts (a fixed set, simple and extended protocol, some prepared), unique
texts (a new literal — same shape — and a new shape: a new column alias), a policy denial and a syntax error, and
reconnects every `--reconnect` statements; half the clients use TLS. The proxy's RSS (VmRSS), its open file
descriptors and the load counters are sampled every `--sample` seconds; the result is a JSON file, a Markdown
table on stdout and, when matplotlib is installed (`pip install matplotlib`), a PNG of the curve.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import psycopg  # noqa: E402

from benchmarks import pgbench_compare as pc  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.certs import make_certs  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402

# (user, repeated texts) per strategy: shared (rewrite + RLS), schema per tenant, database per tenant.
WORKLOADS: dict[str, tuple[str, ...]] = {
    "alice": ("SELECT count(*) FROM orders", "SELECT id, amount FROM orders WHERE id < 20 ORDER BY id",
              "SELECT sum(amount) FROM orders WHERE amount > 10"),
    "gina": ("SELECT count(*) FROM orders", "SELECT max(amount) FROM orders"),
    "ivan": ("SELECT count(*) FROM orders", "SELECT id FROM orders ORDER BY id DESC LIMIT 3"),
}
DENIED = "SELECT * FROM pg_catalog.pg_authid"


class Counters:
    """Load counters shared by the client threads (one lock: a few hundred updates a second)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {"statements": 0, "connections": 0, "tls_connections": 0, "unique_texts": 0,
                                       "expected_errors": 0, "unexpected_errors": 0}
        self.last_error = ""

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                self.values[k] += v

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


def client_loop(proxy: Any, idx: int, stop: threading.Event, counters: Counters, reconnect: int,
                tls_mode: str = "mixed") -> None:
    rng = random.Random(idx)
    user = list(WORKLOADS)[idx % len(WORKLOADS)]
    tls = idx % 2 == 1 if tls_mode == "mixed" else tls_mode == "on"
    params = {"sslmode": "require"} if tls else {}
    serial = idx * 10_000_000
    while not stop.is_set():
        try:
            with psycopg.connect(proxy.dsn(user, **params), autocommit=True) as conn:
                counters.add(connections=1, tls_connections=int(tls))
                for _ in range(reconnect):
                    if stop.is_set():
                        break
                    serial += 1
                    roll = rng.random()
                    try:
                        if roll < 0.45:
                            conn.execute(rng.choice(WORKLOADS[user])).fetchall()
                        elif roll < 0.60:
                            conn.execute("SELECT id, amount FROM orders WHERE id = %s", (rng.randint(1, 40),),
                                         prepare=rng.random() < 0.5).fetchall()
                        elif roll < 0.80:
                            conn.execute(f"SELECT id FROM orders WHERE id = {serial} OR amount = {serial}.5")
                            counters.add(unique_texts=1)
                        elif roll < 0.97:
                            conn.execute(f"SELECT id AS c{serial}, amount AS a{serial} FROM orders LIMIT 1")
                            counters.add(unique_texts=1)
                        elif roll < 0.985:
                            conn.execute(DENIED)
                        else:
                            conn.execute("SELEC broken syntax")
                    except psycopg.errors.Error as exc:
                        if roll >= 0.97 and exc.sqlstate is not None and exc.sqlstate[:2] in ("42", "0A"):
                            counters.add(expected_errors=1)
                        else:
                            raise
                    counters.add(statements=1)
        except psycopg.Error as exc:
            counters.add(unexpected_errors=1)
            counters.last_error = f"{type(exc).__name__}: {exc}"
            stop.wait(0.5)


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "VmData"):
                out[key] = int(rest.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def plot(samples: list[dict[str, Any]], warmup: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s["VmRSS"] / 1024 for s in samples], label="RSS (MB)")
    ax.axvline(warmup / 60, color="grey", linestyle="--", label="end of warm-up")
    post = [s["VmRSS"] / 1024 for s in samples if s["t"] >= warmup]
    if post:
        mid = (max(post) + min(post)) / 2
        ax.axhspan(mid * 0.95, mid * 1.05, color="green", alpha=0.1, label="±5 % band")
    ax2 = ax.twinx()
    ax2.plot(t, [s["statements"] / 1000 for s in samples], color="orange", alpha=0.5, label="statements (k)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MB")
    ax2.set_ylabel("thousand statements")
    ax.legend(loc="upper left")
    ax2.legend(loc="lower right")
    ax.set_title("pgtenant soak: RSS under steady mixed load")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
    ap.add_argument("--warmup", type=float, default=300, help="seconds counted as warm-up (default 300)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reconnect", type=int, default=200, help="statements per connection")
    ap.add_argument("--tls", choices=("mixed", "on", "off"), default="mixed", help="clients over TLS: half, all, none")
    ap.add_argument("--sample", type=float, default=10, help="seconds between RSS samples")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgtenant-soak"))
    ap.add_argument("--no-snapshot", action="store_true", help="run the working tree's proxy/, not a copy")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if not args.no_snapshot:
            pc.snapshot_code(stack)
        workdir = Path(tempfile.mkdtemp(prefix="pgtenant-soak-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        cluster = PgCluster(pgcluster.default_installation(), ssl=False, max_connections=200)
        stack.callback(cluster.stop)
        cluster.start()
        pc.proxyproc.prepare_backend(cluster)
        proxy = pc.BenchProxy(cluster, workdir / "proxy", tls=make_certs(workdir / "tls"),
                              backend_sslmode="disable")
        stack.callback(proxy.stop)
        proxy.start()
        assert proxy.proc is not None
        pid = proxy.proc.pid
        counters = Counters()
        stop = threading.Event()
        threads = [threading.Thread(target=client_loop, args=(proxy, i, stop, counters, args.reconnect, args.tls),
                                    daemon=True) for i in range(args.clients)]
        start = time.monotonic()
        samples.append({"t": 0.0, **proc_status(pid), **counters.snapshot()})
        for th in threads:
            th.start()
        try:
            while (elapsed := time.monotonic() - start) < args.duration:
                stop.wait(min(args.sample, args.duration - elapsed))
                if proxy.proc.poll() is not None:
                    raise SystemExit(f"pgtenant exited with {proxy.proc.returncode}:\n{proxy.read_log()[-3000:]}")
                sample = {"t": round(time.monotonic() - start, 1), **proc_status(pid), **counters.snapshot()}
                samples.append(sample)
                pc.say(f"t={sample['t']:7.0f}s rss={sample['VmRSS'] / 1024:7.1f} MB fds={sample['fds']:4} "
                       f"statements={sample['statements']} connections={sample['connections']} "
                       f"unexpected_errors={sample['unexpected_errors']}")
                (args.out / "soak.json").write_text(json.dumps({"samples": samples}, indent=1))
        finally:
            stop.set()
            for th in threads:
                th.join(10)
        idle = {"t": round(time.monotonic() - start, 1), **proc_status(pid), **counters.snapshot()}
        log_bytes = proxy.log_path.stat().st_size
        code = pc.code_version()
    post = [s for s in samples if s["t"] >= args.warmup] or samples
    rss = [s["VmRSS"] for s in post]
    mid = (max(rss) + min(rss)) / 2
    result = {
        "config": {k: str(v) for k, v in vars(args).items()}, "code": code, "samples": samples, "after_load": idle,
        "log_bytes": log_bytes, "last_unexpected_error": counters.last_error,
        "post_warmup_rss_kb": {"min": min(rss), "max": max(rss), "first": rss[0], "last": rss[-1],
                               "spread_pct": round(100 * (max(rss) - min(rss)) / 2 / mid, 2)},
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    png = args.out / "soak.png"
    plotted = plot(samples, args.warmup, png)
    total = samples[-1]
    print(f"\npgtenant soak, {args.duration:.0f} s, {args.clients} clients (TLS: {args.tls}), code {code}\n")
    print("| minute | RSS MB | fds | statements | connections | unique texts |")
    print("|---:|---:|---:|---:|---:|---:|")
    step = max(1, round(60 / args.sample) * 5)  # one row per ~5 minutes
    for s in [*samples[::step], samples[-1]]:
        print(f"| {s['t'] / 60:.1f} | {s['VmRSS'] / 1024:.1f} | {s['fds']} | {s['statements']} | "
              f"{s['connections']} | {s['unique_texts']} |")
    p = result["post_warmup_rss_kb"]
    print(f"\nafter warm-up ({args.warmup:.0f} s): RSS {p['min'] / 1024:.1f}-{p['max'] / 1024:.1f} MB "
          f"(±{p['spread_pct']} % around the middle), first {p['first'] / 1024:.1f}, last {p['last'] / 1024:.1f}; "
          f"after the load stopped {idle['VmRSS'] / 1024:.1f} MB; {total['statements']} statements, "
          f"{total['connections']} connections ({total['tls_connections']} TLS), {total['unique_texts']} unique "
          f"texts, {total['expected_errors']} expected errors, {total['unexpected_errors']} unexpected "
          f"({counters.last_error or '-'}); log {log_bytes} bytes")
    print(f"plot: {png}" if plotted else "plot: matplotlib not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
