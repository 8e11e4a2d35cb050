"""The first load's identity check with many database tenants (issue 19 residue: proxy/dbidentity.py).

Run from the repository root:  .venv/bin/python -m benchmarks.identity_check [--databases 200] [--silent 4]

A throwaway PostgreSQL cluster holds `--databases` tenant databases (and the registry's, `postgres`); `--silent`
more tenants point at local ports that accept a connection and never answer (an unreachable backend: each costs the
check its connect timeout, 5 s). The check (proxy.dbidentity.Checker.check, a fresh checker: nothing remembered)
runs once one target at a time (CONCURRENCY = 1, the check before this change) and once as shipped.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from proxy import dbidentity  # noqa: E402
from proxy.config import BackendConfig, TenantConfig  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402


def silent_ports(count: int) -> tuple[list[socket.socket], list[int]]:
    """Listening sockets nobody accepts from: a connection completes in the kernel and then hears nothing."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    return socks, [s.getsockname()[1] for s in socks]


def targets(cluster: PgCluster, databases: int, ports: list[int]) -> list[tuple[TenantConfig, BackendConfig]]:
    main = BackendConfig("main", cluster.host, cluster.port, cluster.superuser, cluster.password, "disable")
    out = [(TenantConfig(f"t{i}", "database", "main", f"bench_{i}"), main) for i in range(databases)]
    for i, port in enumerate(ports):
        dead = BackendConfig(f"dead{i}", "127.0.0.1", port, cluster.superuser, cluster.password, "disable")
        out.append((TenantConfig(f"dead{i}", "database", f"dead{i}", "nowhere"), dead))
    return out


def timed(cluster: PgCluster, tenants: list[tuple[TenantConfig, BackendConfig]], concurrency: int) -> float:
    dbidentity.CONCURRENCY = concurrency
    with psycopg.connect(cluster.dsn(), autocommit=True) as registry:
        started = time.perf_counter()
        dbidentity.Checker().check(tenants, registry)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--databases", type=int, default=200)
    ap.add_argument("--silent", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    shipped = dbidentity.CONCURRENCY
    cluster = PgCluster(ssl=False)
    socks, ports = silent_ports(args.silent)
    results: list[dict[str, Any]] = []
    try:
        cluster.start()
        for i in range(args.databases):
            cluster.execute(f"CREATE DATABASE bench_{i}")
        for silent in (0, args.silent):
            tenants = targets(cluster, args.databases, ports[:silent])
            for concurrency in (1, shipped):
                seconds = timed(cluster, tenants, concurrency)
                results.append({"databases": args.databases, "unreachable": silent, "concurrency": concurrency,
                                "seconds": round(seconds, 2)})
                print(json.dumps(results[-1]), flush=True)
    finally:
        for s in socks:
            s.close()
        cluster.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
