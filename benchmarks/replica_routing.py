#!/usr/bin/env python3
"""Read replicas (issue 18): the cost of routing. pgbench -S through pgtenant with route = "auto" (every read goes to
a streaming replica) against route = "primary" (the same proxy config, replicas configured, nothing routed).

Run from the repo root:  .venv/bin/python benchmarks/replica_routing.py [--quick] [--json out.json]
A primary (wal_level = replica) and its replica (pg_basebackup -R) run on this host; pgbench's database is
initech (the database strategy: a passthrough tenant, so what is measured is the proxy's routing, not the
policy). Runs alternate between the two proxies; the ratio auto/primary is reported with its range over the runs
(target: >= 0.97). On one host the replica's postgres shares the CPUs with the primary's, so the ratio is about
the proxy's work per statement (is it provably read-only, which replica may serve it), not about offloading.
So that the servers answer alike: both run the same settings (checked: pg_settings compared, the differences a
standby must have aside), with shared_buffers large enough for pgbench's tables (--shared-buffers), both prewarmed
(pg_prewarm of pgbench's relations on each), each mode warmed on every target first (--warmup s), and the order
of the targets flips every run (ABBA: neither route always runs first). The blocks each server read from outside
its shared buffers per transaction are reported (pg_stat_database.blks_read): a cold cache on one side shows there.
The CPU table splits the host's CPU per transaction between pgbench, the primary's postgres, the replica's postgres,
the proxy and everything else, so the proxy's part of a gap can be told from the servers'.

`--trace` (short runs, no ratio): the proxy's syscalls per transaction by name (strace -c attached to the proxy,
which slows it: compare the routes, not the absolute tps) and the statements each server ran per transaction
(log_statement = all on both), the proxy's own (not pgbench's) listed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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
    p.add_argument("--shared-buffers", default="256MB",
                   help="both servers' shared_buffers (the default holds pgbench's tables at scale 10)")
    p.add_argument("--warmup", type=int, default=3, help="s of each mode on every target before its runs")
    p.add_argument("--trace", action="store_true",
                   help="syscalls (strace -c) and server statements (log_statement = all) per transaction instead "
                        "of the timed comparison (one short run per mode and route)")
    a = p.parse_args()
    if a.quick:
        a.duration, a.runs = 3, 1
    if a.trace:
        a.duration, a.runs, a.direct = min(a.duration, 3), 1, False
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
        settings = {**PRIMARY_SETTINGS, "shared_buffers": args.shared_buffers,
                    **({"log_statement": "all"} if args.trace else {})}
        primary = PgCluster(installation, ssl=False, settings=settings)  # (the standby takes the same settings)
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
        results["settings_differing"] = differing = settings_differing(primary, standby)
        for name, on_primary, on_replica in differing:
            say(f"WARNING: setting {name} differs: primary {on_primary!r}, replica {on_replica!r}")
        results["prewarmed_blocks"] = prewarm(primary, standby)
        targets = {route: proxy(stack, primary, standby, route) for route in ("primary", "auto")}
        role, role_pw = pc.backend_role()
        if args.direct:  # the servers themselves: is the replica as fast as the primary at this?
            targets["direct-primary"] = pc.Target("direct-primary", primary.port, role, role_pw)
            targets["direct-replica"] = pc.Target("direct-replica", standby.port, role, role_pw)
        pg_pid, replica_pid = primary.pid, standby.pid
        assert pg_pid is not None and replica_pid is not None
        if args.trace:
            results["trace"] = {mode: {route: traced(pgbench, t, mode, args, primary, standby)
                                       for route, t in targets.items()} for mode in args.modes}
            print(trace_markdown(results["trace"]))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
            return 0
        for mode in args.modes:
            for target in targets.values():  # a proxy's first use of a code path imports and reads files: not timed
                pc.run_pgbench(pgbench, target, mode, argparse.Namespace(**{**vars(args), "duration": args.warmup}),
                               pg_pid)
            blocks = blocks_read(primary, standby)
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for i in range(args.runs):
                order = list(targets.items())  # interleaved, ABBA: drift hits both alike, neither always first
                for route, target in order if i % 2 == 0 else reversed(order):
                    r = pc.run_pgbench(pgbench, target, mode, args, pg_pid, replica_pid)
                    say(f"{mode:9} run {i + 1}/{args.runs} route={route:7} tps={r['tps']:9.1f} "
                        f"lat={r['latency_ms']:.3f}ms proxy_cpu_s={r['cpu_s']['proxy']}")
                    runs[route].append(r)
            ratios = [a["tps"] / p["tps"] for a, p in zip(runs["auto"], runs["primary"], strict=True)]
            if args.direct:
                direct = [r["tps"] / p["tps"] for r, p in zip(runs["direct-replica"], runs["direct-primary"],
                                                                strict=True)]
                results.setdefault("direct_ratio", {})[mode] = [
                    round(min(direct), 3), round(statistics.median(direct), 3), round(max(direct), 3)]
            served = {server: sum(r["transactions"] for route, rs in runs.items() for r in rs
                                  if route in (f"direct-{server}", "primary" if server == "primary" else "auto"))
                      for server in blocks}  # (the transactions each server answered)
            read = {k: v - blocks[k] for k, v in blocks_read(primary, standby, settle=True).items()}
            results["bench"][mode] = {
                "tps": {route: [r["tps"] for r in rs] for route, rs in runs.items()},
                # blocks read from outside shared buffers per 1000 transactions it answered (the primary: routes
                # primary and direct-primary; the replica: auto and direct-replica)
                "blocks_read_per_1000_txn": {k: round(v / max(1, served[k]) * 1000, 2) for k, v in read.items()},
                "proxy_cpu_us_per_txn": {route: round(sum(r["cpu_s"]["proxy"] for r in rs)
                                                      / sum(r["transactions"] for r in rs) * 1e6, 2)
                                         for route, rs in runs.items() if not route.startswith("direct")},
                "host_cpu_us_per_txn": {route: per_txn(rs, "cpu_s", 1e6) for route, rs in runs.items()},
                "proxy_syscalls_per_txn": {route: per_txn(rs, "proxy_syscalls")
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
    print()
    print("Host CPU per transaction (µs; postgres = the primary's, replica = the replica's; other: not explained)")
    print("and the proxy's read and write syscalls per transaction (/proc/<pid>/io):")
    print()
    print("| mode | route | pgbench | postgres | replica | proxy | other | total | proxy reads | proxy writes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, b in results["bench"].items():
        for route, cpu in b["host_cpu_us_per_txn"].items():
            sc = b["proxy_syscalls_per_txn"].get(route, {})
            print(f"| {mode} | {route} | {cpu['pgbench']} | {cpu['postgres']} | {cpu['replica']} | {cpu['proxy']} | "
                  f"{cpu['other']} | {round(sum(cpu.values()), 2)} | {sc.get('read', '')} | {sc.get('write', '')} |")
    print()
    print(f"statements the replica ran (pg_stat_database xact_commit on it): {results['replica_served']}")
    print(f"blocks prewarmed (pg_prewarm): {results['prewarmed_blocks']}; settings differing: "
          f"{results['settings_differing'] or 'none'}")
    for mode, b in results["bench"].items():
        print(f"{mode}: blocks read outside shared buffers per 1000 transactions each server answered (the primary: "
              f"routes primary and direct-primary; the replica: auto and direct-replica): "
              f"{b['blocks_read_per_1000_txn']}")
    for mode, (low, mid, high) in results.get("direct_ratio", {}).items():
        print(f"direct, no proxy: replica/primary tps in {mode} mode: {mid} ({low}-{high})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


# Settings a standby has of its own (or that name its own files and port): not compared.
OWN_SETTINGS = {"port", "data_directory", "config_file", "hba_file", "ident_file", "unix_socket_directories",
                "primary_conninfo", "primary_slot_name", "in_hot_standby", "transaction_read_only",
                "default_transaction_read_only", "listen_addresses"}
PREWARMED = ("pgbench_accounts", "pgbench_accounts_pkey", "pgbench_branches", "pgbench_branches_pkey",
             "pgbench_tellers", "pgbench_tellers_pkey")


def settings_differing(primary: PgCluster, standby: StandbyCluster) -> list[tuple[str, str, str]]:
    """(name, the primary's, the replica's) of every pg_settings value that differs but for OWN_SETTINGS."""
    q = "SELECT name, setting FROM pg_settings"
    mine, theirs = dict(primary.execute(q)), dict(standby.execute(q))
    return [(k, mine[k], theirs.get(k)) for k in sorted(mine) if k not in OWN_SETTINGS and theirs.get(k) != mine[k]]


def prewarm(primary: PgCluster, standby: StandbyCluster) -> dict[str, int]:
    """pg_prewarm of pgbench's relations on both servers (the extension created on the primary, replayed on the
    replica): the blocks each loaded into its shared buffers."""
    primary.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm", dbname=pc.DB)
    standby.wait_replayed()
    q = "SELECT sum(pg_prewarm(c::regclass)) FROM unnest(%s::text[]) AS c"
    return {name: int(s.execute(q, (list(PREWARMED),), dbname=pc.DB)[0][0])
            for name, s in (("primary", primary), ("replica", standby))}


def blocks_read(primary: PgCluster, standby: StandbyCluster, settle: bool = False) -> dict[str, int]:
    """pg_stat_database.blks_read of pgbench's database on each server (`settle`: after the 10 s in which an idle
    server connection flushes its counts: the proxies' pooled connections stay open)."""
    if settle:
        time.sleep(11)  # (PostgreSQL's PGSTAT_IDLE_INTERVAL, + 1 s)
    q = "SELECT blks_read FROM pg_stat_database WHERE datname = %s"
    return {name: int(s.execute(q, (pc.DB,))[0][0]) for name, s in (("primary", primary), ("replica", standby))}


