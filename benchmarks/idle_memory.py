#!/usr/bin/env python3
"""What an idle client costs pgtenant (issue 16): proxy memory per authenticated client holding no server.

Run from the repo root:  .venv/bin/python benchmarks/idle_memory.py [--clients 1000] [--trace] [--json out.json]
Transaction pooling, `--tenants` shared tenants on one database (as pool_compare's scale section). Each client
(asyncpg) logs in and runs one query (a named statement: asyncpg prepares it), then idles without a server. After
`--warm` clients (first-use costs: imports, per-tenant objects, metric children, servers), the proxy's RSS is read,
`--clients` more connect, and it is read again: the difference over `--clients` is the cost per idle client.
`--trace` repeats it in a proxy that traces allocations (benchmarks/memprobe) and prints where the difference was
allocated (file:line, by size) and which object types it holds (by count). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pgbench_compare as pc  # noqa: E402
from benchmarks import pool_compare as pool  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402

say = pc.say


async def open_clients(port: int, tenants: int, first: int, n: int) -> list[Any]:
    """`n` asyncpg clients (numbered from `first`, round-robin over the tenants), each after one query."""
    import asyncpg

    sem = asyncio.Semaphore(32)

    async def one(i: int) -> Any:
        user = f"u{1 + i % tenants:02}"
        async with sem:
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=f"{user}-pw",
                                         database=user.replace("u", "t", 1), ssl=False, timeout=120)
            await conn.fetchval("SELECT count(*) FROM orders WHERE id % 10 = $1", i % 10)
            return conn

    return list(await asyncio.gather(*(one(first + i) for i in range(n))))


def probe(path: str) -> int:
    """Ask the traced proxy for a snapshot; its number."""
    n = len([p for p in Path(path).parent.glob(Path(path).name + ".*") if p.suffix != ".types"])
    Path(path + ".go").touch()
    deadline = time.monotonic() + 120
    while Path(path + ".go").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the memory probe did not answer")
        time.sleep(0.1)
    return n


def measure(stack: contextlib.ExitStack, cluster: PgCluster, args: argparse.Namespace,
            trace: str | None) -> dict[str, Any]:
    """One proxy: `args.warm` clients, RSS, `args.clients` more, RSS (and probe snapshots when tracing)."""
    if trace:
        os.environ["PGTENANT_MEMPROBE"] = trace
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "benchmarks" / "memprobe"),
                                                    os.environ.get("PYTHONPATH", "")])
    try:
        target = pool.pgtenant(stack, cluster, "pgtenant (idle)" + (" traced" if trace else ""),
                               {"pool_mode": "transaction", "pool_size": 2, "max_db_connections": 40},
                               tenants=args.tenants)
    finally:
        os.environ.pop("PGTENANT_MEMPROBE", None)
        if trace:
            os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    assert target.pid is not None
    pid = target.pid

    async def scenario() -> dict[str, Any]:
        warm = await open_clients(target.port, args.tenants, 0, args.warm)
        await asyncio.sleep(2)
        before = pc.rss_kb(pid)
        snap_a = probe(trace) if trace else None
        more = await open_clients(target.port, args.tenants, args.warm, args.clients)
        await asyncio.sleep(2)
        after = pc.rss_kb(pid)
        snap_b = probe(trace) if trace else None
        held = pool.backends(cluster, pool.SHARED_DB)
        await asyncio.gather(*(c.close() for c in warm + more), return_exceptions=True)
        say(f"RSS {before} kB -> {after} kB: {round((after - before) * 1024 / args.clients)} B per idle client")
        return {"rss_warm_kb": before, "rss_idle_kb": after, "backends_idle": held,
                "bytes_per_idle_client": round((after - before) * 1024 / args.clients), "snapshots": (snap_a, snap_b)}

    say(f"{target.name}: {args.warm} warm-up clients, then {args.clients} idle clients over {args.tenants} tenants")
    return asyncio.run(scenario())


def trace_report(path: str, a: int, b: int, clients: int, top: int) -> dict[str, Any]:
    """Where the snapshots differ: per source line (bytes per client) and per object type (objects per client)."""
    old, new = tracemalloc.Snapshot.load(f"{path}.{a}"), tracemalloc.Snapshot.load(f"{path}.{b}")
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*")]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    lines = [{"where": str(s.traceback[0]), "bytes_per_client": round(s.size_diff / clients, 1),
              "blocks_per_client": round(s.count_diff / clients, 2)}
             for s in new.compare_to(old, "lineno")[:top]]
    stacks = [{"bytes_per_client": round(s.size_diff / clients, 1),
               "stack": [str(f) for f in s.traceback][-6:]}
              for s in new.compare_to(old, "traceback")[:top]]
    total = sum(s.size_diff for s in new.compare_to(old, "filename"))
    ta = json.loads(Path(f"{path}.{a}.types").read_text())
    tb = json.loads(Path(f"{path}.{b}.types").read_text())
    types = sorted(((t, (tb.get(t, 0) - ta.get(t, 0)) / clients) for t in set(ta) | set(tb)), key=lambda x: -x[1])
    return {"traced_bytes_per_client": round(total / clients), "by_line": lines, "by_stack": stacks,
            "objects_per_client": [{"type": t, "per_client": round(c, 2)} for t, c in types[:top] if c > 0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--warm", type=int, default=100)
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--trace", action="store_true", help="also a traced run: where the memory goes")
    p.add_argument("--trace-only", action="store_true", help="only the traced run")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    installation = pgcluster.default_installation()
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        cluster = pc.start_cluster(stack, installation, 200)
        pc.make_pgtenant(stack, cluster).provision()
        pc.init_pgbench(pc.pgbench_binary(installation), cluster, 1, pc.backend_role()[0])  # (the readiness probe)
        pool.tenant_rows(cluster, args.tenants)
        if not args.trace_only:
            results["rss"] = measure(stack, cluster, args, None)
        if args.trace or args.trace_only:
            tmp = Path(os.environ.get("TMPDIR", "/tmp"))
            path = str(tmp / f"pgtenant-memprobe-{os.getpid()}")
            stack.callback(lambda: [q.unlink() for q in tmp.glob(Path(path).name + ".*")])
            traced = measure(stack, cluster, args, path)
            a, b = traced["snapshots"]
            results["traced"] = {**traced, **trace_report(path, a, b, args.clients, args.top)}
    results["code"] = pc.code_version()
    r = results.get("rss") or results["traced"]
    print(f"## idle clients: {args.clients} after {args.warm} warm-up, {args.tenants} tenants, transaction pooling\n")
    print(f"proxy RSS {r['rss_warm_kb'] / 1024:.1f} MB -> {r['rss_idle_kb'] / 1024:.1f} MB, PostgreSQL backends held "
          f"{r['backends_idle']}: **{r['bytes_per_idle_client']} bytes per idle client** (target <= 10240); "
          f"code {results['code']}")
    if "traced" in results:
        t = results["traced"]
        print(f"\ntraced run: RSS {t['bytes_per_idle_client']} B/client (tracing inflates it), "
              f"Python allocations {t['traced_bytes_per_client']} B/client\n")
        print("| where (file:line) | bytes/client | blocks/client |\n|---|---:|---:|")
        for x in t["by_line"]:
            print(f"| {x['where']} | {x['bytes_per_client']} | {x['blocks_per_client']} |")
        print("\n| object type | per client |\n|---|---:|")
        for x in t["objects_per_client"]:
            print(f"| {x['type']} | {x['per_client']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    pc.cli(main)
