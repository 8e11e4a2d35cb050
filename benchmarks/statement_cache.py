#!/usr/bin/env python3
"""pgbench -S -M extended (or --mode prepared) through pgtenant with and without [pool] statement_cache, vs PgBouncer
in session mode (pgtenant in its default pool mode, or --pool-mode).

Run from the repo root:  .venv/bin/python benchmarks/statement_cache.py [--duration 15] [--runs 3] [--json out.json]
The targets run interleaved (drift hits each alike); the table gives median tps and the range of the per-run ratios.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import pgbench_compare as pc
from tests.support import pgcluster
from tests.support.pgcluster import PgCluster


def start_proxy(stack: contextlib.ExitStack, cluster: PgCluster, name: str, pool: dict[str, Any]) -> pc.Target:
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-proxy-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    proxy = pc.BenchProxy(cluster, workdir, backend_sslmode="disable", pool=pool)
    stack.callback(proxy.stop)
    return pc.start_pgtenant(proxy, name)


def ratios(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-run tps ratios a/b (runs paired in order)."""
    r = [x["tps"] / y["tps"] for x, y in zip(a, b, strict=True)]
    return statistics.median(r), min(r), max(r)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--mode", default="extended", choices=("extended", "prepared", "simple"), help="pgbench -M")
    p.add_argument("--pool-mode", choices=("session", "transaction"), help="[pool] pool_mode of both pgtenants")
    p.add_argument("--quiet-wait", type=float, default=30, help="max s to wait for an idle host before each run")
    p.add_argument("--proxy-cpus", help="CPUs (comma list) the proxies (PgBouncer, pgtenant) are pinned to; "
                   "PostgreSQL, pgbench and this script get the others (a proxy on a core of its own, as deployed "
                   "beside a database server); default: no pinning (every process shares every core)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    proxy_cpus = {int(c) for c in args.proxy_cpus.split(",")} if args.proxy_cpus else set()
    other_cpus = set(os.sched_getaffinity(0)) - proxy_cpus
    if args.proxy_cpus and not other_cpus:
        raise SystemExit("--proxy-cpus leaves no CPU for PostgreSQL and pgbench")
    installation = pgcluster.default_installation()
    if installation is None:
        raise SystemExit("no PostgreSQL installation found")
    pgbench = str(installation.bin("pgbench")) if installation.bin("pgbench").exists() else shutil.which("pgbench")
    if not pgbench:
        raise SystemExit("pgbench not found")
    bouncer = pc.ensure_pgbouncer()
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        cluster = pc.start_cluster(stack, installation, 200)
        results["versions"] = pc.versions(bouncer, cluster)
        workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-proxy-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        pc.BenchProxy(cluster, workdir, backend_sslmode="disable").provision()
        role, role_pw = pc.backend_role()
        pc.init_pgbench(pgbench, cluster, args.scale, role)
        assert cluster.pid is not None
        mode = {"pool_mode": args.pool_mode} if args.pool_mode else {}
        targets = {
            "direct": pc.Target("direct", cluster.port, role, role_pw),
            "pgbouncer (session)": pc.start_pgbouncer(stack, bouncer, cluster, args.clients + 10),
            "pgtenant": start_proxy(stack, cluster, "pgtenant", mode),
            "pgtenant + cache": start_proxy(stack, cluster, "pgtenant + cache", {**mode, "statement_cache": True}),
        }
        pc.wait_ready(targets["direct"])
        if proxy_cpus:  # PostgreSQL's backends (forked later too) and pgbench (our child) on the others
            os.sched_setaffinity(0, other_cpus)
            pc.pin_tree(cluster.pid, other_cpus)
            for target in targets.values():
                if target.pid is not None:
                    pc.pin_tree(target.pid, proxy_cpus)
            pc.say(f"proxies pinned to CPUs {sorted(proxy_cpus)}, PostgreSQL and pgbench to {sorted(other_cpus)}")
        args.max_other = 100.0
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        for i in range(args.runs):
            for name, target in targets.items():
                r = pc.run_pgbench(pgbench, target, args.mode, args, cluster.pid)
                pc.say(f"run {i + 1}/{args.runs} {name:20} tps={r['tps']:9.1f} cpu_s={r['cpu_s']}")
                runs[name].append(r)
    results["runs"] = runs
    base = runs["pgbouncer (session)"]
    where = f", proxies on CPU {args.proxy_cpus}" if args.proxy_cpus else ""
    lines = [f"| target (pgbench -S -M {args.mode}{where}, "
             f"{args.clients} clients, {args.duration} s x {args.runs}) | median tps | / PgBouncer session: median "
             "(range) | postgres CPU µs/txn | proxy CPU µs/txn |", "|---|---|---|---|---|"]
    for name, rs in runs.items():
        txns = sum(r["transactions"] for r in rs)
        pg_us = sum(r["cpu_s"]["postgres"] for r in rs) / txns * 1e6
        proxy_us = sum(r["cpu_s"]["proxy"] for r in rs) / txns * 1e6
        med, lo, hi = ratios(rs, base)
        lines.append(f"| {name} | {statistics.median(r['tps'] for r in rs):.0f} | {med:.2f}x ({lo:.2f}-{hi:.2f}) "
                     f"| {pg_us:.0f} | {proxy_us:.0f} |")
    report = "\n".join(lines)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
