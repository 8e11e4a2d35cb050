#!/usr/bin/env python3
"""Worker processes (issue 19): pgbench -S through pgtenant with 1, 2 and 4 workers next to PgBouncer (one process,
and two processes sharing the port with so_reuseport), with the CPU each spends per transaction and a projection of
the throughput on 8 and 16 cores from the measured per-transaction CPU; then issue 16's "statement cache vs
PgBouncer session mode" extended run again with 2 workers.

Run from the repo root:  .venv/bin/python benchmarks/workers_compare.py [--quick] [--json out.json]
CPU is accounted per process tree (a supervisor with its workers, a PgBouncer process, the postmaster with its
backends, pgbench); see benchmarks/README.md for what the numbers mean and the caveats of a shared 2-core host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pgbench_compare as pc  # noqa: E402
from benchmarks.pool_compare import bench_cluster, pgbench_section  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402

say = pc.say


def pgtenant(stack: contextlib.ExitStack, cluster: PgCluster, workers: int, pool: dict[str, Any]) -> pc.Target:
    """pgtenant with `[server] workers` and `[pool]` = `pool`; its CPU is its whole process tree's."""
    proxy = pc.make_pgtenant(stack, cluster)
    proxy.pool = dict(pool)
    proxy.server = {"workers": workers}
    name = f"pgtenant w{workers}" + (" +cache" if pool.get("statement_cache") else "")
    target = pc.start_pgtenant(proxy, name)
    target.name, target.tree = name, True
    return target


def pgbouncer_pair(stack: contextlib.ExitStack, exe: str, cluster: PgCluster, pool_size: int) -> pc.Target:
    """Two PgBouncer processes on one port (so_reuseport = 1; PgBouncer 1.18 has no [peers] yet, so a cancel may
    land on the wrong process: pgbench -S sends none). CPU: both processes (tree of a shell that runs neither: we
    sum them by hand)."""
    first = pc.start_pgbouncer(stack, exe, cluster, pool_size, name="pgbouncer x2", pool_mode="transaction",
                               extra_ini="so_reuseport = 1\n")
    second = pc.start_pgbouncer(stack, exe, cluster, pool_size, name="pgbouncer x2 (2nd)", pool_mode="transaction",
                                port=first.port, extra_ini="so_reuseport = 1\n")
    return _Pair(first, second)


class _Pair(pc.Target):
    """Two processes measured as one target: run_pgbench reads `pid`; the pair's CPU is patched in after (below)."""

    def __init__(self, first: pc.Target, second: pc.Target) -> None:
        super().__init__(first.name, first.port, first.user, first.password, first.pid, first.log)
        self.second = second


def with_pair_cpu(pgbench: str, targets: dict[str, pc.Target], args: argparse.Namespace, pg_pid: int,
                  modes: list[str]) -> dict[str, Any]:
    """pool_compare's interleaved section, the second PgBouncer's CPU added to the pair's."""
    original = pc.run_pgbench

    def run(pgbench_: str, target: pc.Target, mode: str, a: argparse.Namespace, pid: int) -> dict[str, Any]:
        if not isinstance(target, _Pair):
            return original(pgbench_, target, mode, a, pid)
        u0, s0 = pc.cpu_seconds(target.second.pid)
        r = original(pgbench_, target, mode, a, pid)
        u1, s1 = pc.cpu_seconds(target.second.pid)
        extra_u, extra_s = u1 - u0, s1 - s0
        r["cpu_s"]["proxy"] = round(r["cpu_s"]["proxy"] + extra_u + extra_s, 3)
        r["cpu_s"]["other"] = round(max(0.0, r["cpu_s"]["other"] - extra_u - extra_s), 3)
        r["proxy_user_s"] = round(r["proxy_user_s"] + extra_u, 3)
        r["proxy_sys_s"] = round(r["proxy_sys_s"] + extra_s, 3)
        return r

    pc.run_pgbench = run  # type: ignore[assignment]
    try:
        return pgbench_section(pgbench, targets, modes, args, pg_pid)
    finally:
        pc.run_pgbench = original  # type: ignore[assignment]


def projection(bench: dict[str, Any], cores: int) -> dict[str, Any]:
    """Throughput on `cores` cores from the measured CPU per transaction of one worker (w1): the proxy needs
    proxy_us, PostgreSQL pg_us per transaction (clients elsewhere), so at most cores / (proxy_us + pg_us) tps,
    the proxy taking proxy_us / (proxy_us + pg_us) of the cores (its workers = that many cores, rounded up)."""
    out: dict[str, Any] = {}
    for mode, targets in bench.items():
        one = targets.get("pgtenant w1")
        if not one or "cpu_us_per_txn" not in one:
            continue
        proxy_us, pg_us = one["cpu_us_per_txn"]["proxy"], one["cpu_us_per_txn"]["postgres"]
        direct = targets.get("direct", {}).get("cpu_us_per_txn", {}).get("postgres", pg_us)
        tps = cores * 1e6 / (proxy_us + pg_us)
        out[mode] = {"proxy_us": proxy_us, "postgres_us": pg_us, "postgres_us_direct": direct,
                     "tps": round(tps), "proxy_cores": round(cores * proxy_us / (proxy_us + pg_us), 1),
                     "direct_tps": round(cores * 1e6 / direct)}
    return out


