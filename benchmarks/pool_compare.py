#!/usr/bin/env python3
"""Pooling (issue 16): pgtenant in transaction mode next to PgBouncer and direct PostgreSQL, in one run.

Run from the repo root:  .venv/bin/python benchmarks/pool_compare.py [--quick] [--json out.json]
Sections: pgbench -S (simple/extended/prepared) and pgbench -C; 1,000 concurrent clients across 20 tenants on a
database budget of 40 servers (throughput, p50/p99 per tenant, proxy RSS, bytes per idle client); a noisy
neighbour (one tenant's 200 clients saturating, another's 5: the small tenant's p99 against its p99 alone).
See benchmarks/README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pgbench_compare as pc  # noqa: E402
from tests.support import pgcluster, proxyproc  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402

say = pc.say
SHARED_DB = "saas"  # the shared tenants of the scale and noisy-neighbour sections: rows of public.orders
ROWS_PER_TENANT = 200


# --------------------------------------------------------------------------- targets


def pgtenant(stack: contextlib.ExitStack, cluster: PgCluster, name: str, pool: dict[str, Any],
             tenants: int = 0) -> pc.Target:
    """A pgtenant process with `[pool]` = `pool` (logging at info); `tenants` more shared tenants t01… (users
    u01…, password u01-pw) on database saas."""
    proxy = pc.make_pgtenant(stack, cluster)
    proxy.pool = dict(pool)
    for i in range(1, tenants + 1):
        proxy.extra_tenants[f"t{i:02}"] = {"strategy": "shared", "database": SHARED_DB, "tenant_id": f"t{i:02}"}
        proxy.extra_users[f"u{i:02}"] = (f"t{i:02}", f"u{i:02}-pw")
    target = pc.start_pgtenant(proxy, name)
    target.name = name
    target.metrics_url = proxy.metrics_url  # type: ignore[attr-defined]
    return target


def pool_waits(target: pc.Target) -> dict[str, tuple[float, float]]:
    """Per tenant: (seconds waited for a server in all, waits) so far, from the proxy's /metrics."""
    import urllib.request

    with urllib.request.urlopen(target.metrics_url + "/metrics", timeout=10) as r:  # type: ignore[attr-defined]
        text = r.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, i in (("_sum", 0), ("_count", 1)):
            head = f"pgtenant_pool_wait_seconds{suffix}{{"
            if line.startswith(head):
                labels, value = line[len(head):].rsplit("} ", 1)
                tenant = dict(kv.split("=", 1) for kv in labels.split(","))["tenant"].strip('"')
                out.setdefault(tenant, [0.0, 0.0])[i] += float(value)
    return {t: (v[0], v[1]) for t, v in out.items()}


def measured_load(target: pc.Target, cluster: PgCluster, clients: list[tuple[str, str, str, float]],
                  args: argparse.Namespace, procs: int, apart: list[tuple[str, str, str, float]] | None = None,
                  ) -> dict[str, Any]:
    """run_load, plus where the time went: the proxy's CPU (share of one core: near 100% = the event loop is the
    bottleneck), PostgreSQL's CPU (share of the host's cores), and per tenant the mean wait for a server in the
    pool queue (queueing, apart from the loop and the database)."""
    assert target.pid is not None and cluster.pid is not None
    marks: dict[str, Any] = {}

    def start() -> None:
        marks.update(t=time.monotonic(), proxy=sum(pc.cpu_seconds(target.pid)), pg=pc.tree_cpu(cluster.pid),  # type: ignore[arg-type]
                     waits=pool_waits(target))

    res = run_load(target.port, clients, args.load_duration, procs, start, apart)
    wall = time.monotonic() - marks["t"]
    waits = pool_waits(target)
    res["proxy_cpu_pct"] = round(100 * (sum(pc.cpu_seconds(target.pid)) - marks["proxy"]) / wall, 1)
    res["postgres_cpu_pct_of_host"] = round(100 * (pc.tree_cpu(cluster.pid) - marks["pg"]) / wall
                                            / (os.cpu_count() or 1), 1)
    res["pool_wait_ms"] = {}
    for tenant, (total, n) in waits.items():
        t0, n0 = marks["waits"].get(tenant, (0.0, 0.0))
        if n > n0:
            res["pool_wait_ms"][tenant] = round(1000 * (total - t0) / (n - n0), 2)
    return res


