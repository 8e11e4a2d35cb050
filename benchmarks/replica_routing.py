#!/usr/bin/env python3
"""Read replicas (issue 18): the cost of routing. pgbench -S through pgtenant with route = "auto" (every read goes to
a streaming replica) against route = "primary" (the same proxy config, replicas configured, nothing routed).

Run from the repo root:  .venv/bin/python benchmarks/replica_routing.py [--quick] [--json out.json]
A primary (wal_level = replica) and its replica (pg_basebackup -R) run on this host; pgbench's database is
initech (the database strategy: a passthrough tenant, so what is measured is the proxy's routing, not the
policy). Runs alternate between the two proxies; the ratio auto/primary is reported with its range over the runs
(target: >= 0.97). On one host the replica's postgres shares the CPUs with the primary's, so the ratio is about
the proxy's work per statement (is it provably read-only, which replica may serve it), not about offloading.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pgbench_compare as pc  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.pgcluster import PRIMARY_SETTINGS, PgCluster, StandbyCluster  # noqa: E402
from tests.support.proxyproc import prepare_backend  # noqa: E402

say = pc.say


def proxy(stack: contextlib.ExitStack, primary: PgCluster, standby: StandbyCluster, route: str) -> pc.Target:
    p = pc.make_pgtenant(stack, primary)
    p.pool = {"pool_mode": "transaction"}
    p.replicas = [{"name": "r1", "host": standby.host, "port": standby.port}]
    p.routing = {"route": route, "max_replica_lag": 30.0}
    return pc.start_pgtenant(p, f"pgtenant-{route}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pc.pgbench_arguments(p)
    p.add_argument("--quick", action="store_true", help="smoke mode: 3 s x 1 run")
    p.add_argument("--no-direct", dest="direct", action="store_false",
                   help="skip pgbench straight against the primary and the replica (the servers' own ratio)")
    p.add_argument("--quiet-wait", type=float, default=90, help="max s to wait for an idle host before each run")
    p.add_argument("--json", type=Path, help="write all results here")
    a = p.parse_args()
    if a.quick:
        a.duration, a.runs = 3, 1
    a.modes = [m for m in a.modes.split(",") if m]
    return a


def main() -> int:
    args = parse_args()
    installation = pgcluster.probe_installation(args.pg_bin) if args.pg_bin else pgcluster.default_installation()
    if installation is None:
        raise SystemExit(f"--pg-bin {args.pg_bin}: no initdb/postgres there")
    pgbench = pc.pgbench_binary(installation)
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "bench": {}}
    with contextlib.ExitStack() as stack:
        primary = PgCluster(installation, ssl=False, settings=PRIMARY_SETTINGS)
        stack.callback(primary.stop)
        say(f"starting PostgreSQL {installation.version} (primary) from {installation.bindir}")
        primary.start()
        prepare_backend(primary)
        first = pc.make_pgtenant(stack, primary)
        first.provision()  # the backend roles
        pc.init_pgbench(pgbench, primary, args.scale, pc.backend_role()[0])
        standby = StandbyCluster(primary)
        stack.callback(standby.stop)
        say("pg_basebackup -R: starting the replica")
        standby.start()
        standby.wait_streaming()
        standby.wait_replayed()
        targets = {route: proxy(stack, primary, standby, route) for route in ("primary", "auto")}
        role, role_pw = pc.backend_role()
        if args.direct:  # the servers themselves: is the replica as fast as the primary at this?
            targets["direct-primary"] = pc.Target("direct-primary", primary.port, role, role_pw)
            targets["direct-replica"] = pc.Target("direct-replica", standby.port, role, role_pw)
        pg_pid = primary.pid
        assert pg_pid is not None
        for mode in args.modes:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for i in range(args.runs):
                for route, target in targets.items():  # interleaved: drift hits both alike
                    r = pc.run_pgbench(pgbench, target, mode, args, pg_pid)
                    say(f"{mode:9} run {i + 1}/{args.runs} route={route:7} tps={r['tps']:9.1f} "
                        f"lat={r['latency_ms']:.3f}ms proxy_cpu_s={r['cpu_s']['proxy']}")
                    runs[route].append(r)
            ratios = [a["tps"] / p["tps"] for a, p in zip(runs["auto"], runs["primary"], strict=True)]
            if args.direct:
                direct = [r["tps"] / p["tps"] for r, p in zip(runs["direct-replica"], runs["direct-primary"],
                                                                strict=True)]
                results.setdefault("direct_ratio", {})[mode] = [
                    round(min(direct), 3), round(statistics.median(direct), 3), round(max(direct), 3)]
            results["bench"][mode] = {
                "tps": {route: [r["tps"] for r in rs] for route, rs in runs.items()},
                "proxy_cpu_us_per_txn": {route: round(sum(r["cpu_s"]["proxy"] for r in rs)
                                                      / sum(r["transactions"] for r in rs) * 1e6, 2)
                                         for route, rs in runs.items() if not route.startswith("direct")},
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
        results["replica_served"] = replica_share(standby)
    print("| mode | tps primary | tps auto | auto/primary (median, range) | proxy CPU us/txn primary, auto |")
    print("|---|---|---|---|---|")
    for mode, b in results["bench"].items():
        tps = b["tps"]
        print(f"| {mode} | {statistics.median(tps['primary']):.0f} | {statistics.median(tps['auto']):.0f} | "
              f"{b['ratio_median']} ({b['ratio_range'][0]}-{b['ratio_range'][1]}) | "
              f"{b['proxy_cpu_us_per_txn']['primary']}, {b['proxy_cpu_us_per_txn']['auto']} |")
    print(f"statements the replica ran (pg_stat_database xact_commit on it): {results['replica_served']}")
    for mode, (low, mid, high) in results.get("direct_ratio", {}).items():
        print(f"direct, no proxy: replica/primary tps in {mode} mode: {mid} ({low}-{high})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


def replica_share(standby: StandbyCluster) -> int:
    """Transactions committed on the replica (its reads), to show the auto runs went there."""
    return int(standby.execute("SELECT sum(xact_commit) FROM pg_stat_database")[0][0])


if __name__ == "__main__":
    pc.cli(main)
