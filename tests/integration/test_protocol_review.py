"""Protocol-level review of the proxy: smuggling, the deny marker, request tracking, revocation, limits.

Tests of behaviour that is already safe simply pass. Tests that record a real problem assert the SAFE
behaviour and are marked ``xfail(strict=True)``: they fail today and will flag (XPASS) once fixed.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend
from tests.support.wire import (
    SYNC,
    bind,
    connect,
    errors_in,
    exchange,
    execute,
    login,
    parse,
    read_message,
    read_until,
)

# --- a tiny raw client ------------------------------------------------------------------------


def query(sql: str) -> bytes:
    return m.Query(sql).encode()


def copy_data(data: bytes) -> bytes:
    return m.frame(b"d", data)


COPY_DONE = m.frame(b"c", b"")


def rows_in(msgs: list[tuple[bytes, bytes]]) -> list[list[str | None]]:
    out = []
    for t, body in msgs:
        if t != b"D":
            continue
        (n,) = struct.unpack_from("!h", body)
        pos, row = 2, []
        for _ in range(n):
            (length,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(body[pos : pos + length].decode())
                pos += length
        out.append(row)
    return out


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> tuple[bool, bytes]:
    """(True, bytes received) if the peer closes within `timeout`; (False, bytes) if it stays open."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, data
            data += chunk
    except TimeoutError:
        return False, data
    except ConnectionResetError:
        return True, data


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    workdir = tmp_path_factory.mktemp("review-audit")
    p = ProxyProcess(pg, workdir, audit={"enabled": True, "file": str(workdir / "audit.log"), "redact": False})
    p.start()
    yield p
    p.stop()


def audit_lines(p: ProxyProcess) -> list[dict]:
    path = Path(p.config_path).parent / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("body", [b"Sfid_s", b"Sfid_s\x00x", b"Sfid_s\x00\x00"], ids=["unterminated", "trailing",
                                                                                   "two_nuls"])
def test_a_malformed_close_leaves_the_statement(proxy: ProxyProcess, body: bytes) -> None:
    """A Close of statement fid_s that PostgreSQL cannot read is refused (08P01) and closes nothing: a Bind of fid_s
    then runs it (before, in transaction pooling: a CloseComplete, and the statement forgotten, 26000)."""
    sock = connect(proxy, "ivan")
    try:
        assert errors_in(exchange(sock, parse("SELECT 41 + 1", "fid_s") + SYNC)) == []
        closed = [t for t, _ in exchange(sock, m.frame(b"C", body) + SYNC)]
        ran = exchange(sock, bind("fid_s") + execute() + SYNC)
    finally:
        sock.close()
    assert (closed, [f["C"] for f in errors_in(ran)], rows_in(ran)) == ([b"E", b"Z"], [], [["42"]]), ran


# =============================================================================================
# Smuggling: what the proxy forwards unframed must not be read as messages by the backend
# =============================================================================================


def test_oversized_sync_carrying_a_query_is_not_executed(proxy: ProxyProcess, pg: PgCluster) -> None:
    """A Sync is small on the backend (PQ_SMALL_MESSAGE_LIMIT = 10000); the proxy passes a 20 kB one.
    PostgreSQL must drop the connection rather than read the smuggled body as new messages."""
    marker = 910001
    smuggled = query(f"INSERT INTO orders VALUES ({marker}, 1)")
    body = smuggled + b"\x00" * (20000 - len(smuggled))
    sock = connect(proxy, "ivan")
    sock.sendall(m.frame(b"S", body) + query("SELECT 1"))
    closed, _ = closed_by_peer(sock)
    sock.close()
    assert closed
    assert pg.execute(f"SELECT count(*) FROM orders WHERE id = {marker}", dbname="initech") == [(0,)]


