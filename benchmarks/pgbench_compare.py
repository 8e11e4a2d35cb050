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
import hashlib
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import psycopg  # noqa: E402

from tests.support import pgcluster, proxyproc  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402
from tests.support.proxyproc import BACKEND_PASSWORD, BACKEND_ROLE, USERS, ProxyProcess, verifier  # noqa: E402

USER, DB = "ivan", "initech"  # tenant initech: database strategy = plain passthrough to database initech
PASSWORD = USERS[USER][1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "pgtenant", "pgbouncer", "pyrelay")  # pyrelay: the floor for any Python proxy
code_versions: dict[str, str] = {}  # proxy name -> pgtenant code it was started with


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc helpers


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(utime, stime) of a whole process (all threads) from /proc/<pid>/stat; (0, 0) for no process."""
    if pid is None:
        return 0.0, 0.0
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def syscalls(pid: int | None) -> dict[str, int]:
    """A process's read and write syscalls so far (/proc/<pid>/io syscr, syscw; all threads); {} for none."""
    if pid is None:
        return {}
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {"read": int(fields["syscr"]), "write": int(fields["syscw"])}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the /proc/<pid>/stat fields after the command name) of every live process."""
    for d in os.scandir("/proc"):
        if d.name.isdigit():
            try:
                text = Path(d.path, "stat").read_text()
            except OSError:
                continue
            yield int(d.name), text[text.rindex(")") + 2 :].split()


def tree_cpu(root: int) -> float:
    """CPU of a postmaster: itself, its reaped children (cutime/cstime) and its live children.

    Retried until no child was reaped during the scan, else an exiting backend is counted twice or not at all.
    """

    def children() -> dict[int, float]:
        return {pid: (int(f[11]) + int(f[12])) / CLK_TCK for pid, f in proc_stats() if int(f[1]) == root}

    for _ in range(100):
        kids = children()
        text = Path(f"/proc/{root}/stat").read_text()
        own = sum(int(x) for x in text[text.rindex(")") + 2 :].split()[11:15]) / CLK_TCK
        if set(kids) <= set(children()):
            return own + sum(kids.values())
        time.sleep(0.02)
    raise RuntimeError("postgres children keep exiting; cannot account its CPU")


def pin_tree(root: int, cpus: set[int]) -> int:
    """Pin a process, every thread of it and every live descendant to `cpus` (children forked later inherit it);
    returns how many threads were pinned. Used to give the proxies a core of their own (`--proxy-cpus`)."""
    parents: dict[int, list[int]] = {}
    for pid, f in proc_stats():
        parents.setdefault(int(f[1]), []).append(pid)
    pinned, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, ()))
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)
                    pinned += 1
    return pinned


def children_cpu() -> float:
    """CPU of our reaped children (that is: pgbench runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def host_cpu() -> tuple[int, int, int, int]:
    """(total, idle, irq+softirq, steal) jiffies of the whole machine."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(vals), vals[3] + vals[4], vals[5] + vals[6], vals[7]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_quiet(max_wait: float, limit_pct: float = 15.0) -> float:
    """Wait (up to max_wait s) until the host is nearly idle; return the last busy % seen."""
    deadline = time.monotonic() + max_wait
    while True:
        (t0, i0, *_) = host_cpu()
        time.sleep(0.5)
        (t1, i1, *_) = host_cpu()
        busy = 100 * (1 - (i1 - i0) / max(1, t1 - t0))
        if busy <= limit_pct or time.monotonic() > deadline:
            if busy > limit_pct:
                say(f"host still {busy:.0f}% busy before the run: results will be noisy (see 'other')")
            return round(busy, 1)
        time.sleep(2)


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
    tree: bool = False  # account `pid` with its children (a supervisor and its worker processes): user = all

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
        text = re.sub(r"(?m)^max_tenants = \d+$", "max_tenants = 1000", text)  # a metric label per tenant
        assert 'level = "info"' in text and 'sslmode = "disable"' in text, text
        self.config_path.write_text(text)


def start_cluster(stack: contextlib.ExitStack, installation: pgcluster.PgInstallation,
                  max_connections: int) -> PgCluster:
    """A throwaway cluster without TLS, stopped with `stack`, the test suite's backend roles prepared."""
    cluster = PgCluster(installation, ssl=False, max_connections=max_connections)
    stack.callback(cluster.stop)
    cluster.start()
    proxyproc.prepare_backend(cluster)
    return cluster


def make_pgtenant(stack: contextlib.ExitStack, cluster: PgCluster) -> BenchProxy:
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-proxy-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    proxy = BenchProxy(cluster, workdir, backend_sslmode="disable")
    stack.callback(proxy.stop)
    return proxy


def start_pgtenant(proxy: BenchProxy, name: str = "pgtenant") -> Target:
    if "snapshot" not in code_versions:
        code_versions[name] = code_version()
    proxy.start()  # runs `pgtenant provision` first when the helper supports it (idempotent)
    assert proxy.proc is not None
    target = Target(name, proxy.port, USER, PASSWORD, proxy.proc.pid, proxy.log_path)
    wait_ready(target, proxy.proc)
    return target


def backend_role() -> tuple[str, str]:
    """The role pgtenant logs in as for tenant initech; direct and PgBouncer use the same one."""
    return getattr(proxyproc, "TENANT_ROLES", {}).get(DB, (BACKEND_ROLE, BACKEND_PASSWORD))


def ensure_pgbouncer() -> str:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin"
    if not shutil.which("pgbouncer", path=path):
        if os.geteuid() != 0:
            raise SystemExit("pgbouncer is not installed (apt-get install pgbouncer), and we are not root")
        say("installing pgbouncer with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
            subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True, check=True)
    return shutil.which("pgbouncer", path=path) or "pgbouncer"


def start_pyrelay(stack: contextlib.ExitStack, cluster: PgCluster) -> Target:
    """benchmarks/pyrelay.py: a byte relay that frames and decides nothing, the floor for a Python proxy."""
    role, role_pw = backend_role()
    port = pgcluster.free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "pyrelay.py"), str(port), str(cluster.port)],
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pdeathsig())
    stack.callback(stop_process, proc)
    target = Target("pyrelay", port, role, role_pw, proc.pid)
    wait_ready(target, proc)
    return target


