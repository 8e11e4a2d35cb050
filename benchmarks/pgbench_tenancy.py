#!/usr/bin/env python3
"""pgbench select-only through pgtenant's shared strategy (rewrite + RLS) vs passthrough vs PgBouncer, and the
cost of metrics and of the audit log on the hot path — side by side in one run.

Run from the repo root:  .venv/bin/python benchmarks/pgbench_tenancy.py [--duration 10] [--runs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pgbench_compare as pc  # noqa: E402
from tests.support import pgcluster, proxyproc  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402

SHARED_USER, SHARED_PASSWORD, SHARED_ROLE, SHARED_ROLE_PW = "ben", "ben-pw", "pgt_bench", "bench-role-pw"
# "PgBouncer + hand-written RLS", the set-up pgtenant replaces: PgBouncer logs in as a role for which the same
# forced RLS policy applies, the tenant and search_path fixed by role settings (PgBouncer cannot set them).
RLS_ROLE, RLS_ROLE_PW = "pgt_bench_rls", "bench-rls-pw"


class TweakedProxy(pc.BenchProxy):
    """A benchmark proxy whose generated config is edited by `tweak`."""

    tweak: Callable[[str], str] = staticmethod(lambda text: text)

    def write_config(self) -> None:
        super().write_config()
        self.config_path.write_text(self.tweak(self.config_path.read_text()))


def make_proxy(stack: contextlib.ExitStack, cluster: PgCluster, tweak: Callable[[str], str] | None = None,
               audit_file: Path | None = None) -> TweakedProxy:
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-tenancy-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    proxy = TweakedProxy(
        cluster, workdir, backend_sslmode="disable",
        extra_tenants={"bench": {"strategy": "shared", "database": pc.DB, "tenant_id": "t1",
                                 "tenant_schemas": ["bench"], "backend_user": SHARED_ROLE}},
        extra_users={SHARED_USER: ("bench", SHARED_PASSWORD)},
        extra_roles={SHARED_ROLE: SHARED_ROLE_PW},
        audit={"enabled": True, "file": str(audit_file)} if audit_file else {},
    )
    if tweak is not None:
        proxy.tweak = staticmethod(tweak)  # type: ignore[assignment]
    stack.callback(proxy.stop)
    return proxy


def metrics_off(text: str) -> str:
    return re.sub(r"(?m)^\[metrics\]$", "[metrics]\nenabled = false", text)


def prepare_shared_tables(cluster: PgCluster) -> None:
    """bench.pgbench_accounts with a tenant column (half the rows each for t1 and t2) and forced RLS."""
    cluster.execute(
        """
        DROP TABLE IF EXISTS bench.pgbench_accounts, bench.pgbench_branches;
        CREATE TABLE bench.pgbench_accounts AS
          SELECT a.*, CASE WHEN aid % 2 = 0 THEN 't1' ELSE 't2' END AS tenant_id FROM public.pgbench_accounts a;
        ALTER TABLE bench.pgbench_accounts ADD PRIMARY KEY (aid);
        CREATE TABLE bench.pgbench_branches AS SELECT * FROM public.pgbench_branches;
        ANALYZE bench.pgbench_accounts;
        ANALYZE bench.pgbench_branches;
        """,
        dbname=pc.DB,
    )


def prepare_rls_role(cluster: PgCluster) -> None:
    """The role PgBouncer + RLS logs in as: not the owner, NOBYPASSRLS, tenant t1 and search_path bench by role
    settings, so pgbench -S reads bench.pgbench_accounts under a policy with the very predicate pgtenant's shared role
    has (`pgtenant provision` makes its own policy TO its backend roles only)."""
    cluster.execute(
        f"""
        DROP ROLE IF EXISTS {RLS_ROLE};
        CREATE ROLE {RLS_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{RLS_ROLE_PW}';
        GRANT CONNECT ON DATABASE {pc.DB} TO {RLS_ROLE};
        ALTER ROLE {RLS_ROLE} SET search_path = bench;
        ALTER ROLE {RLS_ROLE} SET pgtenant.tenant_id = 't1';
        """,
    )
    cluster.execute(f"GRANT USAGE ON SCHEMA bench TO {RLS_ROLE}; "
                    f"GRANT SELECT ON bench.pgbench_accounts, bench.pgbench_branches TO {RLS_ROLE}; "
                    f"CREATE POLICY bench_rls ON bench.pgbench_accounts TO {RLS_ROLE} "
                    "USING (tenant_id::text = pg_catalog.current_setting('pgtenant.tenant_id', true))", dbname=pc.DB)


def check_sees_one_tenant(target: pc.Target, expected: int) -> None:
    """The target reads pgbench_accounts as tenant t1 only: the rows pgbench -S can hit, nothing else."""
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        seen = conn.execute("SELECT count(*), count(DISTINCT tenant_id), min(tenant_id) FROM pgbench_accounts")
        row = seen.fetchone()
    if row != (expected, 1, "t1"):
        raise SystemExit(f"{target.name} does not see exactly tenant t1's {expected} rows: {row}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--quiet-wait", type=float, default=60)
    ap.add_argument("--only", default="", help="comma-separated target names to run (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    installation = pgcluster.default_installation()
    pgbench = pc.pgbench_binary(installation)
    bouncer = pc.ensure_pgbouncer()
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "bench": {}}
    with contextlib.ExitStack() as stack:
        cluster = PgCluster(installation, ssl=False, max_connections=300)
        stack.callback(cluster.stop)
        cluster.start()
        proxyproc.prepare_backend(cluster)
        cluster.execute("CREATE SCHEMA IF NOT EXISTS bench", dbname=pc.DB)
        base = make_proxy(stack, cluster)
        base.provision()  # roles first, so pgbench's tables can be handed to them
        role, _ = pc.backend_role()
        pc.init_pgbench(pgbench, cluster, args.scale, role)
        prepare_shared_tables(cluster)
        base.provision()  # forced RLS + policy on bench.pgbench_accounts, grants for the shared role
        cluster.execute(f"GRANT USAGE ON SCHEMA bench TO {SHARED_ROLE}; "
                        f"GRANT SELECT ON bench.pgbench_branches TO {SHARED_ROLE}", dbname=pc.DB)
        prepare_rls_role(cluster)
        pg_pid = cluster.pid
        assert pg_pid is not None
        audit_file = Path(tempfile.mkdtemp(prefix="pgtenant-bench-audit-")) / "audit.log"
        stack.callback(shutil.rmtree, audit_file.parent, ignore_errors=True)

        def start(proxy: TweakedProxy, name: str, user: str, password: str) -> pc.Target:
            proxy.start(provision=False)
            assert proxy.proc is not None
            target = pc.Target(name, proxy.port, user, password, proxy.proc.pid, proxy.log_path)
            pc.wait_ready(target, proxy.proc)
            return target

        pc_user, pc_pw = pc.USER, pc.PASSWORD
        targets = {
            "pgbouncer": pc.start_pgbouncer(stack, bouncer, cluster, args.clients + 10),
            "pgbouncer + RLS": pc.start_pgbouncer(stack, bouncer, cluster, args.clients + 10,
                                                  role=(RLS_ROLE, RLS_ROLE_PW), name="pgbouncer + RLS"),
            "pgtenant passthrough": start(base, "pgtenant passthrough", pc_user, pc_pw),
            "pgtenant metrics off": start(make_proxy(stack, cluster, metrics_off), "pgtenant metrics off",
                                          pc_user, pc_pw),
            "pgtenant audit on": start(make_proxy(stack, cluster, audit_file=audit_file), "pgtenant audit on",
                                       pc_user, pc_pw),
            "pgtenant shared": start(make_proxy(stack, cluster), "pgtenant shared", SHARED_USER, SHARED_PASSWORD),
        }
        t1_rows = cluster.execute("SELECT count(*) FROM bench.pgbench_accounts WHERE tenant_id = 't1'",
                                  dbname=pc.DB)[0][0]
        for name in ("pgbouncer + RLS", "pgtenant shared"):
            check_sees_one_tenant(targets[name], t1_rows)
        if args.only:
            wanted = {n.strip() for n in args.only.split(",")}
            targets = {n: t for n, t in targets.items() if n in wanted}
        ns = argparse.Namespace(duration=args.duration, clients=args.clients, threads=args.threads,
                                quiet_wait=args.quiet_wait)
        for mode in modes:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for _ in range(args.runs):
                for name, target in targets.items():
                    r = pc.run_pgbench(pgbench, target, mode, ns, pg_pid)
                    pc.say(f"{mode:9} {name:22} tps={r['tps']:9.1f} proxy_cpu_s={r['cpu_s']['proxy']}")
                    runs[name].append(r)
            results["bench"][mode] = {n: pc.summarize(rs, True) for n, rs in runs.items()}
        results["audit_lines"] = sum(1 for _ in audit_file.open()) if audit_file.exists() else 0
    names = list(next(iter(results["bench"].values()))) if results["bench"] else []
    print("\n| mode | " + " | ".join(names) + " | shared/(pgbouncer + RLS) | shared/pgbouncer | "
          "metrics cost | audit cost |")
    print("|---|" + "---:|" * (len(names) + 4))
    def cost(tps: dict[str, float], a: str, b: str) -> str:
        return f"{100 * (1 - tps[a] / tps[b]):.1f} %" if a in tps and b in tps else "-"

    for mode, by in results["bench"].items():
        tps = {n: by[n]["tps"] for n in by}
        print(f"| {mode} | " + " | ".join(f"{tps[n]:.0f} ({by[n]['proxy_cpu_us_per_txn']} µs)" for n in by)
              + f" | {pc.ratio(by.get('pgtenant shared', {}), by.get('pgbouncer + RLS', {}))}"
              + f" | {pc.ratio(by.get('pgtenant shared', {}), by.get('pgbouncer', {}))}"
              + f" | {cost(tps, 'pgtenant passthrough', 'pgtenant metrics off')}"
              + f" | {cost(tps, 'pgtenant audit on', 'pgtenant passthrough')} |")
    print("\n(tps, with proxy CPU µs per transaction in parentheses; ratios of the median tps, with the range "
          "of the run-by-run ratios)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