@pytest.mark.parametrize("kind", [b"c", b"f", b"H", b"S"])
def test_oversized_copy_control_message_in_copy_in_is_not_smuggled(
    proxy: ProxyProcess, pg: PgCluster, kind: bytes
) -> None:
    """In COPY IN, PostgreSQL reads CopyDone/CopyFail/Flush/Sync with a 10000-byte limit inside
    CopyGetData (an ERROR, not the main loop's FATAL). The proxy forwards a 20 kB one whose body is a
    whole Query: the backend must not resynchronise inside it and run the smuggled statement."""
    marker = 920000 + kind[0]
    smuggled = query(f"INSERT INTO orders VALUES ({marker}, 1)")
    body = b"\x00" + smuggled  # CopyFail's message is a C string: end it before the smuggled bytes
    body += b"\x00" * (20000 - len(body))
    sock = connect(proxy, "ivan")
    sock.sendall(query("CREATE TEMP TABLE IF NOT EXISTS t_in (x int)"))
    read_until(sock)
    sock.sendall(query("COPY t_in FROM STDIN"))
    t, _ = read_message(sock)
    assert t == b"G"
    sock.sendall(m.frame(kind, body))
    closed, data = closed_by_peer(sock)
    sock.close()
    assert pg.execute(f"SELECT count(*) FROM orders WHERE id = {marker}", dbname="initech") == [(0,)]
    assert closed, data


def test_smuggling_control_plain_insert_is_visible(proxy: ProxyProcess, pg: PgCluster) -> None:
    """Control for the two tests above: the same INSERT, sent normally, does land."""
    marker = 930001
    sock = connect(proxy, "ivan")
    sock.sendall(query(f"INSERT INTO orders VALUES ({marker}, 1)"))
    msgs = read_until(sock)
    sock.sendall(m.TERMINATE_MESSAGE)
    sock.close()
    assert not errors_in(msgs), errors_in(msgs)
    try:
        assert pg.execute(f"SELECT count(*) FROM orders WHERE id = {marker}", dbname="initech") == [(1,)]
    finally:
        pg.execute(f"DELETE FROM orders WHERE id = {marker}", dbname="initech")


def test_query_split_byte_by_byte_is_still_gated(proxy: ProxyProcess) -> None:
    sock = connect(proxy, "alice")
    for b in query("SELECT set_config('pgtenant.tenant_id', 'bigco', false)"):
        sock.sendall(bytes((b,)))
    msgs = read_until(sock)
    errs = errors_in(msgs)
    assert errs and errs[0]["C"] == "42501" and "pgtenant" in errs[0]["M"]
    sock.sendall(query("SELECT current_setting('pgtenant.tenant_id')"))
    assert rows_in(read_until(sock)) == [["acme"]]
    sock.close()


def test_copy_data_outside_copy_is_ignored(proxy: ProxyProcess) -> None:
    """CopyData/CopyDone/CopyFail outside COPY are not intercepted; PostgreSQL ignores them."""
    sock = connect(proxy, "alice")
    sock.sendall(copy_data(query("SELECT set_config('pgtenant.tenant_id', 'bigco', false)")) + COPY_DONE
                 + m.frame(b"f", b"x\x00") + query("SELECT current_setting('pgtenant.tenant_id')"))
    msgs = read_until(sock)
    assert not errors_in(msgs)
    assert rows_in(msgs) == [["acme"]]
    sock.close()


def test_query_during_copy_in_is_gated_and_kills_the_copy(proxy: ProxyProcess, pg: PgCluster) -> None:
    """A Query inside COPY IN is intercepted by the proxy like any other; PostgreSQL then ends the
    connection (protocol violation during COPY), so nothing is executed out of band."""
    marker = 940001
    sock = connect(proxy, "ivan")
    sock.sendall(query("CREATE TEMP TABLE t_in (x int)"))
    read_until(sock)
    sock.sendall(query("COPY t_in FROM STDIN"))
    assert read_message(sock)[0] == b"G"
    sock.sendall(copy_data(b"1\n") + query(f"INSERT INTO orders VALUES ({marker}, 1)"))
    closed, data = closed_by_peer(sock)
    sock.close()
    assert closed and b"during COPY" in data
    assert pg.execute(f"SELECT count(*) FROM orders WHERE id = {marker}", dbname="initech") == [(0,)]


# =============================================================================================
# The deny marker
# =============================================================================================