def tenant_rows(cluster: PgCluster, tenants: int) -> None:
    """ROWS_PER_TENANT orders for each tenant t01… (idempotent)."""
    cluster.execute(
        f"INSERT INTO public.orders SELECT 100000 + t * 1000 + g, 't' || lpad(t::text, 2, '0'), g "
        f"FROM generate_series(1, {tenants}) t, generate_series(1, {ROWS_PER_TENANT}) g ON CONFLICT DO NOTHING",
        dbname=SHARED_DB)
    cluster.execute("ANALYZE public.orders", dbname=SHARED_DB)


def backends(cluster: PgCluster, dbname: str) -> int:
    return int(cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                               "AND backend_type = 'client backend'", (dbname,))[0][0])


# --------------------------------------------------------------------------- pgbench sections


def pgbench_section(pgbench: str, targets: dict[str, pc.Target], modes: list[str], args: argparse.Namespace,
                    pg_pid: int, extra: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Interleaved runs (mode -> run -> target) like pgbench_compare; a target pgbench cannot run in a mode
    (PgBouncer's transaction mode with -M prepared) gets {"error": <pgbench's message>}."""
    run_args = argparse.Namespace(**vars(args), pgbench_extra=extra)
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        failed: dict[str, str] = {}
        for i in range(args.runs):
            for name, target in targets.items():
                if name in failed:
                    continue
                try:
                    r = pc.run_pgbench(pgbench, target, mode, run_args, pg_pid)
                except RuntimeError as exc:
                    failed[name] = next((ln.strip() for ln in str(exc).splitlines() if "ERROR" in ln or "error" in ln),
                                        str(exc).splitlines()[0])
                    say(f"{mode} {name}: pgbench failed: {failed[name]}")
                    continue
                say(f"{' '.join(extra)} {mode:9} run {i + 1}/{args.runs} {name:22} tps={r['tps']:9.1f} "
                    f"lat={r['latency_ms']:.3f}ms other={r['other_pct_of_host']}%")
                runs[name].append(r)
        out[mode] = {n: pc.summarize(rs, n != "direct") for n, rs in runs.items() if rs}
        out[mode].update({n: {"error": e} for n, e in failed.items()})
    return out


# --------------------------------------------------------------------------- client load (other processes)


def _load_worker(port: int, clients: list[tuple[str, str, str, float]], go: Any, duration: float, out: Any) -> None:
    """One process: asyncpg `clients` (user, password, tenant, think seconds); connect all, one query each, then
    report "connected"; once `go` is set, loop query + think for `duration` seconds; send the latencies."""
    import asyncpg

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> dict[str, Any]:
        sem = asyncio.Semaphore(16)

        async def connect(user: str, password: str) -> Any:
            async with sem:
                conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=password,
                                             database=user.replace("u", "t", 1), ssl=False, timeout=120)
                await conn.fetchval("SELECT 1")
                return conn

        conns = await asyncio.gather(*(connect(u, p) for u, p, _, _ in clients))
        out.put(("connected", len(conns)))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        end = time.monotonic() + duration
        lat: dict[str, list[float]] = {}
        errors: list[str] = []

        async def loop(conn: Any, tenant: str, think: float) -> None:
            mine = lat.setdefault(tenant, [])
            n = 0
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await conn.fetchrow("SELECT count(*), sum(amount) FROM orders WHERE id % 10 = $1", n % 10)
                except Exception as exc:  # counted and reported
                    errors.append(repr(exc)[:200])
                    continue
                mine.append(time.perf_counter() - t0)
                n += 1
                if think:
                    await asyncio.sleep(think)

        await asyncio.gather(*(loop(c, t, th) for c, (_, _, t, th) in zip(conns, clients, strict=True)))
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        return {"latencies": lat, "errors": errors[:20], "error_count": len(errors)}

    out.put(("done", asyncio.run(main())))


def run_load(port: int, clients: list[tuple[str, str, str, float]], duration: float, procs: int,
             on_connected: Any = None, apart: list[tuple[str, str, str, float]] | None = None) -> dict[str, Any]:
    """`clients` spread over `procs` processes, `apart` in a process of their own (their latencies are not those
    of a client process busy with the others); `on_connected()` runs once all are connected and idle (before the
    load starts; its result is returned as "idle"). Returns per-tenant latencies, throughput and errors."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    go = ctx.Event()
    shares = [clients[i::procs] for i in range(procs)] + [apart or []]
    workers = [ctx.Process(target=_load_worker, args=(port, share, go, duration, queue), daemon=True)
               for share in shares if share]
    for w in workers:
        w.start()
    connected = 0
    for _ in workers:
        kind, n = queue.get(timeout=900)
        assert kind == "connected", kind
        connected += n
    idle = on_connected() if on_connected else None
    go.set()
    results = [queue.get(timeout=duration + 600)[1] for _ in workers]
    for w in workers:
        w.join(60)
    lat: dict[str, list[float]] = {}
    for r in results:
        for tenant, xs in r["latencies"].items():
            lat.setdefault(tenant, []).extend(xs)
    total = sum(len(xs) for xs in lat.values())
    return {"clients": connected, "idle": idle, "queries": total, "qps": round(total / duration, 1),
            "per_tenant": {t: pct(xs) for t, xs in sorted(lat.items())},
            "all": pct([x for xs in lat.values() for x in xs]),
            "errors": sum(r["error_count"] for r in results),
            "error_samples": [e for r in results for e in r["errors"]][:5]}


def pct(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {"n": len(xs), "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "max_ms": round(max(xs) * 1000, 2)}


class Sampler:
    """Samples the proxy's RSS and the database's backends every 0.2 s on a thread."""

    def __init__(self, pid: int, cluster: PgCluster, dbname: str) -> None:
        self.pid, self.cluster, self.dbname = pid, cluster, dbname
        self.rss: list[int] = []
        self.backends: list[int] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):
                self.rss.append(pc.rss_kb(self.pid))
                self.backends.append(backends(self.cluster, self.dbname))
            self.stop_event.wait(0.2)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()


def scale_section(stack: contextlib.ExitStack, cluster: PgCluster, args: argparse.Namespace) -> dict[str, Any]:
    """args.scale_clients clients across args.tenants tenants, database budget args.budget servers."""
    per_pool = max(1, args.budget // args.tenants)
    pool = {"pool_mode": "transaction", "pool_size": per_pool, "max_db_connections": args.budget}
    target = pgtenant(stack, cluster, "pgtenant (transaction)", pool, tenants=args.tenants)
    assert target.pid is not None
    clients = [(f"u{1 + i % args.tenants:02}", f"u{1 + i % args.tenants:02}-pw", f"t{1 + i % args.tenants:02}",
                args.think) for i in range(args.scale_clients)]
    time.sleep(1)
    rss_before = pc.rss_kb(target.pid)

    def idle() -> dict[str, Any]:
        time.sleep(1)
        rss = pc.rss_kb(target.pid)
        return {"rss_before_kb": rss_before, "rss_idle_kb": rss, "backends_idle": backends(cluster, SHARED_DB),
                "bytes_per_idle_client": round((rss - rss_before) * 1024 / args.scale_clients)}

    say(f"scale: {args.scale_clients} clients across {args.tenants} tenants, pool_size {per_pool}, "
        f"max_db_connections {args.budget}, think {args.think} s")
    with Sampler(target.pid, cluster, SHARED_DB) as s:
        res = run_load(target.port, clients, args.load_duration, args.procs, idle)
    res.update(pool=pool, rss_peak_kb=max(s.rss, default=0), backends_max=max(s.backends, default=0))
    return res


def noisy_section(stack: contextlib.ExitStack, cluster: PgCluster, args: argparse.Namespace) -> dict[str, Any]:
    """The small tenant's latency alone, then beside a tenant saturating its pool and the database budget."""
    pool = {"pool_mode": "transaction", "pool_size": args.noisy_budget, "max_db_connections": args.noisy_budget}
    target = pgtenant(stack, cluster, "pgtenant (noisy neighbour)", pool, tenants=2)
    quiet = [("u02", "u02-pw", "t02", args.quiet_think)] * args.quiet_clients
    noisy = [("u01", "u01-pw", "t01", 0.0)] * args.noisy_clients
    say(f"noisy neighbour: t02 alone ({args.quiet_clients} clients)")
    alone = measured_load(target, cluster, [], args, 0, quiet)
    say(f"noisy neighbour: t02 beside t01 ({args.noisy_clients} clients, no think time), "
        f"budget {args.noisy_budget} servers")
    both = measured_load(target, cluster, noisy, args, args.procs, quiet)  # t02 in its own client process
    a, b = alone["per_tenant"].get("t02", {}), both["per_tenant"].get("t02", {})
    ratio = round(b["p99_ms"] / a["p99_ms"], 2) if a.get("p99_ms") and b.get("p99_ms") else None
    return {"pool": pool, "alone": alone, "beside_noisy": both, "quiet_p99_ratio": ratio}


# --------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    clients = results["config"]["clients"]
    for section, title in (("bench", f"pgbench -S, {clients} clients"),
                           ("connect", f"pgbench -S -C, {clients} clients (a new connection per transaction)")):
        if section not in results:
            continue
        lines += [f"## {title}: tps, median of runs; ratios with the range of run-by-run ratios", ""]
        names = sorted({n for r in results[section].values() for n in r}, key=list(results["targets"]).index)
        lines += ["| mode | " + " | ".join(names) + " | pgtenant txn / PgBouncer txn | pgtenant txn+cache / "
                  "PgBouncer session | pgtenant txn / direct |", "|---|" + "---:|" * (len(names) + 3)]
        for mode, r in results[section].items():
            cells = [str(r[n].get("tps", "fails: " + str(r[n].get("error")))) if n in r else "-" for n in names]
            ok = {n: v for n, v in r.items() if "tps" in v}
            lines.append(f"| {mode} | " + " | ".join(cells) + " | "
                         + pc.ratio(ok.get("pgtenant txn", {}), ok.get("pgbouncer txn", {})) + " | "
                         + pc.ratio(ok.get("pgtenant txn+cache", {}), ok.get("pgbouncer session", {})) + " | "
                         + pc.ratio(ok.get("pgtenant txn", {}), ok.get("direct", {})) + " |")
        lines.append("")
    bouncer = results.get("versions", {}).get("pgbouncer", "")
    lines += [f"{bouncer}: PgBouncer tracks protocol-level prepared statements in transaction mode only from 1.21 "
              "on (max_prepared_statements > 0); before, pgbench -M prepared fails there (pgbench's error above)."]
    if "scale" in results:
        s = results["scale"]
        idle = s["idle"] or {}
        lines += ["", f"## {s['clients']} clients, {len(s['per_tenant'])} tenants, database budget "
                  f"{s['pool']['max_db_connections']} (pool_size {s['pool']['pool_size']} per tenant)", "",
                  f"throughput {s['qps']} queries/s, errors {s['errors']}, all: p50 {s['all'].get('p50_ms')} ms, "
                  f"p99 {s['all'].get('p99_ms')} ms; PostgreSQL backends max {s['backends_max']} "
                  f"(idle: {idle.get('backends_idle')}); proxy RSS {idle.get('rss_before_kb', 0) / 1024:.1f} MB "
                  f"before, {idle.get('rss_idle_kb', 0) / 1024:.1f} MB with every client idle, peak "
                  f"{s['rss_peak_kb'] / 1024:.1f} MB; **{idle.get('bytes_per_idle_client')} bytes per idle client** "
                  "(target <= 10 KB)", "", "| tenant | queries | p50 ms | p99 ms | max ms |",
                  "|---|---:|---:|---:|---:|"]
        for t, p in s["per_tenant"].items():
            lines.append(f"| {t} | {p['n']} | {p.get('p50_ms')} | {p.get('p99_ms')} | {p.get('max_ms')} |")
        if s["error_samples"]:
            lines += ["", "errors: " + "; ".join(s["error_samples"])]
    if "noisy" in results:
        n = results["noisy"]
        a, b = n["alone"]["per_tenant"].get("t02", {}), n["beside_noisy"]["per_tenant"].get("t02", {})
        t1 = n["beside_noisy"]["per_tenant"].get("t01", {})
        lines += ["", f"## noisy neighbour (pool_size {n['pool']['pool_size']}, database budget "
                  f"{n['pool']['max_db_connections']})", "",
                  "| | t02 queries | t02 p50 ms | t02 p99 ms | t01 queries | t01 p99 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  f"| t02 alone | {a.get('n')} | {a.get('p50_ms')} | {a.get('p99_ms')} | - | - "
                  f"| {n['alone']['errors']} |",
                  f"| t02 beside t01 | {b.get('n')} | {b.get('p50_ms')} | {b.get('p99_ms')} | {t1.get('n')} "
                  f"| {t1.get('p99_ms')} | {n['beside_noisy']['errors']} |", "",
                  f"t02 p99 beside the noisy tenant / alone: **{n['quiet_p99_ratio']}** (target <= 2)", "",
                  "where the time went: | proxy CPU % of a core | PostgreSQL CPU % of the host | t02 mean pool wait ms "
                  "| t01 mean pool wait ms |", "|---|---:|---:|---:|---:|"]
        for label, run in (("t02 alone", n["alone"]), ("t02 beside t01", n["beside_noisy"])):
            waits = run.get("pool_wait_ms", {})
            lines.append(f"| {label} | {run.get('proxy_cpu_pct')} | {run.get('postgres_cpu_pct_of_host')} | "
                         f"{waits.get('t02', '-')} | {waits.get('t01', '-')} |")
        lines += [""]
    lines += ["", "versions: " + json.dumps(results.get("versions", {}))]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default="simple,extended,prepared")
    p.add_argument("--pool-size", type=int, default=8, help="servers per pool for the pgbench targets")
    p.add_argument("--sections", default="bench,connect,scale,noisy")
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--scale-clients", type=int, default=1000)
    p.add_argument("--budget", type=int, default=40, help="max_db_connections of the scale section")
    p.add_argument("--think", type=float, default=0.5, help="s between a scale client's queries")
    p.add_argument("--load-duration", type=float, default=15)
    p.add_argument("--procs", type=int, default=2, help="client processes for the load sections")
    p.add_argument("--noisy-clients", type=int, default=200)
    p.add_argument("--quiet-clients", type=int, default=5)
    p.add_argument("--quiet-think", type=float, default=0.02)
    p.add_argument("--noisy-budget", type=int, default=10, help="pool_size and max_db_connections, noisy section")
    p.add_argument("--quiet-wait", type=float, default=10, help="max s to wait for an idle host before each run")
    p.add_argument("--max-other", type=float, default=100, help="(pgbench_compare's) accepted share of others' CPU")
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1 run x 5 s, 200 clients x 5 s, 50 noisy clients")
    p.add_argument("--no-snapshot", action="store_true", help="run proxy/ from the working tree, not a copy")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.quick:
        a.duration, a.runs, a.scale_clients, a.load_duration, a.noisy_clients = 5, 1, 200, 5, 50
    a.modes = [m for m in a.modes.split(",") if m]
    a.sections = [s for s in a.sections.split(",") if s]
    a.json = a.json.resolve() if a.json else None
    return a


def bench_cluster(stack: contextlib.ExitStack, args: argparse.Namespace, results: dict[str, Any],
                  ) -> tuple[PgCluster, str, str, tuple[str, str]]:
    """A throwaway cluster (stopped with `stack`; the code snapshot unless --no-snapshot) with pgbench's tables
    owned by the backend role: (cluster, pgbench, pgbouncer, (role, password)); versions go to `results`."""
    installation = pgcluster.default_installation()
    pgbench = pc.pgbench_binary(installation)
    bouncer = pc.ensure_pgbouncer()
    if not args.no_snapshot:
        pc.snapshot_code(stack)
    cluster = PgCluster(installation, ssl=False, max_connections=300)
    stack.callback(cluster.stop)
    say(f"starting PostgreSQL {installation.version}")
    cluster.start()
    results["versions"] = {**pc.versions(bouncer, cluster), "pgbench": pgbench}
    proxyproc.prepare_backend(cluster)
    pc.make_pgtenant(stack, cluster).provision()
    role = pc.backend_role()
    pc.init_pgbench(pgbench, cluster, args.scale, role[0])
    return cluster, pgbench, bouncer, role


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        cluster, pgbench, bouncer, (role, role_pw) = bench_cluster(stack, args, results)
        tenant_rows(cluster, max(args.tenants, 2))
        pg_pid = cluster.pid
        assert pg_pid is not None
        txn = {"pool_mode": "transaction", "pool_size": args.pool_size}
        targets: dict[str, pc.Target] = {}
        if {"bench", "connect"} & set(args.sections):
            targets["direct"] = pc.Target("direct", cluster.port, role, role_pw)
            targets["pgtenant txn"] = pgtenant(stack, cluster, "pgtenant txn", txn)
            targets["pgtenant txn+cache"] = pgtenant(stack, cluster, "pgtenant txn+cache",
                                                     {**txn, "statement_cache": True})
            targets["pgbouncer txn"] = pc.start_pgbouncer(stack, bouncer, cluster, args.pool_size,
                                                          name="pgbouncer txn", pool_mode="transaction")
            targets["pgbouncer session"] = pc.start_pgbouncer(stack, bouncer, cluster, args.clients + 2,
                                                              name="pgbouncer session")
        results["targets"] = list(targets)
        if "bench" in args.sections:
            results["bench"] = pgbench_section(pgbench, targets, args.modes, args, pg_pid)
        if "connect" in args.sections:
            some = {k: v for k, v in targets.items() if k in ("direct", "pgtenant txn", "pgbouncer txn")}
            results["connect"] = pgbench_section(pgbench, some, ["simple"], args, pg_pid, ("-C",))
        if "scale" in args.sections:
            results["scale"] = scale_section(stack, cluster, args)
        if "noisy" in args.sections:
            results["noisy"] = noisy_section(stack, cluster, args)
    results["versions"]["pgtenant_code"] = pc.code_versions
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    pc.cli(main)
