#!/usr/bin/env python3
"""The agent profile's added latency per query: the same statements through pgtenant as an ordinary user and as an
agent-profile user of the same tenant (the agent's are capped with a LIMIT and admitted by the proxy's EXPLAIN
round trip first), median and p99 per protocol.

Run from the repo root:  .venv/bin/python benchmarks/agent_admission.py [--queries 2000] [--rounds 5] [--json out.json]
Both logins run interleaved, in rounds (drift hits each alike), one connection each, one query at a time, logging at
"info" (as deployed: the test helper's "debug" logs every rewrite, and every agent query is one). See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks.pgbench_compare import BenchProxy
from tests.support import pgcluster
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import prepare_backend

# ivan: tenant initech (database strategy), the default profile; ada: the same tenant, the agent profile, limits far
# above these statements' estimates (every one is admitted: what is measured is the round trip, not a refusal).
AGENT = ("ada", ("initech", "ada-pw"))
STATEMENTS = {
    "point": ("SELECT id, amount FROM orders WHERE id = %s", lambda i: (i % 7 + 1,)),
    "scan": ("SELECT id, amount FROM orders WHERE amount > %s ORDER BY id", lambda i: (i % 5,)),
    # a driver's catalog join: admitted since red team 6 F2 (only a plain one-catalog lookup skips the round trip)
    "catalog": ("SELECT c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s", lambda i: ("orders",)),
}


def measure(conn: psycopg.Connection, sql: str, params: Any, n: int, offset: int) -> list[float]:
    out = []
    for i in range(offset, offset + n):
        t0 = time.perf_counter()
        conn.execute(sql, params(i)).fetchall()
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=2000, help="queries per login, protocol and statement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the queries are split into")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    installation = pgcluster.default_installation()
    if installation is None:
        raise SystemExit("no PostgreSQL installation found")
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        cluster = PgCluster(installation, ssl=False)
        stack.callback(cluster.stop)
        cluster.start()
        prepare_backend(cluster)
        workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-agent-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        proxy = BenchProxy(cluster, workdir, backend_sslmode="disable", extra_users=dict([AGENT]),
                             user_keys={AGENT[0]: {"profile": "agent"}},
                             agent={"max_rows": 1000, "max_cost": 1e9, "max_estimated_rows": 1e9})
        stack.callback(proxy.stop)
        proxy.start()
        results["postgresql"] = cluster.execute("SHOW server_version")[0][0]
        per_round = max(1, args.queries // args.rounds)
        table = []
        for protocol in ("simple", "extended"):
            factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
            conns = {user: stack.enter_context(psycopg.connect(proxy.dsn(user), autocommit=True,
                                                               cursor_factory=factory))
                     for user in ("ivan", AGENT[0])}
            for name, (sql, params) in STATEMENTS.items():
                times: dict[str, list[float]] = {user: [] for user in conns}
                for conn in conns.values():  # warm-up: decisions cached, plans and connections warm
                    measure(conn, sql, params, 50, 0)
                for r in range(args.rounds):
                    for user, conn in (conns.items() if r % 2 == 0 else reversed(conns.items())):
                        times[user] += measure(conn, sql, params, per_round, r * per_round)
                row: dict[str, Any] = {"protocol": protocol, "statement": name}
                for user, label in (("ivan", "ordinary"), (AGENT[0], "agent")):
                    row[f"{label}_median_ms"] = statistics.median(times[user]) * 1000
                    row[f"{label}_p99_ms"] = pct(times[user], 0.99) * 1000
                row["added_median_ms"] = row["agent_median_ms"] - row["ordinary_median_ms"]
                row["added_p99_ms"] = row["agent_p99_ms"] - row["ordinary_p99_ms"]
                table.append(row)
        results["table"] = table
    print(f"{'protocol':9} {'statement':9} {'ordinary p50':>13} {'agent p50':>10} {'added p50':>10} "
          f"{'ordinary p99':>13} {'agent p99':>10} {'added p99':>10}   (ms)")
    for row in table:
        print(f"{row['protocol']:9} {row['statement']:9} {row['ordinary_median_ms']:13.3f} "
              f"{row['agent_median_ms']:10.3f} {row['added_median_ms']:10.3f} {row['ordinary_p99_ms']:13.3f} "
              f"{row['agent_p99_ms']:10.3f} {row['added_p99_ms']:10.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