def per_txn(runs: list[dict[str, Any]], key: str, scale: float = 1.0) -> dict[str, float]:
    """Each counter of the runs' `key` summed over the runs, per transaction, times `scale`."""
    txns = sum(r["transactions"] for r in runs)
    return {k: round(sum(r[key][k] for r in runs) / txns * scale, 2) for k in runs[0][key]}


@contextlib.contextmanager
def strace_counts(pid: int, into: dict[str, int]) -> Any:
    """`strace -c -f` attached to `pid` around the block: its syscalls by name, into `into`."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out.name], stderr=subprocess.PIPE)
        try:
            proc.stderr.readline()  # type: ignore[union-attr]  # "strace: Process N attached"
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        for line in out.read().splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                into[f[-1]] = int(f[3])


_LOGGED = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)")


def statements(log: Path, since: int) -> collections.Counter[str]:
    """The statements a server logged (log_statement = all) after byte `since` of its log, digits as N."""
    with log.open("rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return collections.Counter(re.sub(r"\d+", "N", m.group(1).strip()) for m in _LOGGED.finditer(text))


def traced(pgbench: str, target: pc.Target, mode: str, args: argparse.Namespace, primary: PgCluster,
           standby: StandbyCluster) -> dict[str, Any]:
    """One run under strace -c with both servers logging their statements, after an untraced second of warm-up:
    counts per transaction."""
    assert target.pid is not None
    pc.run_pgbench(pgbench, target, mode, argparse.Namespace(**{**vars(args), "duration": 1}), primary.pid or 0)
    calls: dict[str, int] = {}  # (after a warm-up run: the proxy's first use of a code path reads files)
    marks = (primary.log_path.stat().st_size, standby.log_path.stat().st_size)
    with strace_counts(target.pid, calls):
        r = pc.run_pgbench(pgbench, target, mode, args, primary.pid or 0, standby.pid)
    n = r["transactions"]
    out: dict[str, Any] = {"transactions": n, "tps_under_strace": r["tps"],
                           "syscalls_per_txn": {k: round(v / n, 3) for k, v in sorted(calls.items(),
                                                                                     key=lambda kv: -kv[1])}}
    for server, log, mark in (("primary", primary.log_path, marks[0]), ("replica", standby.log_path, marks[1])):
        seen = statements(log, mark)
        out[f"{server}_statements_per_txn"] = round(sum(seen.values()) / n, 3)
        out[f"{server}_proxy_statements"] = {k: v for k, v in seen.most_common() if "pgbench_" not in k}
    return out


def trace_markdown(trace: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| mode | route | syscalls/txn | top syscalls per txn | statements/txn primary, replica | the proxy's own "
             "statements (count in the run) |", "|---|---|---|---|---|---|"]
    for mode, routes in trace.items():
        for route, t in routes.items():
            sc = t["syscalls_per_txn"]
            top = ", ".join(f"{k} {v}" for k, v in list(sc.items())[:6])
            own = "; ".join(f"{k[:60]} x{v}" for k, v in [*t["primary_proxy_statements"].items(),
                                                           *t["replica_proxy_statements"].items()][:6])
            lines.append(f"| {mode} | {route} | {round(sum(sc.values()), 2)} | {top} | "
                         f"{t['primary_statements_per_txn']}, {t['replica_statements_per_txn']} | {own} |")
    return "\n".join(lines)


def replica_share(standby: StandbyCluster) -> int:
    """Transactions committed on the replica (its reads), to show the auto runs went there."""
    return int(standby.execute("SELECT sum(xact_commit) FROM pg_stat_database")[0][0])


if __name__ == "__main__":
    pc.cli(main)