DENIED = "SELECT set_config('pgtenant.tenant_id', 'bigco', false)"


def test_denial_inside_aborted_transaction_is_still_ours(proxy: ProxyProcess) -> None:
    """In an aborted transaction PostgreSQL still parses first, so the marker still fails with its own
    syntax error (not 25P02) and the proxy's 42501 is what the client sees."""
    sock = connect(proxy, "alice")
    sock.sendall(query("BEGIN") + query("SELECT 1/0") + query(DENIED) + parse(DENIED) + bind() + execute() + SYNC
                 + query("ROLLBACK") + query("SELECT current_setting('pgtenant.tenant_id')"))
    msgs = read_until(sock, count=6)
    errs = errors_in(msgs)
    assert [e["C"] for e in errs] == ["22012", "42501", "42501"], errs
    assert not any("pgtenant_denied_" in e.get("M", "") for e in errs)
    assert rows_in(msgs) == [["acme"]]
    sock.close()


def test_forged_marker_text_is_not_swapped(proxy: ProxyProcess) -> None:
    """Client text that looks like a marker, pipelined right behind a real denial, keeps its own error."""
    sock = connect(proxy, "alice")
    fake = "pgtenant_denied_" + "0" * 16
    sock.sendall(query(DENIED) + query(f"SELECT '{fake}'::int") + query(fake))
    msgs = read_until(sock, count=3)
    errs = errors_in(msgs)
    assert [e["C"] for e in errs] == ["42501", "22P02", "42601"], errs
    assert fake in errs[1]["M"] and fake in errs[2]["M"]
    sock.close()


def test_denied_parse_skipped_after_batch_error_does_not_confuse_later_denials(proxy: ProxyProcess) -> None:
    """After an error the backend skips to Sync, so a denied Parse in the same batch never fails and its
    marker stays pending; later denials must still be matched to their own marker."""
    sock = connect(proxy, "alice")
    sock.sendall(parse("SELEC 1") + parse(DENIED) + bind() + execute() + SYNC)
    errs = errors_in(read_until(sock))
    assert [e["C"] for e in errs] == ["42601"] and "SELEC" in errs[0]["M"]
    sock.sendall(query(DENIED) + query("SELECT 1"))
    msgs = read_until(sock, count=2)
    assert [e["C"] for e in errors_in(msgs)] == ["42501"]
    assert rows_in(msgs) == [["1"]]
    sock.close()


def test_marker_is_unpredictable_and_not_reused(proxy: ProxyProcess) -> None:
    """Two denials in a row are swapped independently; the marker text never reaches the client."""
    sock = connect(proxy, "alice")
    sock.sendall(query(DENIED) * 50)
    msgs = read_until(sock, count=50)
    errs = errors_in(msgs)
    assert len(errs) == 50 and all(e["C"] == "42501" for e in errs)
    assert not any(b"pgtenant_denied_" in body for _, body in msgs)
    sock.close()


def test_pipelined_denials_beyond_1024_all_get_the_policy_error(proxy: ProxyProcess) -> None:
    sock = connect(proxy, "alice")
    n = 1500
    sock.sendall(query(DENIED) * n)
    msgs = read_until(sock, count=n)
    errs = errors_in(msgs)
    sock.close()
    assert len(errs) == n
    raw = [e for e in errs if e["C"] != "42501"]
    assert not raw, f"{len(raw)} raw backend errors, e.g. {raw[0]}"


# =============================================================================================
# Revocation on reload
# =============================================================================================


def test_moved_user_cannot_keep_executing_prepared_statements(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("review-reload")).start()
    try:
        sock = connect(p, "alice")
        sock.sendall(parse("SELECT count(*), min(tenant_id) FROM orders", name="s1") + SYNC)
        assert not errors_in(read_until(sock))
        sock.sendall(bind("s1") + execute() + SYNC)
        assert rows_in(read_until(sock)) == [["200", "acme"]]
        # The operator moves alice to another tenant (or removes her): her session must end.
        p.extra_users = {"alice": ("bigco", "alice-pw")}
        p.write_config()
        assert p.proc is not None
        p.reload(expect="reloaded")
        sock.sendall(bind("s1") + execute() + SYNC)
        sock.settimeout(10)
        try:
            msgs = read_until(sock)
        except ConnectionError:
            msgs = []
        sock.close()
        assert not rows_in(msgs), f"revoked session still read acme's rows: {rows_in(msgs)}"
    finally:
        p.stop()