def start_pgbouncer(stack: contextlib.ExitStack, exe: str, cluster: PgCluster, pool_size: int,
                    role: tuple[str, str] | None = None, name: str = "pgbouncer", pool_mode: str = "session",
                    port: int = 0, extra_ini: str = "") -> Target:
    """PgBouncer in `pool_mode` in front of database DB, logging in to PostgreSQL as `role` (default: the role
    pgtenant uses for tenant initech); clients log in as USER. `port` (0: a free one) and `extra_ini` ([pgbouncer]
    lines, e.g. so_reuseport) let several processes share a port."""
    role, role_pw = role or backend_role()
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-pgbouncer-", dir="/tmp"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    port = port or pgcluster.free_port()
    # The backend role's password sits in the userlist, not in the [databases] line: with password= there,
    # pgbouncer < 1.26 reuses the client's SCRAM keys for the forced user's server login (pgbouncer#944, #1461).
    (workdir / "userlist.txt").write_text(f'"{USER}" "{verifier(PASSWORD)}"\n"{role}" "{role_pw}"\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
{DB} = host=127.0.0.1 port={cluster.port} dbname={DB} user={role}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
pool_mode = {pool_mode}
max_client_conn = 5000
default_pool_size = {pool_size}
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
{extra_ini}""")
    kw: dict[str, Any] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        try:
            pw = pwd.getpwnam(pgcluster.UNPRIVILEGED_USER)
        except KeyError:
            pw = pwd.getpwnam("nobody")
        kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        for p in (workdir, *workdir.iterdir()):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    log = open(workdir / "pgbouncer.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([exe, str(workdir / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pdeathsig(), **kw)
    log.close()
    stack.callback(stop_process, proc)  # SIGTERM = immediate shutdown for pgbouncer
    target = Target(name, port, USER, PASSWORD, proc.pid, workdir / "pgbouncer.log")
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


def pgbench_binary(installation: pgcluster.PgInstallation) -> str:
    """The installation's pgbench, else PostgreSQL 15's, else PATH's; exits when there is none."""
    pgbench = next((str(p) for p in (installation.bin("pgbench"), Path("/usr/lib/postgresql/15/bin/pgbench"))
                    if p.exists()), None) or shutil.which("pgbench")
    if not pgbench:
        raise SystemExit("pgbench not found")
    return pgbench


def pgbench_env(password: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": password, "PGSSLMODE": "disable",
            "LC_ALL": "C"}


def init_pgbench(pgbench: str, cluster: PgCluster, scale: int, owner: str) -> None:
    say(f"pgbench -i -s {scale} into database {DB}")
    subprocess.run([pgbench, "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(cluster.port),
                    "-U", cluster.superuser, DB], env=pgbench_env(cluster.password), check=True,
                   capture_output=True)
    tables = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
    cluster.execute(";".join(f'ALTER TABLE {t} OWNER TO "{owner}"' for t in tables), dbname=DB)
    cluster.execute("VACUUM ANALYZE", dbname=DB)


def run_pgbench(pgbench: str, target: Target, mode: str, args: argparse.Namespace, pg_pid: int,
                replica_pid: int | None = None) -> dict[str, Any]:
    """One pgbench run; CPU seconds of every party (pgbench, postgres, the proxy, everything else) around it
    (`replica_pid`: a second postmaster, a read replica's, counted apart as "replica"), and the proxy's read and
    write syscalls."""
    argv = [pgbench, "-n", "-S", "-M", mode, "-T", str(args.duration), "-c", str(args.clients),
            "-j", str(args.threads), *getattr(args, "pgbench_extra", ()), "-h", "127.0.0.1", "-p", str(target.port),
            "-U", target.user, DB]
    quiet = wait_quiet(args.quiet_wait)
    log0 = target.log.stat().st_size if target.log else 0
    proxy_cpu = (lambda pid: (tree_cpu(pid), 0.0)) if target.tree else cpu_seconds
    replica_cpu = (lambda: tree_cpu(replica_pid)) if replica_pid is not None else (lambda: 0.0)
    before = (host_cpu(), children_cpu(), tree_cpu(pg_pid), proxy_cpu(target.pid), replica_cpu(),
              syscalls(target.pid))
    t0 = time.monotonic()
    res = subprocess.run(argv, env=pgbench_env(target.password), capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = (host_cpu(), children_cpu(), tree_cpu(pg_pid), proxy_cpu(target.pid), replica_cpu(),
             syscalls(target.pid))
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed against {target.name} ({mode}):\n{res.stdout}\n{res.stderr}")

    def grab(pattern: str) -> float:
        m = re.search(pattern, res.stdout)
        if not m:
            raise RuntimeError(f"cannot parse pgbench output ({pattern}):\n{res.stdout}")
        return float(m.group(1))

    host = [(b - a) / CLK_TCK for a, b in zip(before[0], after[0], strict=True)]
    busy = host[0] - host[1]
    user, system = (b - a for a, b in zip(before[3], after[3], strict=True))
    cpu = {"pgbench": after[1] - before[1], "postgres": after[2] - before[2], "proxy": user + system}
    if replica_pid is not None:
        cpu["replica"] = after[4] - before[4]
    cpu["other"] = max(0.0, busy - sum(cpu.values()))  # includes irq/softirq and steal, reported below
    out: dict[str, Any] = {
        "tps": grab(r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)"),
        "latency_ms": grab(r"latency average = ([\d.]+) ms"),
        "transactions": int(grab(r"number of transactions actually processed: (\d+)")),
        "wall_s": round(wall, 2),
        "host_busy_before_pct": quiet,
        "host_cpu_busy_pct": round(100 * busy / (wall * (os.cpu_count() or 1)), 1),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "proxy_user_s": round(user, 3),
        "proxy_sys_s": round(system, 3),
        "irq_softirq_s": round(host[2], 3),
        "steal_s": round(host[3], 3),
        "other_pct_of_host": round(100 * cpu["other"] / (wall * (os.cpu_count() or 1)), 1),
    }
    if target.log:
        out["log_bytes"] = target.log.stat().st_size - log0
    if target.pid is not None and not target.tree:
        out["proxy_syscalls"] = {k: after[5][k] - before[5][k] for k in after[5]}
    return out


def summarize(runs: list[dict[str, Any]], proxied: bool) -> dict[str, Any]:
    txns = sum(r["transactions"] for r in runs)
    cpu = {k: sum(r["cpu_s"][k] for r in runs) for k in runs[0]["cpu_s"]}
    s: dict[str, Any] = {"tps": round(statistics.median(r["tps"] for r in runs), 1),
                         "latency_ms": round(statistics.fmean(r["latency_ms"] for r in runs), 3),
                         "cpu_us_per_txn": {k: round(v / txns * 1e6, 2) for k, v in cpu.items()}}
    if proxied:
        s["proxy_cpu_us_per_txn"] = s["cpu_us_per_txn"]["proxy"]
        for k in ("user", "sys"):
            s[f"proxy_{k}_us_per_txn"] = round(sum(r[f"proxy_{k}_s"] for r in runs) / txns * 1e6, 2)
        s["proxy_cpu_pct_of_core"] = round(100 * cpu["proxy"] / sum(r["wall_s"] for r in runs), 1)
    s["runs"] = runs
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
    # pgtenant closes its backend connection with the client; pgbouncer keeps them pooled (server_idle_timeout)
    deadline = time.monotonic() + (60 if target.name.startswith("pgtenant") else 0)
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


def profile(pgbench: str, target: Target, mode: str, args: argparse.Namespace, pg_pid: int,
            out: Path) -> dict[str, Any]:
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not exe:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    say(f"py-spy on pgtenant during one extra {mode} run (not counted in the results)")
    argv = [exe, "record", "--pid", str(target.pid), "--duration", str(args.duration), "--rate", "500",
            "--format", "raw", "-o", str(out), *(["--native"] if args.native else ["--nonblocking"])]
    rec = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    bench = run_pgbench(pgbench, target, mode, args, pg_pid)
    _, err = rec.communicate(timeout=args.duration + 60)
    if rec.returncode != 0 or not out.exists():
        return {"error": err.decode(errors="replace")[-2000:]}
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in out.read_text().splitlines():  # collapsed stacks: "frame;frame;... count"
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = [re.sub(r":\d+\)$", ")", f.replace(str(ROOT) + "/", "")) for f in stack.split(";")
                      if not f.startswith(("process ", "thread "))]
            own[frames[-1]] += int(count)
            incl.update(dict.fromkeys(set(frames), int(count)))
    total = sum(own.values()) or 1
    return {"mode": mode, "tps_while_profiled": bench["tps"], "samples": total, "raw_file": str(out),
            "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(25)],
            "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(30)]}


# --------------------------------------------------------------------------- report


def ratio(x: dict[str, Any], y: dict[str, Any]) -> str:
    """x's median tps over y's, or '-' when either target did not run; with several runs, the range of the
    run-by-run ratios after it (the runs are interleaved, so run i of x and of y are neighbours in time)."""
    if not x or not y:
        return "-"
    out = f"{x['tps'] / y['tps']:.2f}"
    pairs = [a["tps"] / b["tps"] for a, b in zip(x.get("runs", ()), y.get("runs", ()), strict=False)]
    if len(pairs) > 1:
        out += f" ({min(pairs):.2f} to {max(pairs):.2f})"
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| mode | direct tps | pgtenant tps | pgbouncer tps | pgtenant/pgbouncer | pgtenant/direct "
             "| latency ms direct / pgtenant / pgbouncer | proxy CPU µs/txn pgtenant / pgbouncer "
             "| proxy CPU % of a core pgtenant / pgbouncer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in results["bench"].items():
        d, p, b, _ = (r.get(t, {}) for t in TARGETS)

        def g(x: dict[str, Any], k: str) -> str:
            return str(x.get(k, "-"))

        lines.append(f"| {mode} | {g(d, 'tps')} | {g(p, 'tps')} | {g(b, 'tps')} | {ratio(p, b)} | {ratio(p, d)} "
                     f"| {g(d, 'latency_ms')} / {g(p, 'latency_ms')} / {g(b, 'latency_ms')} "
                     f"| {g(p, 'proxy_cpu_us_per_txn')} / {g(b, 'proxy_cpu_us_per_txn')} "
                     f"| {g(p, 'proxy_cpu_pct_of_core')} / {g(b, 'proxy_cpu_pct_of_core')} |")
    if any("pyrelay" in r for r in results["bench"].values()):
        lines += ["", "The floor for a Python proxy (benchmarks/pyrelay.py: uvloop, no framing, no policy):", "",
                  "| mode | pyrelay tps | pyrelay/pgbouncer | pgtenant/pyrelay | proxy CPU µs/txn pyrelay |",
                  "|---|---:|---:|---:|---:|"]
        for mode, r in results["bench"].items():
            p, b, f = r.get("pgtenant", {}), r.get("pgbouncer", {}), r.get("pyrelay", {})
            lines.append(f"| {mode} | {f.get('tps', '-')} | {ratio(f, b)} | {ratio(p, f)} "
                         f"| {f.get('proxy_cpu_us_per_txn', '-')} |")
    lines += ["", "CPU per transaction, µs (all processes; 'other' = host CPU used by anything else):", "",
              "| mode | target | pgbench | postgres | proxy (user + sys) | other | total |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for mode, r in results["bench"].items():
        for name, t in r.items():
            c = t["cpu_us_per_txn"]
            split = f" ({t['proxy_user_us_per_txn']} + {t['proxy_sys_us_per_txn']})" if "proxy_sys_us_per_txn" in t \
                else ""
            lines.append(f"| {mode} | {name} | {c['pgbench']} | {c['postgres']} | {c['proxy']}{split} | {c['other']} "
                         f"| {sum(c.values()):.1f} |")
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


def first_line(argv: list[str], cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd).stdout.strip().split("\n")[0]
    except OSError:
        return "?"


def code_version() -> str:
    """The pgtenant code a proxy process starts with (the tree may change while a long run goes on)."""
    if "snapshot" in code_versions:
        return code_versions["snapshot"]
    dirty = first_line(["git", "status", "--porcelain", "proxy"])
    return first_line(["git", "rev-parse", "--short", "HEAD"]) + (" + uncommitted changes in proxy/" if dirty else "")


def snapshot_code(stack: contextlib.ExitStack) -> None:
    """Copy proxy/ to a temp dir first on PYTHONPATH: every proxy of the run runs the same code, whatever is edited."""
    version = code_version()
    tmp = Path(tempfile.mkdtemp(prefix="pgtenant-bench-code-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    shutil.copytree(ROOT / "proxy", tmp / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tmp), os.environ["PYTHONPATH"]])
    os.chdir(tmp)  # `python -m proxy` puts the cwd first on sys.path: it must not be the repo root
    where = first_line([sys.executable, "-c", "import proxy; print(proxy.__file__)"], cwd=tmp)
    assert where.startswith(str(tmp)), where
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((tmp / "proxy").rglob("*.py")))).hexdigest()
    build = first_line([sys.executable, "-c", "import proxy, json; print(json.dumps(proxy._accel.status()))"], cwd=tmp)
    compiled = "compiled hot path" if set(json.loads(build).values()) == {"compiled"} else f"pure Python: {build}"
    code_versions["snapshot"] = f"{version} (snapshot of proxy/ at start, sha256 of *.py {digest[:12]}; {compiled})"


def versions(pgbouncer: str | None, cluster: PgCluster) -> dict[str, str]:
    out = first_line
    return {"postgres": cluster.installation.version, "pgbouncer": out([pgbouncer, "--version"]) if pgbouncer else "-",
            "python": platform.python_version(), "cpus": str(os.cpu_count()), "kernel": platform.release()}


# --------------------------------------------------------------------------- main


def pgbench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a pgbench comparison (this script's and benchmarks/replica_routing.py's)."""
    p.add_argument("--pg-bin", help="PostgreSQL bin dir (default: as the test suite finds it)")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default="simple,extended,prepared")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pgbench_arguments(p)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--quick", action="store_true", help="smoke mode: 3 s x 1 run, 200 idle clients, 30 MB stream")
    p.add_argument("--idle-clients", type=int, default=1000)
    p.add_argument("--stream-rows", type=int, default=300_000, help="rows of --stream-width bytes (default ~300 MB)")
    p.add_argument("--stream-width", type=int, default=1000)
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--profile", metavar="MODE", help="extra pgtenant run of MODE under py-spy; report top functions")
    p.add_argument("--native", action="store_true", help="py-spy --native: include C frames (uvloop, libc)")
    p.add_argument("--quiet-wait", type=float, default=90, help="max s to wait for an idle host before each run")
    p.add_argument("--max-other", type=float, default=10, help="re-run if other processes took more %% of the host")
    p.add_argument("--retries", type=int, default=2, help="re-runs allowed per measurement for --max-other")
    p.add_argument("--no-snapshot", action="store_true", help="run proxy/ from the working tree, not a copy")
    p.add_argument("--json", type=Path, help="write all results here")
    a = p.parse_args()
    if a.quick:
        a.duration, a.runs, a.idle_clients, a.stream_rows = 3, 1, 200, 30_000
    a.modes = [m for m in a.modes.split(",") if m]
    a.targets = [t for t in a.targets.split(",") if t]
    a.json = a.json.resolve() if a.json else None
    a.pg_bin = str(Path(a.pg_bin).resolve()) if a.pg_bin else None
    a.profile_out = (a.json.parent if a.json else Path.cwd()) / f"pyspy-{a.profile}.txt"
    return a


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in the background (SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as for Ctrl-C
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.idle_clients + 512  # our client sockets; the proxy (child) holds clients + backends
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft = hard = need
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    installation = pgcluster.probe_installation(args.pg_bin) if args.pg_bin else pgcluster.default_installation()
    if installation is None:
        raise SystemExit(f"--pg-bin {args.pg_bin}: no initdb/postgres there")
    pgbench = pgbench_binary(installation)
    bouncer = ensure_pgbouncer() if "pgbouncer" in args.targets else None
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "bench": {}, "memory": {}}
    with contextlib.ExitStack() as stack:
        if not args.no_snapshot:
            snapshot_code(stack)
        cluster = PgCluster(installation, ssl=False, max_connections=args.idle_clients + 200)
        stack.callback(cluster.stop)
        say(f"starting PostgreSQL {installation.version} from {installation.bindir}")
        cluster.start()
        results["versions"] = versions(bouncer, cluster)
        results["versions"]["pgbench"] = pgbench
        proxyproc.prepare_backend(cluster)
        proxy = make_pgtenant(stack, cluster)
        if hasattr(proxy, "provision"):  # creates the backend roles
            proxy.provision()
        role, role_pw = backend_role()
        init_pgbench(pgbench, cluster, args.scale, role)
        pg_pid = cluster.pid
        assert pg_pid is not None
        direct = Target("direct", cluster.port, role, role_pw)
        wait_ready(direct)
        targets = {"direct": direct}
        if "pgtenant" in args.targets:
            targets["pgtenant"] = start_pgtenant(proxy)
        if bouncer:
            targets["pgbouncer"] = start_pgbouncer(stack, bouncer, cluster, args.idle_clients + args.clients + 10)
        if "pyrelay" in args.targets:
            targets["pyrelay"] = start_pyrelay(stack, cluster)
        targets = {k: v for k, v in targets.items() if k in args.targets}
        discarded: list[dict[str, Any]] = []
        results["discarded_runs"] = discarded
        if not args.skip_bench:
            for mode in args.modes:
                runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                for i in range(args.runs):
                    for name, target in targets.items():  # interleaved, so drift hits every target alike
                        for attempt in range(args.retries + 1):
                            r = run_pgbench(pgbench, target, mode, args, pg_pid)
                            say(f"{mode:9} run {i + 1}/{args.runs} {name:9} tps={r['tps']:9.1f} "
                                f"lat={r['latency_ms']:.3f}ms cpu_s={r['cpu_s']} host busy={r['host_cpu_busy_pct']}% "
                                f"log={r.get('log_bytes', '-')}B")
                            if r["other_pct_of_host"] <= args.max_other or attempt == args.retries:
                                break
                            say(f"discarded: {r['other_pct_of_host']}% of the host went to other processes")
                            discarded.append({"mode": mode, "target": name, **r})
                        runs[name].append(r)
                results["bench"][mode] = {name: summarize(rs, name != "direct") for name, rs in runs.items()}
        if args.profile and "pgtenant" in targets:
            results["profile"] = profile(pgbench, targets["pgtenant"], args.profile, args, pg_pid, args.profile_out)
        if not args.skip_memory:
            # pyrelay opens a backend connection per client and PgBouncer keeps its own: no slots left for it
            fresh = {n: t for n, t in targets.items() if n not in ("direct", "pyrelay")}
            if "pgtenant" in fresh:  # a fresh proxy so the baseline is not inflated by the benchmark runs
                fresh["pgtenant"] = start_pgtenant(make_pgtenant(stack, cluster), "pgtenant (fresh)")
            results["memory"]["idle"] = {n: idle_rss(t, cluster, args.idle_clients) for n, t in fresh.items()}
            results["memory"]["stream"] = {}
            for n, t in fresh.items():
                results["memory"]["stream"][n] = []
                for slow in (False, True):
                    say(f"{n}: streaming {args.stream_rows * args.stream_width / 1e6:.0f} MB "
                        f"({'slow' if slow else 'fast'} reader)")
                    results["memory"]["stream"][n].append(stream_rss(t, args.stream_rows, args.stream_width, slow))
    results["versions"]["pgtenant_code"] = code_versions
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


def cli(entry: Any) -> None:
    """Exit with `entry()`'s status; Ctrl-C (or SIGTERM, see main) after the ExitStack cleaned up: 130."""
    try:
        sys.exit(entry())
    except KeyboardInterrupt:
        say("interrupted; cleaned up")
        sys.exit(130)


if __name__ == "__main__":
    cli(main)
