"""Red team 20a F1/F2 (scripted conversations): a portal's note follows what PostgreSQL did with the portal."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth.throttle import AuthThrottle
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.session import _UNKNOWN_PORTAL, ClientSession
from tests.support.sessions import login, make_config, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database")
_DIV = m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "22012", "M": "division by zero"})
_ABORTED = m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "25P02", "M": "aborted"})
_FAILING = m.Parse("bad", "SELECT 1/0", b"\x00\x00").encode() + m.frame(b"B", b"p9\x00bad\x00" + b"\x00" * 6) \
    + m.execute_message("p9")
_FAILED = m.frame(b"1", b"") + m.frame(b"2", b"") + _DIV + m.ready_for_query(b"E")
POOLS = {"transaction": {"pool_mode": "transaction", "sticky_servers": False},  # the statement maps' ledger
         "session": {"pool_mode": "session"}}  # skipping.Owed


def in_transaction(tmp_path: Path, pool: str) -> ClientSession:
    """A session of `pool` inside BEGIN, with `Parse s1 "SET work_mem …"` (a change) and `Parse t "SELECT 1"`."""
    s = ClientSession(make_config(tmp_path, pool=POOLS[pool]), session_id="s1", client_address="10.0.0.1",
                      throttle=AuthThrottle(max_failures=2), clock=lambda: 0.0, tls_available=False)
    login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _k, sql: cache.get_or_decide(POLICY, sql))
    s.server_attached(server_for(s, {"application_name": ""}))
    s.client_data(m.Query("BEGIN").encode())
    if pool == "transaction":
        s.server_attached(server_for(s))
    s.server_data(m.frame(b"C", b"BEGIN\x00") + m.ready_for_query(b"T"))
    s.client_data(m.Parse("s1", "SET work_mem = '8MB'", b"\x00\x00").encode()
                  + m.Parse("t", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") * 2 + m.ready_for_query(b"T"))
    return s


def bind(portal: str, statement: str) -> bytes:
    return m.frame(b"B", portal.encode() + b"\x00" + statement.encode() + b"\x00" + b"\x00\x00\x00\x00\x00\x00")


def sent(actions: list) -> bytes:
    return b"".join(b"".join(a.chunks) for a in actions if type(a).__name__ == "RelayToServer")


def noted(s: ClientSession) -> set[bytes]:
    return set(s._portals)


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("portal", ["c", ""])
@pytest.mark.parametrize("last", ["close", "execute"])
def test_a_skipped_close_or_execute_leaves_the_note(tmp_path: Path, pool: str, portal: str, last: str) -> None:
    """F1: `Close P c` / `Execute c` after an error in its batch is skipped: c and its note stay; the Execute
    answered later takes the note."""
    s = in_transaction(tmp_path, pool)
    s.client_data(bind(portal, "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    assert noted(s) == {portal.encode()}
    message = m.close_message(b"P", portal) if last == "close" else m.execute_message(portal)
    s.client_data(_FAILING + message + m.SYNC_MESSAGE)
    s.server_data(_FAILED)
    assert noted(s) == {portal.encode()}
    s.client_data(m.execute_message(portal) + m.SYNC_MESSAGE)
    assert noted(s) == set()
    s.server_data(m.frame(b"C", b"SET\x00") + m.ready_for_query(b"T"))
    assert noted(s) == set()


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_an_execute_refused_in_an_aborted_transaction_leaves_the_note(tmp_path: Path, pool: str) -> None:
    """F1, rt20a's pe.py: `Execute c` in a batch of its own answered 25P02: c stays (ROLLBACK TO keeps it)."""
    s = in_transaction(tmp_path, pool)
    s.client_data(bind("c", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    s.client_data(m.execute_message("c") + m.SYNC_MESSAGE)
    s.server_data(_ABORTED + m.ready_for_query(b"E"))
    assert noted(s) == {b"c"}


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("portal", ["c", ""])
def test_a_bind_of_a_change_free_statement_removes_the_note(tmp_path: Path, pool: str, portal: str) -> None:
    """F2: a Bind of the name to `SELECT 1` replaces PostgreSQL's portal (the unnamed one in the same batch; a named
    one once closed): its note goes; if that Bind is skipped, the note stays."""
    s = in_transaction(tmp_path, pool)
    close = m.close_message(b"P", portal) if portal else b""
    s.client_data(bind(portal, "s1") + close + bind(portal, "t") + m.execute_message(portal) + m.SYNC_MESSAGE)
    assert noted(s) == set()
    s.server_data(m.frame(b"2", b"") + (m.frame(b"3", b"") if portal else b"") + m.frame(b"2", b"")
                  + m.frame(b"D", b"\x00\x01\x00\x00\x00\x011") + m.frame(b"C", b"SELECT 1\x00")
                  + m.ready_for_query(b"T"))
    assert noted(s) == set()
    s.client_data(bind("d", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    s.client_data(_FAILING + m.close_message(b"P", "d") + bind("d", "t") + m.SYNC_MESSAGE)
    s.server_data(_FAILED)
    assert noted(s) == {b"d"}


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_a_skipped_bind_of_a_statement_with_a_change_notes_nothing(tmp_path: Path, pool: str) -> None:
    """F2, rt20a's sb.py: c bound to `SELECT 1`; `Close P c` + `Bind c` of the SET skipped: no note for c."""
    s = in_transaction(tmp_path, pool)
    s.client_data(bind("c", "t") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    s.client_data(_FAILING + m.close_message(b"P", "c") + bind("c", "s1") + m.SYNC_MESSAGE)
    s.server_data(_FAILED)
    assert noted(s) == set()


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("last", ["close", "execute"])
def test_a_message_sent_after_its_batchs_error_arrived_leaves_the_note(tmp_path: Path, pool: str, last: str) -> None:
    """F1 where the error is answered (after a Flush) before the skipped `Close P c` / `Execute c` is sent."""
    s = in_transaction(tmp_path, pool)
    s.client_data(bind("c", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    s.client_data(_FAILING + m.frame(b"H", b""))
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + _DIV)
    message = m.close_message(b"P", "c") if last == "close" else m.execute_message("c")
    s.client_data(message + m.SYNC_MESSAGE)
    s.server_data(m.ready_for_query(b"E"))
    assert noted(s) == {b"c"}


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("how", ["query", "extended"])
def test_a_sql_declare_of_a_noted_name_takes_its_note(tmp_path: Path, pool: str, how: str) -> None:
    """F2's SQL spelling: after SQL `CLOSE c`, `DECLARE c` (by Query, or the Execute of a portal whose statement
    declares c) answered without an error: PostgreSQL's c is the cursor, c has no note."""
    s = in_transaction(tmp_path, pool)
    s.client_data(bind("c", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    s.client_data(m.Query("CLOSE c").encode())
    s.server_data(m.frame(b"C", b"CLOSE CURSOR\x00") + m.ready_for_query(b"T"))
    assert noted(s) == {b"c"}
    declare = "DECLARE c CURSOR FOR SELECT 1"
    if how == "query":
        s.client_data(m.Query(declare).encode())
        assert s._portals[b"c"] is _UNKNOWN_PORTAL
        s.server_data(m.frame(b"C", b"DECLARE CURSOR\x00") + m.ready_for_query(b"T"))
    else:
        s.client_data(m.Parse("q", declare, b"\x00\x00").encode() + bind("p", "q") + m.execute_message("p")
                      + m.SYNC_MESSAGE)
        assert s._portals[b"c"] is _UNKNOWN_PORTAL
        s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.frame(b"C", b"DECLARE CURSOR\x00")
                      + m.ready_for_query(b"T"))
    assert noted(s) == set()


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_an_execute_of_a_name_a_failed_declare_left_unknown_is_refused(tmp_path: Path, pool: str) -> None:
    """`DECLARE c` answered with an error (42P03 while PostgreSQL has the portal; or a later statement of its string
    failed): the proxy does not know which c PostgreSQL has after a ROLLBACK TO; `Execute c` is sent under a marker
    portal name PostgreSQL does not have (its 34000 replaced by portal_not_known); a Bind of c makes it known."""
    s = in_transaction(tmp_path, pool)
    s.client_data(bind("c", "s1") + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"2", b"") + m.ready_for_query(b"T"))
    s.client_data(m.Query("DECLARE c CURSOR FOR SELECT 1").encode())
    s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "42P03", "M": "dup"}) + m.ready_for_query(b"E"))
    assert s._portals[b"c"] is _UNKNOWN_PORTAL
    out = sent(s.client_data(m.execute_message("c") + m.SYNC_MESSAGE))
    assert out.startswith(b"E") and out[5:].startswith(b"pgtenant_denied_")
    marker = out[5:out.index(b"\x00", 5)].decode()
    answer = s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "34000",
                                                        "M": f'portal "{marker}" does not exist'})
                           + m.ready_for_query(b"E"))
    told = b"".join(b"".join(a.chunks) for a in answer if type(a).__name__ == "RelayToClient")
    assert b"C34000\x00" in told and b'portal "c" is not known' in told and marker.encode() not in told, told
    s.client_data(bind("c", "t") + m.SYNC_MESSAGE)
    assert noted(s) == set()