# =============================================================================================
# Request tracking (metrics and the audit log)
# =============================================================================================


def test_statements_after_unsynced_batch_are_audited(audited: ProxyProcess) -> None:
    sock = connect(audited, "alice")
    # An extended batch without Sync, then a simple Query: PostgreSQL sends ONE ReadyForQuery for both.
    sock.sendall(parse("SELECT 1") + bind() + execute() + query("SELECT 2"))
    read_until(sock)
    probe = f"probe_{time.monotonic_ns()}"
    sock.sendall(query(f"SELECT '{probe}' AS p"))
    assert rows_in(read_until(sock)) == [[probe]]
    sock.sendall(query(DENIED))
    assert errors_in(read_until(sock))[0]["C"] == "42501"
    sock.sendall(m.TERMINATE_MESSAGE)
    closed_by_peer(sock)
    sock.close()

    def both_written() -> list[dict] | None:  # the audit file is flushed in batches
        lines = audit_lines(audited)
        return lines if any(x.get("sql") == DENIED and x.get("outcome") == "denied" for x in lines) and any(
            probe in (x.get("sql") or "") for x in lines) else None

    lines = until(both_written, what="the probe and the denied statement in the audit log")
    mine = [x for x in lines if probe in (x.get("sql") or "")]
    assert mine and mine[-1]["outcome"] == "ok", "the probe statement is missing from the audit log"
    denied = [x for x in lines if x.get("sql") == DENIED and x.get("session_id") == mine[-1]["session_id"]]
    assert denied and denied[-1]["outcome"] == "denied", "the denied statement is missing from the audit log"


def test_syncs_during_copy_in_do_not_grow_proxy_memory(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("review-copy-sync")).start()
    try:
        assert p.proc is not None
        sock = connect(p, "ivan")
        sock.sendall(query("CREATE TEMP TABLE t_in (x int)"))
        read_until(sock)
        before = rss_kb(p.proc.pid)
        sock.sendall(query("COPY t_in FROM STDIN"))
        assert read_message(sock)[0] == b"G"
        burst = SYNC * 100_000  # 500 kB
        for _ in range(10):  # 5 MB of Syncs: PostgreSQL ignores every one of them in COPY IN
            sock.sendall(burst)
        sock.sendall(copy_data(b"1\n") + COPY_DONE)
        msgs = read_until(sock)
        assert not errors_in(msgs)
        sock.sendall(query("SELECT count(*) FROM t_in"))
        assert rows_in(read_until(sock)) == [["1"]]
        grown_mb = (rss_kb(p.proc.pid) - before) / 1024
        sock.close()
        assert grown_mb < 50, f"proxy RSS grew by {grown_mb:.0f} MB for 5 MB of Syncs"
    finally:
        p.stop()


# =============================================================================================
# Pre-authentication limits
# =============================================================================================


