"""`pgtenant demo` end to end: a subprocess with --ready-file, every tenant's DSN, isolation, clean stop."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from tests.support.polling import until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 180.0  # seconds; the demo starts in well under 30 s here, this only bounds a hang
STOP_TIMEOUT = 60.0


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. a postgres -D under the demo's temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running `python -m proxy demo --port 0 --ready-file …`, its parsed ready file, and how to stop it."""
    work = tmp_path_factory.mktemp("demo")
    # The demo's temporary data goes under TMPDIR. Give it a private one that the unprivileged server user
    # can traverse (when we are root, pytest's own tmp dirs are 0700) so that we can check it is emptied.
    scratch = Path(tempfile.mkdtemp(prefix="pgtenant-demo-test-", dir="/tmp"))
    os.chmod(scratch, 0o755)
    ready = work / "ready.json"
    out, err = (work / "stdout.txt").open("wb"), (work / "stderr.txt").open("wb")
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", "0", "--ready-file", str(ready)],
        cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
    )

    def logs() -> str:
        return (f"--- stdout\n{(work / 'stdout.txt').read_text(errors='replace')}\n"
                f"--- stderr\n{(work / 'stderr.txt').read_text(errors='replace')[-6000:]}")

    try:
        deadline = started + READY_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"pgtenant demo exited with {proc.returncode} before it was ready\n{logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"pgtenant demo not ready after {READY_TIMEOUT:.0f}s\n{logs()}")
            time.sleep(0.1)  # readiness poll, bounded by the deadline
        startup = time.monotonic() - started
        doc = json.loads(ready.read_text())
        yield {"doc": doc, "proc": proc, "ready": ready, "scratch": scratch, "logs": logs, "startup": startup}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _tenants(demo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in demo["doc"]["tenants"]}


