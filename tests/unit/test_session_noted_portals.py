"""A portal of a statement that changes the session is never forgotten before its Execute (review 17 F1)."""

from __future__ import annotations

from pathlib import Path

from proxy.auth.throttle import AuthThrottle
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.session import _MAX_PORTALS, ClientSession
from tests.support.sessions import login, make_config, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database")
MARKER = b"pgtenant_denied_"


def pooled(tmp_path: Path) -> ClientSession:
    s = ClientSession(make_config(tmp_path, pool={"pool_mode": "transaction", "sticky_servers": False,
                                                     "max_session_portals": 100_000}),
                      session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: 0.0, tls_available=False)
    login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _k, sql: cache.get_or_decide(POLICY, sql))
    s.server_attached(server_for(s, {"application_name": ""}))  # the login's server, given back at its 'I'
    s.client_data(m.Query("BEGIN").encode())
    s.server_attached(server_for(s))
    s.server_data(m.frame(b"C", b"BEGIN\x00") + m.ready_for_query(b"T"))
    return s


def bind(portal: str, statement: str) -> bytes:
    return m.frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + b"\x00\x00\x00\x00\x00\x00")


def sent(actions: list) -> bytes:
    return b"".join(b"".join(a.chunks) for a in actions if type(a).__name__ == "RelayToServer")


def test_a_bind_past_the_noted_portals_is_refused_not_forgotten(tmp_path: Path) -> None:
    """A CREATE TEMP TABLE's portal bound first, then _MAX_PORTALS more portals of statements that change the session:
    the oldest note was dropped, its Execute ran unrecorded and the server went back reusable with the table on it.
    The Bind that would take the session past the bound is refused (sent under a marker statement PostgreSQL fails to
    find; its error replaced by 54000), the ones before it are noted."""
    s = pooled(tmp_path)
    parse = m.Parse("s1", "CREATE TEMP TABLE t AS SELECT 1 AS x", b"\x00\x00").encode()
    binds = b"".join(bind(f"p{i}", "s1") for i in range(_MAX_PORTALS + 1))
    out = sent(s.client_data(parse + binds + m.execute_message("p0") + m.SYNC_MESSAGE))
    assert out.count(MARKER) == 1 and out.index(MARKER) > out.index(f"p{_MAX_PORTALS - 1}\x00".encode())


def test_a_few_portals_are_noted_without_refusal(tmp_path: Path) -> None:
    s = pooled(tmp_path)
    parse = m.Parse("s1", "SET work_mem = '8MB'", b"\x00\x00").encode()
    out = sent(s.client_data(parse + b"".join(bind(f"p{i}", "s1") for i in range(10)) + m.SYNC_MESSAGE))
    assert MARKER not in out


def test_a_named_portal_noted_already_is_not_bound_again(tmp_path: Path) -> None:
    """`Bind p` of one SET, then (after a SAVEPOINT) `Bind p` of another: PostgreSQL refuses the second (42P03) and,
    after ROLLBACK TO, runs the first at `Execute p`; the note had been overwritten with the second. Refused here."""
    s = pooled(tmp_path)
    s.client_data(m.Parse("s1", "SET work_mem = '8MB'", b"\x00\x00").encode()
                  + m.Parse("s2", "SET lock_timeout = '1s'", b"\x00\x00").encode() + bind("p", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") * 2 + m.frame(b"2", b"") + m.ready_for_query(b"T"))
    assert MARKER in sent(s.client_data(bind("p", "s2") + m.SYNC_MESSAGE))
    assert MARKER not in sent(s.client_data(bind("", "s2") + bind("", "s1") + m.SYNC_MESSAGE))  # unnamed: replaced
