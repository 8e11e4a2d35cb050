#!/usr/bin/env python3
"""pgbench through pgtenant vs PgBouncer vs direct Postgres, plus pgtenant memory with idle clients / big results.

Run from the repo root:  .venv/bin/python benchmarks/pgbench_compare.py [--quick] [--json out.json]
See benchmarks/README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import psycopg  # noqa: E402

from tests.support.pgcluster import (  # noqa: E402
    UNPRIVILEGED_USER,
    PgCluster,
    default_installation,
    free_port,
    probe_installation,
)
from tests.support.proxyproc import (  # noqa: E402
    BACKEND_PASSWORD,
    BACKEND_ROLE,
    USERS,
    ProxyProcess,
    prepare_backend,
    verifier,
)

USER, DB = "ivan", "initech"  # tenant initech: database strategy = plain passthrough to database initech
PASSWORD = USERS[USER][1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "pgtenant", "pgbouncer")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc helpers


def cpu_seconds(pid: int) -> float:
    """utime+stime of a whole process (all threads) from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def host_cpu() -> tuple[int, int]:
    """(total, idle) jiffies of the whole machine."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(vals), vals[3] + vals[4]


def pdeathsig() -> Any:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: die with us even on SIGKILL


# --------------------------------------------------------------------------- the three targets


@dataclass
class Target:
    name: str
    port: int
    user: str
    password: str
    pid: int | None = None  # process whose CPU/RSS we account (the proxy), None for direct
    log: Path | None = None

    def dsn(self, **kw: Any) -> str:
        kv = {"host": "127.0.0.1", "port": self.port, "user": self.user, "password": self.password,
              "dbname": DB, "sslmode": "disable", "connect_timeout": 15, **kw}
        return " ".join(f"{k}='{v}'" for k, v in kv.items())


class BenchProxy(ProxyProcess):
    """ProxyProcess with logging at "info" (the test helper uses "debug") and backend TLS off."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = re.sub(r'(?m)^level = "\w+"$', 'level = "info"', text)
        assert 'level = "info"' in text and 'sslmode = "disable"' in text, text
        self.config_path.write_text(text)


def start_pgtenant(stack: contextlib.ExitStack, cluster: PgCluster, name: str = "pgtenant") -> Target:
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-proxy-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    proxy = BenchProxy(cluster, workdir, backend_sslmode="disable")
    stack.callback(proxy.stop)
    proxy.start()
    assert proxy.proc is not None
    return Target(name, proxy.port, USER, PASSWORD, proxy.proc.pid, proxy.log_path)