def _denied(conn: psycopg.Connection, query: str) -> str:
    """Run `query`, which must fail; return its SQLSTATE and check the session is still usable."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query).fetchall()
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return info.value.sqlstate or ""


def test_ready_file_shape(demo: dict[str, Any]) -> None:
    doc = demo["doc"]
    assert set(doc) == {"tenants", "metrics_url", "admin_dsn"}
    tenants = doc["tenants"]
    assert len(tenants) >= 4
    for t in tenants:
        assert set(t) == {"name", "strategy", "dsn", "expected"}
        assert t["dsn"].startswith("postgresql://")
        assert set(t["expected"]) >= {"customers", "products", "orders", "order_lines", "events"}
    strategies = sorted(t["strategy"] for t in tenants)
    assert strategies.count("shared") >= 2 and "schema" in strategies and "database" in strategies
    sizes = sorted(sum(t["expected"].values()) for t in tenants)
    assert sum(sizes) >= 200_000
    assert all(b >= 2 * a for a, b in itertools.pairwise(sizes)), sizes  # clearly different sizes
    print(f"demo ready in {demo['startup']:.1f} s; rows per tenant: "
          + ", ".join(f"{t['name']}={sum(t['expected'].values())}" for t in tenants))


def test_each_tenant_sees_exactly_its_rows_over_tls(demo: dict[str, Any]) -> None:
    for t in demo["doc"]["tenants"]:
        with psycopg.connect(t["dsn"], autocommit=True, connect_timeout=10) as conn:
            assert conn.info.pgconn.ssl_in_use, t["name"]
            for table, count in t["expected"].items():
                got = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                assert got == (count,), (t["name"], table)
            canaries = conn.execute("SELECT name FROM customers WHERE name LIKE 'Canary customer of %'").fetchall()
            assert canaries == [(f"Canary customer of {t['name']}",)], t["name"]


def test_shared_tenants_cannot_reach_each_other(demo: dict[str, Any]) -> None:
    tenants = _tenants(demo)
    shared = [t for t in tenants.values() if t["strategy"] == "shared"]
    for me in shared:
        with psycopg.connect(me["dsn"], autocommit=True, connect_timeout=10) as conn:
            for other in shared:
                if other is me:
                    continue
                q = "SELECT count(*) FROM customers WHERE name = %s OR email LIKE %s"
                row = conn.execute(q, (f"Canary customer of {other['name']}", f"%@{other['name']}.example")).fetchone()
                assert row == (0,)
                for table in ("customers", "orders", "order_lines", "events"):
                    q = f"SELECT count(*) FROM {table} WHERE tenant_id = %s"
                    row = conn.execute(q, (other["name"],)).fetchone()
                    assert row == (0,), (me["name"], table)
                    row = conn.execute(f"SELECT count(*) FROM public.{table} WHERE tenant_id <> %s",
                                       (me["name"],)).fetchone()
                    assert row == (0,), (me["name"], table)


def test_other_strategies_are_out_of_reach(demo: dict[str, Any]) -> None:
    tenants = _tenants(demo)
    schema_tenant = next(t for t in tenants.values() if t["strategy"] == "schema")
    schema = schema_tenant["name"]  # the demo names the tenant's schema after it
    for t in tenants.values():
        if t is schema_tenant:
            continue
        with psycopg.connect(t["dsn"], autocommit=True, connect_timeout=10) as conn:
            state = _denied(conn, f"SELECT count(*) FROM {schema}.customers")
            if t["strategy"] == "shared":  # same database: answered as for a schema that does not exist
                assert state == "42P01", (t["name"], state)
            else:  # another database: the proxy refuses, or the relation simply is not there
                assert state in ("42501", "42P01"), (t["name"], state)
    with psycopg.connect(schema_tenant["dsn"], autocommit=True, connect_timeout=10) as conn:
        assert _denied(conn, "SELECT count(*) FROM public.customers") == "42P01"  # as a missing schema
        conn.execute("SET search_path TO public")  # accepted, but public never reaches PostgreSQL
        assert conn.execute("SHOW search_path").fetchone() == ("public",)
        assert _denied(conn, "SELECT count(*) FROM customers") == "42P01"
        conn.execute("RESET search_path")
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (schema_tenant["expected"]["customers"],)


def test_metrics_and_admin_console(demo: dict[str, Any]) -> None:
    url = demo["doc"]["metrics_url"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    # the earlier tests' traffic is counted per tenant
    assert re.search(r'pgtenant_query_duration_seconds_count\{[^}]*tenant="acme"[^}]*\} [1-9]', text), text[:2000]
    with psycopg.connect(demo["doc"]["admin_dsn"], autocommit=True) as admin:
        rows = admin.execute("SHOW TENANTS").fetchall()
    assert {r[0] for r in rows} == {t["name"] for t in demo["doc"]["tenants"]}


def test_idle_clients_of_a_tenant_share_a_few_backends(demo: dict[str, Any]) -> None:
    """The demo pools in transaction mode: 60 idle clients of one tenant hold at most its pool's servers, and SHOW
    POOLS says so."""
    from proxy.demo import DEMO_POOL_SIZE

    acme = _tenants(demo)["acme"]
    conns = [psycopg.connect(acme["dsn"], autocommit=True, connect_timeout=30) for _ in range(60)]
    try:
        for conn in conns:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (acme["expected"]["customers"],)
        with psycopg.connect(demo["doc"]["admin_dsn"], autocommit=True) as admin:
            [pool] = [r for r in _admin_rows(admin, "SHOW POOLS") if r["tenant"] == "acme"]
            clients = [r for r in _admin_rows(admin, "SHOW CLIENTS") if r["tenant"] == "acme"]
        assert pool["pool_mode"] == "transaction", pool
        assert len(clients) >= 60, len(clients)
        servers = sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_pinned", "sv_used", "sv_connecting"))
        assert 1 <= servers <= DEMO_POOL_SIZE, pool
        assert int(pool["cl_active"]) <= DEMO_POOL_SIZE, pool  # clients holding a server right now: none is busy
    finally:
        for conn in conns:
            conn.close()


def _admin_rows(admin: psycopg.Connection, command: str) -> list[dict[str, Any]]:
    """An admin console command's rows as dicts (the console answers the simple protocol only)."""
    with admin.cursor() as cur:
        cur.execute(command)
        columns = [c.name for c in cur.description or ()]
        return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