def report(results: dict[str, Any]) -> str:
    lines = ["## pgbench -S: workers vs PgBouncer", "",
             "| mode | target | tps | latency ms | proxy µs CPU/txn | postgres µs/txn | pgbench µs/txn | host busy % |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, targets in results["bench"].items():
        for name, s in targets.items():
            if "error" in s:
                lines.append(f"| {mode} | {name} | error: {s['error']} | | | | | |")
                continue
            cpu = s["cpu_us_per_txn"]
            busy = round(sum(r["host_cpu_busy_pct"] for r in s["runs"]) / len(s["runs"]), 1)
            lines.append(f"| {mode} | {name} | {s['tps']} | {s['latency_ms']} | {cpu.get('proxy', '-')} | "
                         f"{cpu['postgres']} | {cpu['pgbench']} | {busy} |")
    for cores, proj in results.get("projection", {}).items():
        lines += ["", f"## projection to {cores} cores (clients on other hosts)", "",
                  "| mode | proxy µs/txn | postgres µs/txn | tps (proxy + PostgreSQL on the host) | proxy cores | "
                  "direct tps |", "|---|---|---|---|---|---|"]
        for mode, p in proj.items():
            lines.append(f"| {mode} | {p['proxy_us']} | {p['postgres_us']} | {p['tps']} | {p['proxy_cores']} | "
                         f"{p['direct_tps']} |")
    if "cache" in results:
        lines += ["", "## issue 16 rerun: statement cache (2 workers) vs PgBouncer session mode, -M extended", ""]
        c = results["cache"].get("extended", {})
        mine, theirs = c.get("pgtenant w2 +cache", {}), c.get("pgbouncer session", {})
        if "tps" in mine and "tps" in theirs:
            lines.append(f"pgtenant w2 +cache {mine['tps']} tps, PgBouncer session {theirs['tps']} tps: ratio "
                         f"{mine['tps'] / theirs['tps']:.2f}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--modes", default="simple,extended,prepared")
    p.add_argument("--workers", default="1,2,4", help="pgtenant worker counts to run")
    p.add_argument("--pool-size", type=int, default=20, help="servers per pool (per worker for pgtenant)")
    p.add_argument("--skip-cache", action="store_true", help="skip issue 16's statement cache rerun")
    p.add_argument("--quiet-wait", type=float, default=10, help="max s to wait for an idle host before each run")
    p.add_argument("--max-other", type=float, default=100)
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1 run x 5 s")
    p.add_argument("--no-snapshot", action="store_true", help="run proxy/ from the working tree, not a copy")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.quick:
        a.duration, a.runs = 5, 1
    a.modes = [m for m in a.modes.split(",") if m]
    a.workers = [int(w) for w in a.workers.split(",") if w]
    a.json = a.json.resolve() if a.json else None
    return a


def main() -> int:
    args = parse_args()
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        cluster, pgbench, bouncer, (role, role_pw) = bench_cluster(stack, args, results)
        pg_pid = cluster.pid
        assert pg_pid is not None
        txn = {"pool_mode": "transaction", "pool_size": args.pool_size}
        targets: dict[str, pc.Target] = {"direct": pc.Target("direct", cluster.port, role, role_pw)}
        for n in args.workers:
            targets[f"pgtenant w{n}"] = pgtenant(stack, cluster, n, txn)
        targets["pgbouncer"] = pc.start_pgbouncer(stack, bouncer, cluster, args.pool_size, name="pgbouncer",
                                                  pool_mode="transaction")
        targets["pgbouncer x2"] = pgbouncer_pair(stack, bouncer, cluster, args.pool_size)
        results["bench"] = with_pair_cpu(pgbench, targets, args, pg_pid, args.modes)
        results["projection"] = {cores: projection(results["bench"], cores) for cores in (8, 16)}
        if not args.skip_cache:
            cache = {"cache w2": pgtenant(stack, cluster, 2, {**txn, "statement_cache": True}),
                     "session": pc.start_pgbouncer(stack, bouncer, cluster, args.clients + 2,
                                                   name="pgbouncer session")}
            cache = {t.name: t for t in cache.values()}
            results["cache"] = pgbench_section(pgbench, cache, ["extended"], args, pg_pid)
    results["versions"]["pgtenant_code"] = pc.code_versions
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    pc.cli(main)