def test_oversized_sasl_message_is_refused_before_authentication(proxy: ProxyProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(m.encode_startup_message({"user": "alice", "database": "acme"}))
    t, _ = read_message(sock)
    assert t == b"R"
    # A SASLInitialResponse announcing 32 MB; PostgreSQL refuses anything over 65535 bytes at once.
    sock.sendall(b"p" + struct.pack("!I", 32 << 20) + b"SCRAM-SHA-256\x00" + b"\x00" * 65536)
    closed, data = closed_by_peer(sock, timeout=3)
    sock.close()
    assert closed and data[:1] == b"E", "the proxy is still waiting for the rest of the 32 MB message"


def test_unauthenticated_memory_is_bounded(proxy: ProxyProcess) -> None:
    """One unauthenticated connection announcing a 60 MB message is cut off at once and pins almost nothing."""
    assert proxy.proc is not None
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(m.encode_startup_message({"user": "nobody-at-all", "database": "x"}))
    assert read_message(sock)[0] == b"R"
    before = rss_kb(proxy.proc.pid)
    sent = 0
    chunk = b"\x00" * (1 << 20)
    try:
        sock.sendall(b"p" + struct.pack("!I", 60 << 20))
        for _ in range(40):
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy refused the message and closed the connection
    grown_mb = (rss_kb(proxy.proc.pid) - before) / 1024
    sock.close()
    print(f"unauthenticated connection: {sent >> 20} MB accepted by the socket, proxy grew {grown_mb:.1f} MB")
    assert sent < 40 << 20 and grown_mb < 8


# =============================================================================================
# Session settings the policy engine relies on are not pinned on the backend
# =============================================================================================

HIDE_SET = r"SELECT 'x\' AS a, $$' AS b, set_config('pgtenant.tenant_id', 'acme', false) -- $$"
HIDE_READ = r"SELECT 'x\' AS a, $$' AS b, (SELECT count(*) FROM orders) AS n -- $$"


def test_standard_conforming_strings_off_on_backend_cannot_hide_sql(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prepare_backend(pg)
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("review-scs"),
        extra_tenants={"legacy": {"strategy": "shared", "database": "saas", "tenant_id": "legacy",
                                  "backend_user": "pgt_legacy"}},
        extra_roles={"pgt_legacy": "legacy-role-pw"},
        extra_users={"lena": ("legacy", "lena-pw")},
    )
    p.provision()
    # A legacy database setting (role-level here, so no other test is affected).
    pg.execute("ALTER ROLE pgt_legacy SET standard_conforming_strings = off")
    p.start(provision=False)
    try:
        sock = connect(p, "lena")
        sock.sendall(query("SELECT count(*) FROM orders"))
        assert rows_in(read_until(sock)) == [["0"]]  # tenant "legacy" has no rows
        sock.sendall(query(HIDE_SET))
        read_until(sock)
        sock.sendall(query(HIDE_READ))
        msgs = read_until(sock)
        sock.sendall(query("SELECT current_setting('pgtenant.tenant_id')"))
        setting = rows_in(read_until(sock))
        sock.close()
        rows = rows_in(msgs)
        # Safe: the backend lexes like the engine, so the "hidden" SQL is two columns of literal text,
        # not a third column counting another tenant's rows.
        assert all(len(row) == 2 for row in rows), f"read another tenant: {rows}"
        assert setting == [["legacy"]], f"tenant context changed to {setting}"
    finally:
        p.stop()
        pg.execute("ALTER ROLE pgt_legacy RESET standard_conforming_strings")


def test_removed_admin_loses_the_console(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("review-admin"), admin_users={"ops": "ops-pw"}).start()
    try:
        sock, msgs = login(p.port, {"user": "ops", "database": "pgtenant"}, "ops-pw")
        assert msgs[-1][0] == b"Z", msgs
        sock.sendall(query("SHOW CLIENTS"))
        assert not errors_in(read_until(sock))
        p.admin_users = {}
        p.write_config()
        assert p.proc is not None
        p.reload(expect="reloaded")
        sock.sendall(query("SHOW CLIENTS"))
        sock.settimeout(10)
        try:
            msgs = read_until(sock)
        except ConnectionError:
            msgs = []
        sock.close()
        assert not any(t == b"D" for t, _ in msgs), "a removed admin still reads SHOW CLIENTS"
    finally:
        p.stop()


def test_admin_console_refuses_extended_protocol(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The console never relays anything to a backend: extended-protocol messages end the session."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("review-admin2"), admin_users={"ops": "ops-pw"}).start()
    try:
        sock, msgs = login(p.port, {"user": "ops", "database": "pgtenant"}, "ops-pw")
        assert msgs[-1][0] == b"Z", msgs
        sock.sendall(parse("SELECT * FROM orders") + bind() + execute() + SYNC)
        closed, data = closed_by_peer(sock)
        sock.close()
        assert closed and data.startswith(b"E") and b"C08P01" in data
    finally:
        p.stop()