def _salt_over_tls(host: str, port: int, ca: str, user: str) -> bytes:
    """The salt and iteration count the demo offers `user` in its SCRAM server-first (no proof sent)."""
    import ssl
    import struct

    from proxy.protocol import messages as m
    from tests.support.wire import read_message

    raw = socket.create_connection((host, port), timeout=10)
    raw.sendall(m.encode_ssl_request())
    assert raw.recv(1) == b"S"
    with ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(m.encode_startup_message({"user": user}))
        assert read_message(sock)[0] == b"R"
        first = b"n,,n=,r=demononce"
        sock.sendall(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
        t, body = read_message(sock)
        assert t == b"R"
        return body[4:].split(b",", 1)[1]


def test_unknown_users_salts_survive_a_reload(demo: dict[str, Any]) -> None:
    # The demo configures its own auth_mock_secret: a RELOAD (re-reading the secrets) keeps every salt.
    url = urlsplit(demo["doc"]["tenants"][0]["dsn"])
    ca = parse_qs(url.query)["sslrootcert"][0]
    users = ("nosuchuser", "Alice", "alice")
    before = [_salt_over_tls(url.hostname or "", url.port or 0, ca, u) for u in users]
    metrics = demo["doc"]["metrics_url"]

    def reloads() -> float:
        found = re.search(r'pgtenant_config_reloads_total\{outcome="ok"\} ([0-9.]+)',
                          urllib.request.urlopen(metrics).read().decode())
        return float(found.group(1)) if found else 0.0

    done = reloads()
    with psycopg.connect(demo["doc"]["admin_dsn"], autocommit=True) as admin:
        admin.execute("RELOAD")
    deadline = time.monotonic() + 60
    while reloads() <= done:
        assert time.monotonic() < deadline, "the reload did not finish"
        time.sleep(0.1)  # poll, bounded by the deadline
    assert [_salt_over_tls(url.hostname or "", url.port or 0, ca, u) for u in users] == before


def test_sighup_reloads_and_keeps_serving(demo: dict[str, Any]) -> None:
    """SIGHUP re-reads pgtenant.toml as `pgtenant run` does (it killed the demo and its PostgreSQL, leaving the
    ready file behind: issue 17); sessions open across it keep working, new ones connect."""
    proc: subprocess.Popen[bytes] = demo["proc"]
    tenant = demo["doc"]["tenants"][0]
    with psycopg.connect(tenant["dsn"], autocommit=True, connect_timeout=10) as before:
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            assert proc.poll() is None, f"the demo died on SIGHUP\n{demo['logs']()}"
            return "reloaded" in (demo["logs"]() or "")

        until(reloaded, STOP_TIMEOUT, interval=0.1, what="the demo's reloaded log line")
        assert before.execute("SELECT count(*) FROM orders").fetchone() == (tenant["expected"]["orders"],)
    assert demo["ready"].exists() and json.loads(demo["ready"].read_text()) == demo["doc"]
    with psycopg.connect(tenant["dsn"], autocommit=True, connect_timeout=10) as after:
        assert after.execute("SELECT count(*) FROM orders").fetchone() == (tenant["expected"]["orders"],)


def test_sigterm_stops_everything_and_removes_temporary_data(demo: dict[str, Any]) -> None:
    proc: subprocess.Popen[bytes] = demo["proc"]
    dsn = demo["doc"]["tenants"][0]["dsn"]
    parts = urlsplit(dsn)
    assert proc.poll() is None, demo["logs"]()
    data_dirs = list(demo["scratch"].iterdir())
    assert data_dirs, "the demo's temporary directory should be under TMPDIR while it runs"
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgtenant demo did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM\n{demo['logs']()}")
    assert code == 0, demo["logs"]()
    assert list(demo["scratch"].iterdir()) == [], "temporary data left behind"
    assert not demo["ready"].exists()
    assert _processes_mentioning(str(demo["scratch"])) == []  # the embedded postgres is gone too
    with pytest.raises(OSError), socket.create_connection((parts.hostname, parts.port), timeout=5):
        pass
