"""Noisy neighbour under max_concurrent_queries (issue 18): a light tenant's latency beside a heavy one's reports.

Run from the repository root:  .venv/bin/python -m benchmarks.limits_noisy [--seconds 15] [--heavy 50] [--limit 4]

A throwaway PostgreSQL cluster and a `pgtenant run` (tests/support) serve two shared-strategy tenants. Tenant
"light" runs a dashboard query (`SELECT count(*) FROM orders`, 20 ms apart) on one session; tenant "heavy" runs
`--heavy` sessions that each send a heavy report (`SELECT count(*) FROM generate_series(1, 3000000)`) back to back.
Three runs, each with a fresh proxy: light alone; beside heavy with no limit; beside heavy with heavy's
`max_concurrent_queries = --limit` (its other reports wait for a turn). The table gives light's latency quantiles
and how many reports heavy completed. Pools are sized above the client counts so that only the limit limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from tests.support.pgcluster import PgCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess, prepare_backend  # noqa: E402

HEAVY = "SELECT count(*) FROM generate_series(1, 3000000)"
LIGHT = "SELECT count(*) FROM orders"


def proxy_for(cluster: PgCluster, workdir: Path, heavy_limit: int | None, clients: int) -> ProxyProcess:
    limits = {"max_concurrent_queries": heavy_limit, "query_wait_timeout": 3600.0} if heavy_limit else {}
    return ProxyProcess(
        cluster, workdir, backend_sslmode="disable", pool={"pool_size": clients + 10},
        extra_tenants={
            "heavy": {"strategy": "shared", "database": "saas", "tenant_id": "acme", **limits},
            "light": {"strategy": "shared", "database": "saas", "tenant_id": "bigco"},
        },
        extra_users={"heavy_user": ("heavy", "heavy-pw"), "light_user": ("light", "light-pw")},
    )


async def measure(proxy: ProxyProcess, heavy: int, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    reports = 0

    async def report_loop(conn: asyncpg.Connection) -> None:
        nonlocal reports
        while not stop.is_set():
            await conn.fetchval(HEAVY)
            reports += 1

    heavies = [await asyncpg.connect(proxy.url("heavy_user"), ssl=False) for _ in range(heavy)]
    light = await asyncpg.connect(proxy.url("light_user"), ssl=False)
    tasks = [asyncio.create_task(report_loop(c)) for c in heavies]
    await asyncio.sleep(1.0 if heavy else 0)  # the reports are running
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await light.fetchval(LIGHT)
        latencies.append(time.perf_counter() - t0)
        await asyncio.sleep(0.02)
    stop.set()
    done = reports
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in [*heavies, light]:
        await c.close()
    ordered = sorted(latencies)
    return {"light_queries": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2), "max_ms": round(ordered[-1] * 1000, 1),
            "heavy_reports": done}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--heavy", type=int, default=50, help="heavy tenant's concurrent report sessions")
    ap.add_argument("--limit", type=int, default=4, help="heavy tenant's max_concurrent_queries in the third run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-limits-"))
    cluster = PgCluster(ssl=False)
    results: dict[str, Any] = {}
    runs = {"light alone": (0, None), f"beside {args.heavy} heavy reports, no limit": (args.heavy, None),
            f"beside {args.heavy} heavy reports, heavy max_concurrent_queries = {args.limit}": (args.heavy, args.limit)}
    try:
        cluster.start()
        prepare_backend(cluster)
        print("| run | light queries | light p50 ms | p99 ms | max ms | heavy reports done |")
        print("|---|---|---|---|---|---|")
        for i, (name, (heavy, limit)) in enumerate(runs.items()):
            proxy = proxy_for(cluster, workdir / str(i), limit, args.heavy)
            proxy.start()
            try:
                row = asyncio.run(measure(proxy, heavy, args.seconds))
            finally:
                proxy.stop()
            results[name] = row
            print(f"| {name} | {row['light_queries']} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} | "
                  f"{row['heavy_reports']} |", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
