"""How fast a tenant registry change reaches a running proxy (issue 19 point 2: "within a second").

Run from the repository root:  .venv/bin/python -m benchmarks.registry_apply [--changes 10] [--tenants 0,50]

A throwaway PostgreSQL cluster holds the backend databases and a registry database; a `pgtenant run` (tests/support)
follows the registry. For each tenant count (extra shared tenants added to the registry first: every reload
prepares every tenant again), `--changes` users are added one by one, each in its own registry transaction (what
`pgtenant users add` does), and the time from its commit to the proxy's `reloaded` log line carrying its change
number is taken from the proxy's log (its own clock, as the commit's `now()` is read from the same host).
"""

from __future__ import annotations

import argparse
import datetime
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

import psycopg  # noqa: E402

from proxy import registrystore  # noqa: E402
from proxy.auth.scram import make_verifier  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess, prepare_backend  # noqa: E402

REGISTRY_DB = "pgt_registry_bench"


def applied_at(proxy: ProxyProcess, version: int, timeout: float = 60.0) -> float:
    """The proxy's log time of its first `reloaded` at `version` or later (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in proxy.log_events():
            if e.get("event") == "reloaded" and e.get("registry_version", -1) >= version:
                return datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        time.sleep(0.01)
    raise TimeoutError(f"registry change {version} not applied within {timeout} s")


def run(cluster: PgCluster, workdir: Path, tenants: int, changes: int) -> dict[str, Any]:
    cluster.execute(f"DROP DATABASE IF EXISTS {REGISTRY_DB} WITH (FORCE)")
    cluster.execute(f"CREATE DATABASE {REGISTRY_DB}")
    dsn = cluster.dsn(dbname=REGISTRY_DB)
    registrystore.init(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(tenants):
            conn.execute("INSERT INTO pgtenant_registry.tenants (name, strategy, database, options) "
                         "VALUES (%s, 'shared', 'saas', %s)", (f"t{i}", json.dumps({"tenant_id": f"t{i}"})))
    proxy = ProxyProcess(cluster, workdir, backend_sslmode="disable", registry={"dsn": dsn})
    proxy.start()
    verifier = str(make_verifier("pw"))
    delays: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(changes):
                row = conn.execute(
                    "WITH u AS (INSERT INTO pgtenant_registry.users (name, tenant, verifier) "
                    "VALUES (%s, 'acme', %s) RETURNING 1) "
                    "SELECT extract(epoch FROM clock_timestamp()), "
                    "(SELECT coalesce(max(version), 0) + 1 FROM pgtenant_registry.changes)", (f"u{i}", verifier),
                ).fetchone()
                assert row is not None
                committed, version = float(row[0]), int(row[1])
                delays.append(applied_at(proxy, version) - committed)
                time.sleep(0.2)  # the next change is not folded into this reload
    finally:
        proxy.stop()
    ordered = sorted(delays)
    return {"tenants": tenants + 4, "changes": changes, "p50_ms": round(statistics.median(ordered) * 1000),
            "max_ms": round(ordered[-1] * 1000)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--tenants", default="0,50", help="extra registry tenants per run, comma-separated")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-registry-"))
    cluster = PgCluster(ssl=False)
    results = []
    try:
        cluster.start()
        prepare_backend(cluster)
        print("| tenants | changes | commit -> applied p50 ms | max ms |")
        print("|---|---|---|---|")
        for i, n in enumerate(int(x) for x in args.tenants.split(",")):
            row = run(cluster, workdir / str(i), n, args.changes)
            results.append(row)
            print(f"| {row['tenants']} | {row['changes']} | {row['p50_ms']} | {row['max_ms']} |", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
