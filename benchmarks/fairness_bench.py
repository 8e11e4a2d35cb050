"""Another tenant's latency while one tenant sends the worst inputs (issue 23), through a real pgtenant.

Run from the repository root:  .venv/bin/python -m benchmarks.fairness_bench [--rounds 3] [--json out.json]

A throwaway PostgreSQL cluster and a `pgtenant run` (tests/support) serve two shared-strategy tenants. Tenant bigco
runs `SELECT count(*) FROM orders` every 5 ms on one session, while tenant acme sends, over and over with distinct
texts (no cache hit): nothing (the baseline), the issue's 8,000-statement Query, 1,000 statements (at the limit),
one statement with 10,000 FROM items as a Parse, and 30 MB texts that do not parse. The table gives bigco's
latency quantiles during each attack, and the proxy's RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.protocol import messages as m  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess, prepare_backend  # noqa: E402
from tests.support.wire import login, read_message  # noqa: E402


def connect(proxy: ProxyProcess, user: str) -> Any:
    sock, msgs = login(proxy.port, {"user": user, "database": proxy.users[user][0]}, proxy.password(user), timeout=120)
    assert msgs[-1][0] == b"Z", msgs
    return sock


def answer(sock: Any) -> None:
    while read_message(sock)[0] != b"Z":
        pass


def prepare(sql: str) -> bytes:
    return m.Parse("", sql, b"\x00\x00").encode() + m.SYNC_MESSAGE


ATTACKS = {
    "none": None,
    "8,000 statements, one Query (192 KB)": lambda i: m.Query(
        "".join(f"SELECT {k % 7} FROM orders;" for k in range(8000)) + f" -- {i}").encode(),
    "1,000 statements, one Query": lambda i: m.Query(
        "".join(f"SELECT {k % 7} FROM orders;" for k in range(1000)) + f" -- {i}").encode(),
    "10,000 FROM items, one Parse (0.17 MB)": lambda i: prepare(
        "SELECT 1 FROM " + ", ".join(f"orders o{k}" for k in range(10_000)) + f" -- {i}"),
    "30 MB text that does not parse, Query": lambda i: m.Query(f"SELEC {i} " + "x" * (30 << 20)).encode(),
}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def run(proxy: ProxyProcess, attack: Any, rounds: int, seconds: float) -> dict[str, Any]:
    other = connect(proxy, "bruno")
    latencies: list[float] = []
    stop = threading.Event()

    def ping() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            other.sendall(m.Query("SELECT count(*) FROM orders").encode())
            answer(other)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.005)

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    if attack is None:
        time.sleep(seconds)
    else:
        attacker = connect(proxy, "alice")
        for i in range(rounds):
            attacker.sendall(attack(i))
            answer(attacker)
        attacker.close()
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    other.close()
    ordered = sorted(latencies)
    return {"attack_s": round(elapsed, 1), "queries": len(ordered),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2), "max_ms": round(ordered[-1] * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-fairness-"))
    cluster = PgCluster(ssl=False)
    results: dict[str, Any] = {}
    try:
        cluster.start()
        prepare_backend(cluster)
        proxy = ProxyProcess(cluster, workdir, backend_sslmode="disable")
        proxy.start()
        assert proxy.proc is not None
        print("| tenant acme sends | seconds | bigco queries | bigco p50 ms | p99 ms | max ms | proxy RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for name, attack in ATTACKS.items():
            row = run(proxy, attack, args.rounds, 5.0)
            row["rss_mb"] = round(rss_mb(proxy.proc.pid))
            results[name] = row
            print(f"| {name} | {row['attack_s']} | {row['queries']} | {row['p50_ms']} | {row['p99_ms']} | "
                  f"{row['max_ms']} | {row['rss_mb']} |", flush=True)
        proxy.stop()
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