def ensure_pgbouncer() -> str:
    exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if exe:
        return exe
    if os.geteuid() != 0:
        raise SystemExit("pgbouncer not installed and not root: apt-get install pgbouncer")
    say("installing pgbouncer with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True, check=True)
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def start_pgbouncer(stack: contextlib.ExitStack, exe: str, cluster: PgCluster, pool_size: int) -> Target:
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-pgbouncer-", dir="/tmp"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    port = free_port()
    # The backend role's password sits in the userlist, not in the [databases] line: with password= there,
    # pgbouncer < 1.26 reuses the client's SCRAM keys for the forced user's server login (pgbouncer#944, #1461).
    (workdir / "userlist.txt").write_text(f'"{USER}" "{verifier(PASSWORD)}"\n"{BACKEND_ROLE}" "{BACKEND_PASSWORD}"\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
{DB} = host=127.0.0.1 port={cluster.port} dbname={DB} user={BACKEND_ROLE}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
pool_mode = session
max_client_conn = 5000
default_pool_size = {pool_size}
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
""")
    kw: dict[str, Any] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        try:
            pw = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            pw = pwd.getpwnam("nobody")
        kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        for p in (workdir, *workdir.iterdir()):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    log = open(workdir / "pgbouncer.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([exe, str(workdir / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pdeathsig(), **kw)
    log.close()

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: immediate shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    target = Target("pgbouncer", port, USER, PASSWORD, proc.pid, workdir / "pgbouncer.log")
    wait_ready(target, proc)
    return target


def wait_ready(target: Target, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(target.dsn()) as conn:
                n = conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()
                say(f"{target.name} on port {target.port} ok (pgbench_branches: {n[0] if n else '?'} rows)")
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                log = target.log.read_text(errors="replace") if target.log and target.log.exists() else ""
                raise RuntimeError(f"{target.name} not usable: {exc}\n{log[-3000:]}") from exc
            time.sleep(0.1)


# --------------------------------------------------------------------------- pgbench


def pgbench_env(password: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": password, "PGSSLMODE": "disable",
            "LC_ALL": "C"}


def init_pgbench(pgbench: str, cluster: PgCluster, scale: int) -> None:
    say(f"pgbench -i -s {scale} into database {DB}")
    subprocess.run([pgbench, "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(cluster.port),
                    "-U", cluster.superuser, DB], env=pgbench_env(cluster.password), check=True,
                   capture_output=True)
    tables = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
    cluster.execute(";".join(f"ALTER TABLE {t} OWNER TO {BACKEND_ROLE}" for t in tables), dbname=DB)
    cluster.execute("VACUUM ANALYZE", dbname=DB)


def run_pgbench(pgbench: str, target: Target, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [pgbench, "-n", "-S", "-M", mode, "-T", str(args.duration), "-c", str(args.clients),
            "-j", str(args.threads), "-h", "127.0.0.1", "-p", str(target.port), "-U", target.user, DB]
    cpu0 = cpu_seconds(target.pid) if target.pid else None
    log0 = target.log.stat().st_size if target.log else 0
    h0, t0 = host_cpu(), time.monotonic()
    res = subprocess.run(argv, env=pgbench_env(target.password), capture_output=True, text=True)
    wall, h1 = time.monotonic() - t0, host_cpu()
    cpu1 = cpu_seconds(target.pid) if target.pid else None
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed against {target.name} ({mode}):\n{res.stdout}\n{res.stderr}")

    def grab(pattern: str) -> float:
        m = re.search(pattern, res.stdout)
        if not m:
            raise RuntimeError(f"cannot parse pgbench output ({pattern}):\n{res.stdout}")
        return float(m.group(1))

    txns = int(grab(r"number of transactions actually processed: (\d+)"))
    out: dict[str, Any] = {
        "tps": grab(r"tps = ([\d.]+) \(without initial connection time\)"),
        "latency_ms": grab(r"latency average = ([\d.]+) ms"),
        "transactions": txns,
        "host_cpu_busy_pct": round(100 * (1 - (h1[1] - h0[1]) / max(1, h1[0] - h0[0])), 1),
    }
    if cpu0 is not None and cpu1 is not None:
        out["proxy_cpu_s"] = round(cpu1 - cpu0, 3)
        out["proxy_cpu_us_per_txn"] = round((cpu1 - cpu0) / txns * 1e6, 2)
        out["proxy_cpu_pct_of_core"] = round(100 * (cpu1 - cpu0) / wall, 1)
    if target.log:
        out["log_bytes"] = target.log.stat().st_size - log0
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {"tps": round(statistics.median(r["tps"] for r in runs), 1),
                         "latency_ms": round(statistics.fmean(r["latency_ms"] for r in runs), 3), "runs": runs}
    if "proxy_cpu_s" in runs[0]:
        s["proxy_cpu_us_per_txn"] = round(sum(r["proxy_cpu_s"] for r in runs) / sum(r["transactions"] for r in runs)
                                          * 1e6, 2)
        s["proxy_cpu_pct_of_core"] = round(statistics.fmean(r["proxy_cpu_pct_of_core"] for r in runs), 1)
    return s


# --------------------------------------------------------------------------- memory


async def _open_idle(target: Target, n: int) -> list[Any]:
    import asyncpg

    sem = asyncio.Semaphore(32)

    async def one() -> Any:
        async with sem:
            return await asyncpg.connect(host="127.0.0.1", port=target.port, user=target.user,
                                         password=target.password, database=DB, ssl=False, timeout=60)

    got = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    conns = [c for c in got if not isinstance(c, BaseException)]
    errs = [c for c in got if isinstance(c, BaseException)]
    if errs:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        raise RuntimeError(f"{len(errs)}/{n} connections to {target.name} failed, first: {errs[0]!r}")
    await asyncio.gather(*(c.fetchval("SELECT 1") for c in conns))  # every session fully relayed
    return conns


def idle_rss(target: Target, cluster: PgCluster, n: int) -> dict[str, Any]:
    assert target.pid
    say(f"{target.name}: opening {n} idle client connections")
    before = rss_kb(target.pid)
    t0 = time.monotonic()

    async def scenario() -> tuple[int, float]:
        conns = await _open_idle(target, n)
        elapsed = time.monotonic() - t0
        await asyncio.sleep(1)
        after = rss_kb(target.pid)  # type: ignore[arg-type]
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        return after, elapsed

    after, elapsed = asyncio.run(scenario())
    deadline = time.monotonic() + 60  # let the backends exit before the next test
    while time.monotonic() < deadline and cluster.execute("SELECT count(*) FROM pg_stat_activity "
                                                          "WHERE backend_type = 'client backend'")[0][0] > 20:
        time.sleep(0.2)
    time.sleep(1)
    closed = rss_kb(target.pid)
    return {"clients": n, "rss_before_kb": before, "rss_with_clients_kb": after, "rss_after_close_kb": closed,
            "per_connection_kb": round((after - before) / n, 1), "connect_all_s": round(elapsed, 2)}


def stream_rss(target: Target, rows: int, width: int, slow: bool) -> dict[str, Any]:
    assert target.pid
    pid = target.pid
    base = rss_kb(pid)
    samples: list[int] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                samples.append(rss_kb(pid))
            stop.wait(0.05)

    th = threading.Thread(target=sampler, daemon=True)
    nbytes = 0
    t0 = time.monotonic()
    th.start()
    try:
        with psycopg.connect(target.dsn(), autocommit=True) as conn, conn.cursor() as cur, cur.copy(
            f"COPY (SELECT repeat('x', {width}) FROM generate_series(1, {rows})) TO STDOUT"
        ) as copy:
            mark = 0
            for chunk in copy:
                nbytes += len(chunk)
                if slow and nbytes - mark >= 256 * 1024:  # ~50 MB/s reader: backpressure must engage
                    mark = nbytes
                    time.sleep(0.005)
    finally:
        stop.set()
        th.join()
    elapsed = time.monotonic() - t0
    peak = max(samples, default=base)
    return {"reader": "slow" if slow else "fast", "mb_streamed": round(nbytes / 1e6, 1), "seconds": round(elapsed, 2),
            "rss_baseline_kb": base, "rss_peak_kb": peak, "peak_growth_mb": round((peak - base) / 1024, 1),
            "samples": len(samples)}


# --------------------------------------------------------------------------- profiling (optional)


def profile(pgbench: str, target: Target, mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not exe:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    say(f"py-spy on pgtenant during one extra {mode} run (not counted in the results)")
    rec = subprocess.Popen([exe, "record", "--pid", str(target.pid), "--duration", str(args.duration), "--rate", "200",
                            "--format", "raw", "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    time.sleep(0.5)
    bench = run_pgbench(pgbench, target, mode, args)
    _, err = rec.communicate(timeout=args.duration + 60)
    if rec.returncode != 0 or not out.exists():
        return {"error": err.decode(errors="replace")[-2000:]}
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f.replace(str(ROOT) + "/", "")) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        total += int(count)
        if frames:
            own[frames[-1]] += int(count)
        for f in set(frames):
            incl[f] += int(count)
    return {"mode": mode, "tps_while_profiled": bench["tps"], "samples": total, "raw_file": str(out),
            "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(20)],
            "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(25)]}


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    lines = ["| mode | direct tps | pgtenant tps | pgbouncer tps | pgtenant/pgbouncer | pgtenant/direct "
             "| latency ms direct / pgtenant / pgbouncer | proxy CPU µs/txn pgtenant / pgbouncer "
             "| proxy CPU % of a core pgtenant / pgbouncer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in results["bench"].items():
        d, p, b = (r.get(t, {}) for t in TARGETS)

        def ratio(x: dict[str, Any], y: dict[str, Any]) -> str:
            return f"{x['tps'] / y['tps']:.2f}" if x and y else "-"

        def g(x: dict[str, Any], k: str) -> str:
            return str(x.get(k, "-"))

        lines.append(f"| {mode} | {g(d, 'tps')} | {g(p, 'tps')} | {g(b, 'tps')} | {ratio(p, b)} | {ratio(p, d)} "
                     f"| {g(d, 'latency_ms')} / {g(p, 'latency_ms')} / {g(b, 'latency_ms')} "
                     f"| {g(p, 'proxy_cpu_us_per_txn')} / {g(b, 'proxy_cpu_us_per_txn')} "
                     f"| {g(p, 'proxy_cpu_pct_of_core')} / {g(b, 'proxy_cpu_pct_of_core')} |")
    mem = results.get("memory", {})
    if mem.get("idle"):
        lines += ["", "| idle clients | proxy | RSS before MB | RSS with clients MB | per connection KB "
                  "| RSS after close MB | connect all s |", "|---:|---|---:|---:|---:|---:|---:|"]
        for name, r in mem["idle"].items():
            lines.append(f"| {r['clients']} | {name} | {r['rss_before_kb'] / 1024:.1f} "
                         f"| {r['rss_with_clients_kb'] / 1024:.1f} | {r['per_connection_kb']} "
                         f"| {r['rss_after_close_kb'] / 1024:.1f} | {r['connect_all_s']} |")
    if mem.get("stream"):
        lines += ["", "| streaming | proxy | MB streamed | seconds | RSS baseline MB | peak growth MB |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, rs in mem["stream"].items():
            for r in rs:
                lines.append(f"| COPY TO STDOUT, {r['reader']} reader | {name} | {r['mb_streamed']} | {r['seconds']} "
                             f"| {r['rss_baseline_kb'] / 1024:.1f} | {r['peak_growth_mb']} |")
    return "\n".join(lines)


def versions(pgbouncer: str | None, cluster: PgCluster) -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip().split("\n")[0]
        except OSError:
            return "?"

    return {"postgres": cluster.installation.version, "pgbouncer": out([pgbouncer]) if pgbouncer else "-",
            "python": platform.python_version(), "pgtenant_commit": out(["git", "rev-parse", "--short", "HEAD"]),
            "cpus": str(os.cpu_count()), "kernel": platform.release()}


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-bin", help="PostgreSQL bin dir (default: as the test suite finds it)")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default="simple,extended,prepared")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--quick", action="store_true", help="smoke mode: 3 s x 1 run, 200 idle clients, 30 MB stream")
    p.add_argument("--idle-clients", type=int, default=1000)
    p.add_argument("--stream-rows", type=int, default=300_000, help="rows of --stream-width bytes (default ~300 MB)")
    p.add_argument("--stream-width", type=int, default=1000)
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--profile", metavar="MODE", help="extra pgtenant run of MODE under py-spy; report top functions")
    p.add_argument("--json", type=Path, help="write all results here")
    a = p.parse_args()
    if a.quick:
        a.duration, a.runs, a.idle_clients, a.stream_rows = 3, 1, 200, 30_000
    a.modes = [m for m in a.modes.split(",") if m]
    a.targets = [t for t in a.targets.split(",") if t]
    if a.json:
        a.json = a.json.resolve()
    return a


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as for Ctrl-C
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.idle_clients + 512  # our client sockets; the proxy (child) holds clients + backends
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft = hard = need
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    installation = probe_installation(args.pg_bin) if args.pg_bin else default_installation()
    if installation is None:
        raise SystemExit(f"--pg-bin {args.pg_bin}: no initdb/postgres there")
    pgbench = next((str(p) for p in (installation.bin("pgbench"), Path("/usr/lib/postgresql/15/bin/pgbench"))
                    if p.exists()), None) or shutil.which("pgbench")
    if not pgbench:
        raise SystemExit("pgbench not found")
    bouncer = ensure_pgbouncer() if "pgbouncer" in args.targets else None
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "bench": {}, "memory": {}}
    with contextlib.ExitStack() as stack:
        cluster = PgCluster(installation, ssl=False, max_connections=args.idle_clients + 200)
        stack.callback(cluster.stop)
        say(f"starting PostgreSQL {installation.version} from {installation.bindir}")
        cluster.start()
        results["versions"] = versions(bouncer, cluster)
        results["versions"]["pgbench"] = pgbench
        prepare_backend(cluster)
        init_pgbench(pgbench, cluster, args.scale)
        direct = Target("direct", cluster.port, BACKEND_ROLE, BACKEND_PASSWORD)
        wait_ready(direct)
        targets = {"direct": direct}
        if "pgtenant" in args.targets:
            targets["pgtenant"] = start_pgtenant(stack, cluster)
            wait_ready(targets["pgtenant"])
        if bouncer:
            targets["pgbouncer"] = start_pgbouncer(stack, bouncer, cluster, args.idle_clients + args.clients + 10)
        targets = {k: v for k, v in targets.items() if k in args.targets}
        if not args.skip_bench:
            for mode in args.modes:
                runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                for i in range(args.runs):
                    for name, target in targets.items():  # interleaved, so drift hits every target alike
                        r = run_pgbench(pgbench, target, mode, args)
                        runs[name].append(r)
                        say(f"{mode:9} run {i + 1}/{args.runs} {name:9} tps={r['tps']:9.1f} "
                            f"lat={r['latency_ms']:.3f}ms cpu/txn={r.get('proxy_cpu_us_per_txn', '-')}µs "
                            f"host busy={r['host_cpu_busy_pct']}% log={r.get('log_bytes', '-')}B")
                results["bench"][mode] = {name: summarize(rs) for name, rs in runs.items()}
        if args.profile and "pgtenant" in targets:
            raw = (args.json.parent if args.json else Path.cwd()) / f"pyspy-{args.profile}.txt"
            results["profile"] = profile(pgbench, targets["pgtenant"], args.profile, args, raw)
        if not args.skip_memory:
            fresh = {n: t for n, t in targets.items() if n != "direct"}
            if "pgtenant" in fresh:  # a fresh proxy so the baseline is not inflated by the benchmark runs
                fresh["pgtenant"] = start_pgtenant(stack, cluster, "pgtenant (fresh)")
                wait_ready(fresh["pgtenant"])
            results["memory"]["idle"] = {n: idle_rss(t, cluster, args.idle_clients) for n, t in fresh.items()}
            results["memory"]["stream"] = {}
            for n, t in fresh.items():
                results["memory"]["stream"][n] = []
                for slow in (False, True):
                    say(f"{n}: streaming {args.stream_rows * args.stream_width / 1e6:.0f} MB "
                        f"({'slow' if slow else 'fast'} reader)")
                    results["memory"]["stream"][n].append(stream_rss(t, args.stream_rows, args.stream_width, slow))
    report = markdown(results)
    print(report)
    if "profile" in results and "self" in results["profile"]:
        print("\npy-spy, pgtenant, self time (% of on-CPU samples):")
        for f, pct in results["profile"]["self"]:
            print(f"  {pct:5.1f}%  {f}")
        print("inclusive:")
        for f, pct in results["profile"]["inclusive"]:
            print(f"  {pct:5.1f}%  {f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted; cleaned up")
        sys.exit(130)
