"""ClientSession with pooled server connections, scripted: where it takes and gives back its server in session and
transaction pooling, what it holds meanwhile, the pins per reason (rollbacks included), the settings replay and
the startup answer on a reused server."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from proxy import errors
from proxy.actions import (
    AcquireServer,
    BatchWithoutSync,
    CloseClient,
    ConnectBackend,
    RelayToClient,
    RelayToServer,
    ReleaseServer,
    SendClient,
    SessionPinned,
    SessionUnpinned,
    StartRelay,
)
from proxy.auth.throttle import AuthThrottle
from proxy.limits import ConnectionCounts
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.server import ServerConnection
from proxy.session import ClientSession, State
from proxy.sessionstate import HELD_LOCKS_QUERY
from tests.support.sessions import frames, login, make_config, sent, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database")  # LISTEN and advisory locks are allowed there


def _session(tmp_path: Path, mode: str) -> ClientSession:
    return ClientSession(make_config(tmp_path, pool={"pool_mode": mode}), session_id="s1",
                         client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2), clock=lambda: 0.0,
                         tls_available=False)


def _log_in(s: ClientSession, **params: str) -> list:
    actions = login(s, **params)
    assert isinstance(actions[-1], ConnectBackend)
    cache = DecisionCache()  # as the proxy decides: by shape too (`SET x = 1` and `SET x = 2` share one)
    s.enable_policy(lambda _kind, sql: cache.get_or_decide(POLICY, sql))
    return actions


@pytest.fixture
def pooled(tmp_path: Path) -> ClientSession:
    """A transaction-pooled session, logged in, its startup answered, its first server given back."""
    s = _session(tmp_path, "transaction")
    _log_in(s)
    actions = s.server_attached(server_for(s, {"application_name": ""}))
    assert [type(a) for a in actions] == [SendClient, StartRelay, ReleaseServer]
    assert actions[-1] == ReleaseServer(reusable=True, reset=False)
    assert s.state is State.IDLE and s.server is None
    return s


def query(sql: str) -> bytes:
    return m.Query(sql).encode()


def done(*tags: str, status: bytes = b"I") -> bytes:
    return b"".join(m.frame(b"C", t.encode() + b"\x00") for t in tags) + m.ready_for_query(status)


def error(sqlstate: str = "42P01", status: bytes = b"I") -> bytes:
    return m.encode_error_fields(b"E", {"S": "ERROR", "C": sqlstate, "M": "no"}) + m.ready_for_query(status)


def relayed(actions: list, kind: type = RelayToServer) -> bytes:
    return b"".join(bytes(c) for a in actions if type(a) is kind for c in a.chunks)


def run(s: ClientSession, sql: str, answer: bytes, server: ServerConnection | None = None) -> list:
    """The client sends `sql`; the session gets `server` (a fresh one) if it holds none; the backend answers."""
    out = list(s.client_data(query(sql)))
    if s.state is State.WAITING:
        assert isinstance(out[-1], AcquireServer)
        attached = s.server_attached(server or server_for(s))
        assert relayed(attached).startswith(b"Q")
        out += attached
    else:
        assert relayed(out).startswith(b"Q")
    return out + s.server_data(answer)


def kinds(actions: list) -> list[type]:
    """The pooling and closing actions (what is relayed or sent aside; AcquireServer too: `run` checks it)."""
    return [type(a) for a in actions if type(a) not in (RelayToServer, RelayToClient, SendClient, AcquireServer)]


# --- where the server is taken and given back -------------------------------------------------


def test_session_pooling_holds_its_server_until_the_client_leaves(tmp_path: Path) -> None:
    s = _session(tmp_path, "session")
    [*_, connect] = _log_in(s)
    assert connect.request.mode == "session" and ("client_encoding", "UTF8") in connect.request.key.context
    assert kinds(s.server_attached(server_for(s))) == [StartRelay]
    assert kinds(run(s, "SELECT 1", done("SELECT 1"))) == []  # ReadyForQuery 'I': it keeps it
    assert s.state is State.READY
    assert s.client_data(m.TERMINATE_MESSAGE) == [ReleaseServer(reusable=True, reset=True,
                                                                reason=CloseReason.CLIENT_TERMINATE),
                                                  CloseClient(None, CloseReason.CLIENT_TERMINATE)]


def test_a_request_takes_a_server_and_its_ready_for_query_gives_it_back(pooled: ClientSession) -> None:
    first = pooled.client_data(query("SELECT 1"))
    assert first == [AcquireServer(pooled.request)] and pooled.state is State.WAITING  # nothing sent anywhere
    more = pooled.client_data(query("SELECT 2"))  # (the connection does not read meanwhile; the session keeps it)
    assert more == []
    server = server_for(pooled)
    assert relayed(pooled.server_attached(server)) == query("SELECT 1") + query("SELECT 2")
    assert kinds(pooled.server_data(done("SELECT 1"))) == []  # SELECT 2 is in flight: the server stays
    out = pooled.server_data(done("SELECT 1"))
    assert relayed(out, RelayToClient) == done("SELECT 1") and kinds(out) == [ReleaseServer]
    assert pooled.state is State.IDLE


def test_a_transaction_keeps_its_server_until_it_ends(pooled: ClientSession) -> None:
    assert kinds(run(pooled, "BEGIN", done("BEGIN", status=b"T"))) == []
    assert pooled.state is State.READY
    assert kinds(run(pooled, "SELECT 1", done("SELECT 1", status=b"T"))) == []
    assert kinds(run(pooled, "COMMIT", done("COMMIT"))) == [ReleaseServer]


def test_an_extended_batch_keeps_its_server_until_its_sync_is_answered(pooled: ClientSession) -> None:
    parse = m.Parse("", "SELECT 1", b"\x00\x00").encode()
    bind = m.frame(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    describe = m.frame(b"D", b"P\x00")
    execute = m.frame(b"E", b"\x00\x00\x00\x00\x00")
    assert pooled.client_data(parse + bind + describe + execute + m.frame(b"H", b"")) == [
        AcquireServer(pooled.request)]
    assert BatchWithoutSync(True) in pooled.server_attached(server_for(pooled))  # flushed, no Sync: counted
    answers = m.frame(b"1", b"") + m.frame(b"2", b"") + m.frame(b"n", b"") + m.frame(b"C", b"SELECT 1\x00")
    assert kinds(pooled.server_data(answers)) == []  # (the Describe's answer too: NoData)
    assert pooled.client_data(m.SYNC_MESSAGE)[1:] == [BatchWithoutSync(False)]
    assert kinds(pooled.server_data(m.ready_for_query(b"I"))) == [ReleaseServer]


def test_a_batch_with_its_sync_in_the_same_read_is_not_held_without_one(pooled: ClientSession) -> None:
    parse = m.Parse("", "SELECT 1", b"\x00\x00").encode()
    flush = m.frame(b"H", b"")
    pooled.client_data(query("SELECT 1"))  # (holding a server)
    pooled.server_attached(server_for(pooled))
    assert not [a for a in pooled.client_data(parse + flush + m.SYNC_MESSAGE) if isinstance(a, BatchWithoutSync)]
    assert pooled.client_data(parse + flush)[1:] == [BatchWithoutSync(True)]
    assert kinds(pooled.client_data(flush)) == []  # told once
    assert pooled.client_data(m.SYNC_MESSAGE)[1:] == [BatchWithoutSync(False)]


def test_a_server_skipping_to_its_sync_stays_held_and_is_closed_if_the_client_leaves(pooled: ClientSession) -> None:
    """Red team 9s4 H1: an ErrorResponse to an extended message (a Close of subtype 'Z'), no Sync sent: the server
    skips to that Sync. It is neither released at the query's ReadyForQuery before it nor lent again reusable."""
    pooled.client_data(query("SELECT 2") + m.frame(b"C", b"Zx\x00"))
    pooled.server_attached(server_for(pooled))
    assert ReleaseServer not in kinds(pooled.server_data(done("SELECT 2")))
    failed = m.encode_error_fields(b"E", {"S": "ERROR", "C": "08P01", "M": "invalid CLOSE message subtype 90"})
    assert ReleaseServer not in kinds(pooled.server_data(failed))
    assert pooled.server is not None
    [*_, release] = pooled.close()
    assert release == ReleaseServer(reusable=False, reset=True, reason=CloseReason.CLIENT_GONE)


def test_a_describe_alone_is_a_request_in_flight(pooled: ClientSession) -> None:
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    pooled.client_data(query("COMMIT"))
    # before the COMMIT's answer; its batch waits for its Sync (counted: red team 9s4 N1)
    assert kinds(pooled.client_data(m.frame(b"D", b"Sname\x00"))) == [BatchWithoutSync]
    assert kinds(pooled.server_data(done("COMMIT"))) == []  # the Describe is in flight: the server stays
    pooled.client_data(m.SYNC_MESSAGE)
    # (the client has no statement "name": the server fails the Describe, as PostgreSQL would)
    failed = m.encode_error_fields(b"E", {"S": "ERROR", "C": "26000", "M": "no"})
    assert kinds(pooled.server_data(failed + m.ready_for_query(b"I"))) == [ReleaseServer]


def test_a_client_leaving_in_a_transaction_gives_back_a_server_that_is_not_reusable(pooled: ClientSession) -> None:
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    [release] = pooled.close()
    assert release == ReleaseServer(reusable=False, reset=True, reason=CloseReason.CLIENT_GONE)


def test_a_refused_wait_answers_each_request_and_the_session_goes_on(pooled: ClientSession) -> None:
    pooled.client_data(query("SELECT 1") + query("SELECT 2"))
    err = errors.pool_wait_timeout(tenant="acme", seconds=120.0, pool_size=1)
    out = relayed(pooled.server_refused(err, CloseReason.BACKEND), RelayToClient)
    assert [t for t, _ in frames(out)] == [b"E", b"Z", b"E", b"Z"] and pooled.state is State.IDLE
    assert not pooled.tracker.pending
    assert pooled.client_data(query("SELECT 3")) == [AcquireServer(pooled.request)]


def test_a_refused_wait_with_an_unsynced_batch_ends_the_session(pooled: ClientSession) -> None:
    pooled.client_data(m.Parse("", "SELECT 1", b"\x00\x00").encode() + m.frame(b"H", b""))
    err = errors.backend_unreachable("main", "connection timed out")
    assert pooled.server_refused(err, CloseReason.BACKEND) == [CloseClient(err, CloseReason.BACKEND)]


def test_a_refused_login_closes_the_client(tmp_path: Path) -> None:
    s = _session(tmp_path, "transaction")
    _log_in(s)
    err = errors.pool_wait_timeout(tenant="acme", seconds=120.0, pool_size=1)
    [close] = s.server_refused(err, CloseReason.BACKEND)
    assert close.error.severity == "FATAL" and close.error.sqlstate == "53300"  # at login, as PostgreSQL refuses
    assert s.state is State.CLOSED


# --- what the client sends that PostgreSQL would end the session for (red team 9s2 M1) ------------------------------


def _refused(out: list) -> CloseClient:
    assert not relayed(out), "nothing of the read reaches the server"
    close = out[-1]
    assert isinstance(close, CloseClient) and close.reason is CloseReason.FRAMING
    assert (close.error.severity, close.error.sqlstate, close.error.message) == (
        "FATAL", "08P01", "invalid frontend message type 122")
    return close


@pytest.mark.parametrize("cut", [1, 5, 9])
def test_an_unknown_message_type_is_refused_by_the_proxy_never_forwarded(pooled: ClientSession, cut: int) -> None:
    """PostgreSQL ends its session at an unknown type byte, after the ReadyForQuery of what came before it: forwarded,
    the server went back to the pool at that ReadyForQuery 'I' and its FATAL reached the next client (two sessions on
    one server). The proxy refuses it itself (PostgreSQL's words), its read with it, and closes the server."""
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    out = pooled.client_data(query("SELECT 1") + m.frame(b"z", b"zzzz")[:cut])
    assert kinds(out) == [ReleaseServer, CloseClient]
    assert not out[0].reusable and out[0].reason is CloseReason.FRAMING  # (busy: its SELECT 1 was counted, so drained)
    _refused(out)
    assert pooled.state is State.CLOSED and pooled.client_data(query("SELECT 2")) == []


def test_an_unknown_message_type_in_session_pooling_closes_its_server(tmp_path: Path) -> None:
    s = _session(tmp_path, "session")
    _log_in(s)
    s.server_attached(server_for(s))
    run(s, "SELECT 1", done("SELECT 1"))
    out = s.client_data(m.frame(b"p", b"secret\x00"))  # (a password message once logged in: PostgreSQL's FATAL too)
    assert out[0] == ReleaseServer(reusable=False, reset=True, reason=CloseReason.FRAMING)
    assert out[-1].error.message == "invalid frontend message type 112"


@pytest.mark.parametrize("type_", [b"c", b"f", b"C", b"S", b"H", b"D", b"E"])
def test_a_message_longer_than_postgresql_reads_of_its_type_is_refused(pooled: ClientSession, type_: bytes) -> None:
    """PostgreSQL reads these types with a 10,000-byte limit: for a longer one it closes the connection without a
    word, after the ReadyForQuery of what came before (a CopyDone or Close outside any request: the server went back
    at that ReadyForQuery, the next client lost it). The proxy refuses it at its header, nothing of the read sent."""
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    out = pooled.client_data(query("COMMIT") + m.frame(type_, b"x" * 10_000))
    assert not relayed(out) and not out[0].reusable
    assert out[-1].error.sqlstate == "08P01" and out[-1].error.message == "invalid message length 10004"


def test_a_read_that_breaks_off_closes_the_server_a_message_of_it_was_forwarded_to(pooled: ClientSession) -> None:
    """The first bytes of a CopyData went to the server (forwarded as they come); the read with its rest also holds a
    refused type: nothing of that read is forwarded, so the server waits for bytes that never come: never reused."""
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    copy = m.frame(b"d", b"x" * 20)
    assert relayed(pooled.client_data(copy[:10])) == copy[:10]
    out = pooled.client_data(copy[10:] + b"y")
    assert out[0] == ReleaseServer(reusable=False, reset=True, reason=CloseReason.FRAMING)
    assert out[-1].error.message == "invalid frontend message type 121"


# --- a message begun: it takes no server until whole, and a server held for it is not held forever (9s F2) -------


def test_a_message_begun_takes_no_server_until_it_is_whole(pooled: ClientSession) -> None:
    """Red team 9s F2: a client sending the first bytes of a request and stalling held a server (with
    max_db_connections = 1 another tenant got 53300). The bytes wait with the session until the message is whole."""
    q = query("SELECT 1")
    assert pooled.client_data(q[:1]) == []
    assert pooled.client_data(q[1:4]) == []
    assert pooled.client_data(q[4:-1]) == [] and pooled.state is State.IDLE  # no AcquireServer
    assert pooled.client_data(q[-1:]) == [AcquireServer(pooled.request)]
    assert relayed(pooled.server_attached(server_for(pooled))) == q


def test_a_large_message_takes_a_server_once_64_kb_of_it_came(pooled: ClientSession) -> None:
    big = query("SELECT '" + "x" * 70_000 + "'")
    assert pooled.client_data(big[:60_000]) == []
    assert pooled.client_data(big[60_000:66_000]) == [AcquireServer(pooled.request)]


@pytest.mark.parametrize("data", [b"z", b"Q\x00\x00\x00\x02", b"y\x00\x00\x00\x04"])
def test_what_would_end_the_session_ends_it_before_any_server_is_taken(pooled: ClientSession, data: bytes) -> None:
    out = pooled.client_data(data)
    assert [type(a) for a in out] == [CloseClient] and out[0].error.sqlstate == "08P01"


def _stalled(pooled: ClientSession) -> None:
    """`pooled` holds a server (in a transaction) and has sent the first bytes of a CopyData (forwarded)."""
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    assert relayed(pooled.client_data(m.frame(b"d", b"x" * 40)[:9]))


def test_a_message_begun_with_a_server_held_ends_the_session_past_client_message_timeout(
        pooled: ClientSession) -> None:
    _stalled(pooled)
    assert pooled.message_tick(100.0) == []  # first seen
    assert pooled.message_tick(129.0) == []
    out = pooled.message_tick(130.5)
    assert out[0] == ReleaseServer(reusable=False, reset=True, reason=CloseReason.CLIENT_MESSAGE_TIMEOUT)
    close = out[-1]
    assert isinstance(close, CloseClient) and close.reason is CloseReason.CLIENT_MESSAGE_TIMEOUT
    assert (close.error.severity, close.error.sqlstate) == ("FATAL", "08P01")
    assert "client_message_timeout (30 s)" in close.error.message
    assert pooled.state is State.CLOSED


def test_a_message_that_progresses_to_its_end_restarts_the_clock(pooled: ClientSession) -> None:
    """Each message has its own 30 s: a COPY whose reads never end on a message boundary is not cut off."""
    _stalled(pooled)
    assert pooled.message_tick(0.0) == []
    rows = m.frame(b"d", b"x" * 40)[9:] + m.frame(b"d", b"y" * 40)[:7]  # the first ends, a second begins
    pooled.client_data(rows)
    assert pooled.message_tick(29.0) == [] and pooled.message_tick(58.0) == []  # (the second's clock: from 29.0)
    assert [type(a) for a in pooled.message_tick(59.5)] == [ReleaseServer, CloseClient]


def test_no_message_clock_between_messages_nor_without_a_server(pooled: ClientSession) -> None:
    assert pooled.message_tick(0.0) == [] and pooled.message_tick(1000.0) == []  # idle, no server
    pooled.client_data(query("SELECT 1")[:3])  # begun, no server taken: nothing held, no clock
    assert pooled.message_tick(2000.0) == [] and pooled.message_tick(3000.0) == []


# --- pins: per reason, with PostgreSQL's rollback semantics ---------------------------------------------------


def pinned(s: ClientSession, *script: tuple[str, bytes]) -> list:
    """Run (sql, answer) pairs; the pooling actions of the last one (pins, unpins, release)."""
    out: list = []
    for sql, answer in script:
        out = run(s, sql, answer)
    return [a for a in out if type(a) in (SessionPinned, SessionUnpinned, ReleaseServer)]


@pytest.mark.parametrize(("take", "give_back", "reason"), [
    ("CREATE TEMP TABLE t (a int)", "DROP TABLE t", "temp_relation"),
    ("CREATE TEMP VIEW v AS SELECT 1", "DISCARD TEMP", "temp_relation"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE c", "hold_cursor"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE ALL", "hold_cursor"),
    ("PREPARE p AS SELECT 1", "DEALLOCATE p", "sql_prepare"),
    ("PREPARE p AS SELECT 1", "DEALLOCATE ALL", "sql_prepare"),
    ("LISTEN ch", "UNLISTEN ch", "listen"),
    ("LISTEN ch", "UNLISTEN *", "listen"),
    ("SELECT pg_advisory_lock(7)", "SELECT pg_advisory_unlock(7)", "advisory_lock"),
    ("SELECT pg_try_advisory_lock_shared(1, 2)", "SELECT pg_advisory_unlock_shared(1, 2)", "advisory_lock"),
    ("SELECT pg_advisory_lock(7 + 0)", "SELECT pg_advisory_unlock_all()", "advisory_lock"),
    ("SELECT pg_advisory_lock(7)", "DISCARD ALL", "advisory_lock"),
    ("LISTEN ch", "DISCARD ALL", "listen"),
])
def test_each_pin_reason_holds_the_server_until_its_state_is_gone(pooled: ClientSession, take: str,
                                                                  give_back: str, reason: str) -> None:
    assert pinned(pooled, (take, done("X"))) == [SessionPinned(reason)]
    assert pooled.state is State.READY  # pinned: the server stays
    assert kinds(run(pooled, "SELECT 1", done("SELECT 1"))) == []
    actions = run(pooled, give_back, done("X"))
    if reason == "advisory_lock":  # the server is asked first (below)
        assert asked_locks(actions)
        actions = locks_answer(pooled, held=False)
    actions = [a for a in actions if type(a) in (SessionPinned, SessionUnpinned, ReleaseServer)]
    assert actions == [SessionUnpinned((reason,)), ReleaseServer(reusable=True, reset=False)]
    assert pooled.state is State.IDLE


def asked_locks(actions: list) -> bool:
    """The session asked its server which advisory locks it holds, and gave nothing back meanwhile."""
    return relayed(actions).endswith(query(HELD_LOCKS_QUERY)) and ReleaseServer not in kinds(actions)


def locks_answer(s: ClientSession, *, held: bool) -> list:
    """The server's answer to the advisory locks question: a row while it holds some."""
    row = m.frame(b"D", b"\x00\x01\x00\x00\x00\x011") if held else b""
    return s.server_data(m.frame(b"T", b"\x00\x00") + row + done("SELECT 1" if held else "SELECT 0"))


def test_an_unlock_of_another_key_keeps_the_pin(pooled: ClientSession) -> None:
    pinned(pooled, ("SELECT pg_advisory_lock(7)", done("SELECT 1")))
    assert pinned(pooled, ("SELECT pg_advisory_unlock(8)", done("SELECT 1"))) == []
    assert pinned(pooled, ("SELECT pg_advisory_lock(7)", done("SELECT 1"))) == []  # held twice: unlocked twice
    assert pinned(pooled, ("SELECT pg_advisory_unlock(7)", done("SELECT 1"))) == []
    assert asked_locks(run(pooled, "SELECT pg_advisory_unlock(7)", done("SELECT 1")))
    assert kinds(locks_answer(pooled, held=False)) == [SessionUnpinned, ReleaseServer]


# Red team round 4 F3: the count of calls as written is wrong when a call runs more or less often than written
# (per row, not at all, again through EXECUTE, a cursor, a view): the server's word decides.
@pytest.mark.parametrize("script", [
    ("SELECT pg_advisory_lock(7) FROM generate_series(1, 2)", "SELECT pg_advisory_unlock(7)"),
    ("SELECT pg_advisory_lock(7)", "SELECT pg_advisory_unlock(7) WHERE false"),
    ("PREPARE p AS SELECT pg_advisory_lock(7)", "EXECUTE p", "EXECUTE p", "DEALLOCATE p",
     "SELECT pg_advisory_unlock(7)"),
])
def test_a_server_holding_uncounted_locks_stays_pinned(pooled: ClientSession, script: tuple[str, ...]) -> None:
    out: list = []
    for sql in script:
        out = run(pooled, sql, done("X"))
    assert asked_locks(out)
    assert kinds(locks_answer(pooled, held=True)) == []  # pinned ("advisory_lock"): the server stays
    assert pooled.state is State.READY and pooled.context.locks_kept
    assert kinds(run(pooled, "SELECT 1", done("SELECT 1"))) == []  # (not asked again: nothing changed)
    assert asked_locks(run(pooled, "SELECT pg_advisory_unlock(7)", done("SELECT 1")))
    assert kinds(locks_answer(pooled, held=False)) == [SessionUnpinned, ReleaseServer]
    assert pooled.state is State.IDLE


def test_a_session_leaving_before_its_server_was_asked_gets_it_reset(pooled: ClientSession) -> None:
    run(pooled, "SELECT pg_advisory_lock(7) FROM generate_series(1, 2)", done("SELECT 2"))
    assert asked_locks(run(pooled, "SELECT pg_advisory_unlock(7)", done("SELECT 1")))
    [release] = pooled.close()  # (the question is in flight: not reusable)
    assert release.reset and not release.reusable


def test_discard_all_is_asked_about_only_after_the_server_said_it_holds_locks(pooled: ClientSession) -> None:
    assert kinds(run(pooled, "DISCARD ALL", done("DISCARD ALL"))) == [ReleaseServer]
    run(pooled, "SELECT pg_advisory_lock(7) FROM generate_series(1, 2)", done("SELECT 2"))
    run(pooled, "SELECT pg_advisory_unlock(7)", done("SELECT 1"))
    locks_answer(pooled, held=True)
    assert asked_locks(run(pooled, "DISCARD ALL", done("DISCARD ALL")))
    assert kinds(locks_answer(pooled, held=False)) == [SessionUnpinned, ReleaseServer]


@pytest.mark.parametrize("take", ["CREATE TEMP TABLE t (a int)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                                  "LISTEN ch"])
def test_state_of_a_rolled_back_transaction_does_not_pin(pooled: ClientSession, take: str) -> None:
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    run(pooled, take, done("X", status=b"T"))
    assert kinds(run(pooled, "ROLLBACK", done("ROLLBACK"))) == [ReleaseServer]


def test_a_failed_statement_does_not_pin(pooled: ClientSession) -> None:
    assert kinds(run(pooled, "CREATE TEMP TABLE t (a int)", error())) == [ReleaseServer]


@pytest.mark.parametrize("take", ["PREPARE p AS SELECT 1", "SELECT pg_advisory_lock(7)"])
def test_what_ignores_transactions_pins_after_a_rollback(pooled: ClientSession, take: str) -> None:
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    run(pooled, take, done("X", status=b"T"))
    assert kinds(run(pooled, "ROLLBACK", done("ROLLBACK"))) == [SessionPinned]


def test_an_advisory_lock_in_a_failing_statement_pins(pooled: ClientSession) -> None:
    assert kinds(run(pooled, "SELECT pg_advisory_lock(7), 1/0", error("22012"))) == [SessionPinned]


@pytest.mark.parametrize("sql", ["SET seed = 0.5", "SELECT setseed(0.5)", "SET work_mem FROM CURRENT",
                                 "SELECT set_config('work_mem', current_setting('work_mem'), false)"])
def test_what_cannot_be_replayed_pins_for_good(pooled: ClientSession, sql: str) -> None:
    assert kinds(run(pooled, sql, done("SET"))) == [SessionPinned]
    assert kinds(run(pooled, "DISCARD ALL", done("DISCARD ALL"))) == []
    [release] = pooled.close()
    assert release.reset and release.reusable


@pytest.mark.parametrize("sql", ["PREPARE p AS SELECT set_config('work_mem', '7MB', false)",
                                 "CREATE TEMP VIEW v AS SELECT set_config('work_mem', '7MB', false) AS s",
                                 # red team round 6 F4: run at each INSERT
                                 "CREATE TEMP TABLE v (x text DEFAULT set_config('work_mem', '7MB', false))",
                                 "CREATE TEMP TABLE v (x int CHECK (set_config('work_mem', '7MB', false) <> ''))"])
def test_a_setting_made_later_by_a_prepare_or_a_view_pins_for_good(pooled: ClientSession, sql: str) -> None:
    # red team round 4 F8: recorded at the PREPARE, forgotten by RESET ALL, made again by EXECUTE unseen
    run(pooled, sql, done("X"))
    assert "setting" in pooled._pins
    for step in ("RESET ALL", "DEALLOCATE ALL", "DISCARD TEMP"):  # the PREPARE / view gone: still pinned
        assert ReleaseServer not in kinds(run(pooled, step, done("X")))
    assert pooled._pins == ("setting",) and pooled.state is State.READY


@pytest.mark.parametrize("sql", ["SELECT nextval('pg_temp.orders_id_seq')", "SELECT pg_catalog.nextval('pg_temp.s')"])
def test_sequence_state_pins_for_good(pooled: ClientSession, sql: str) -> None:
    """nextval() gives the session what currval()/lastval() read: no other client may land on that server before
    the reset (DISCARD ALL) at release clears it (red team pool round 1 F4)."""
    assert run(pooled, sql, done("SELECT 1"))[-1] == SessionPinned("sequence")
    [release] = pooled.close()
    assert release.reset and release.reusable


WRITER = TenantPolicy(tenant="acme", strategy="database", allow_writes=True)


def _writer(tmp_path: Path) -> ClientSession:
    """A transaction-pooled session of a tenant that may write, logged in, its first server given back."""
    s = _session(tmp_path, "transaction")
    login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _kind, sql: cache.get_or_decide(WRITER, sql))
    s.server_attached(server_for(s))
    return s


def _lands(s: ClientSession, server: ServerConnection, sql: str = "SELECT lastval()") -> list[bytes]:
    """The session sends `sql` and lands on `server`: the Queries it sends there (its replay first, if any)."""
    assert s.client_data(query(sql)) == [AcquireServer(s.request)]
    return [body for _, body in frames(relayed(s.server_attached(server)))]


def test_a_write_leaves_sequence_state_only_its_own_session_may_find(tmp_path: Path) -> None:
    """A column default's nextval() (an INSERT into a serial or identity column), run unseen, sets what currval()
    and lastval() read: the next session of another client landing on that server discards it first (DISCARD
    SEQUENCES in its replay); the writer itself keeps it on the server of its latest write."""
    a, b = _writer(tmp_path), _writer(tmp_path)
    s1, s2 = server_for(a), server_for(a)
    assert kinds(run(a, "INSERT INTO orders (amount) VALUES (1)", done("INSERT 0 1"), s1)) == [ReleaseServer]
    assert _lands(a, s1, "SELECT currval('orders_id_seq')") == [b"SELECT currval('orders_id_seq')\x00"]  # its own
    assert kinds(a.server_data(done("SELECT 1"))) == [ReleaseServer]
    assert _lands(b, s1) == [b"DISCARD SEQUENCES\x00", b"SELECT lastval()\x00"]  # never a's value
    out = b.server_data(done("DISCARD SEQUENCES") + error("55000"))
    assert relayed(out, RelayToClient) == error("55000") and kinds(out) == [ReleaseServer]
    assert _lands(a, s1) == [b"SELECT lastval()\x00"]  # (gone for a too, as it is: 55000)
    a.server_data(error("55000"))
    # a write that fails may have run the default's nextval() all the same; a read leaves nothing
    assert kinds(run(a, "INSERT INTO orders (amount) VALUES (NULL)", error("23502"), s2)) == [ReleaseServer]
    assert kinds(run(b, "SELECT 1", done("SELECT 1"), s1)) == [ReleaseServer]
    assert _lands(a, s1) == [b"SELECT lastval()\x00"]
    a.server_data(error("55000"))
    assert _lands(b, s2, "SELECT 1") == [b"DISCARD SEQUENCES\x00", b"SELECT 1\x00"]
    b.server_data(done("DISCARD SEQUENCES") + done("SELECT 1"))
    # the writer's older servers are not its latest: what its sequences show there is stale, so it goes too
    assert kinds(run(a, "INSERT INTO orders (amount) VALUES (2)", done("INSERT 0 1"), s1)) == [ReleaseServer]
    assert kinds(run(a, "INSERT INTO orders (amount) VALUES (3)", done("INSERT 0 1"), s2)) == [ReleaseServer]
    assert _lands(a, s1)[0] == b"DISCARD SEQUENCES\x00"
    a.server_data(done("DISCARD SEQUENCES") + error("55000"))
    assert s1.sequences is None and s2.sequences is not None  # (the pool's reset, DISCARD ALL, clears it too)


def test_a_currval_after_another_sessions_read_gets_a_discard_in_front(tmp_path: Path) -> None:
    """A read may run nextval() unseen (a view's query, a function): the next session lent that server gets DISCARD
    SEQUENCES in front of its first statement calling currval()/lastval() (its answers swallowed), unless it used
    the server first (then the value may be its own); PostgreSQL's 55000 reaches the client, as on a new server."""
    a, b = _writer(tmp_path), _writer(tmp_path)
    s1 = server_for(a)
    assert kinds(run(a, "SELECT * FROM orders", done("SELECT 1"), s1)) == [ReleaseServer]
    assert _lands(b, s1, "SELECT 1") == [b"SELECT 1\x00"]  # (no round trip for the sessions that never read them)
    assert kinds(b.server_data(done("SELECT 1"))) == [ReleaseServer]
    assert _lands(b, s1) == [b"DISCARD SEQUENCES\x00", b"SELECT lastval()\x00"]
    out = b.server_data(done("DISCARD SEQUENCES") + error("55000"))
    assert relayed(out, RelayToClient) == error("55000") and kinds(out) == [ReleaseServer]
    assert s1.sequences is None
    # in a transaction: after BEGIN (which cannot run nextval()), still in front of the first currval()
    assert kinds(run(a, "SELECT * FROM orders", done("SELECT 1"), s1)) == [ReleaseServer]
    assert _lands(b, s1, "BEGIN") == [b"BEGIN\x00"]
    b.server_data(done("BEGIN", status=b"T"))
    out = b.client_data(query("SELECT currval('orders_id_seq')"))
    assert [body for _, body in frames(relayed(out))] == [b"DISCARD SEQUENCES\x00",
                                                           b"SELECT currval('orders_id_seq')\x00"]
    out = b.server_data(done("DISCARD SEQUENCES", status=b"T") + error("55000", status=b"E"))
    assert relayed(out, RelayToClient) == error("55000", status=b"E")
    assert kinds(run(b, "ROLLBACK", done("ROLLBACK"))) == [ReleaseServer]
    # a session that read (a view, maybe) on the server first: what currval() reads there may be its own
    assert kinds(run(a, "SELECT * FROM orders", done("SELECT 1"), s1)) == [ReleaseServer]
    assert _lands(b, s1, "BEGIN") == [b"BEGIN\x00"]
    b.server_data(done("BEGIN", status=b"T"))
    assert relayed(b.client_data(query("SELECT * FROM orders"))) == query("SELECT * FROM orders")
    b.server_data(done("SELECT 1", status=b"T"))
    assert relayed(b.client_data(query("SELECT lastval()"))) == query("SELECT lastval()")


def test_a_discard_goes_in_front_of_an_extended_batch_as_a_whole(tmp_path: Path) -> None:
    """pgJDBC's transaction start: BEGIN, then the statement, in one batch; the DISCARD goes in front of all of it
    (a simple Query before the batch, answered before the batch begins)."""
    a, b = _writer(tmp_path), _writer(tmp_path)
    s1 = server_for(a)
    assert kinds(run(a, "SELECT * FROM orders", done("SELECT 1"), s1)) == [ReleaseServer]
    batch = (m.Parse("", "BEGIN", b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + b"\x00" * 6)
             + m.execute_message("") + m.Parse("", "SELECT lastval()", b"\x00\x00").encode()
             + m.frame(b"B", b"\x00\x00" + b"\x00" * 6) + m.execute_message("") + m.frame(b"S", b""))
    assert b.client_data(batch) == [AcquireServer(b.request)]
    sent_ = frames(relayed(b.server_attached(s1)))
    assert sent_[0] == (b"Q", b"DISCARD SEQUENCES\x00") and [t for t, _ in sent_[1:]] == [b"P", b"B", b"E"] * 2 + [
        b"S"]
    answer = (m.frame(b"1", b"") + m.frame(b"2", b"") + m.command_complete("BEGIN") + m.frame(b"1", b"")
              + m.frame(b"2", b"") + error("55000", status=b"E")[:-6])
    out = b.server_data(done("DISCARD SEQUENCES") + answer + m.ready_for_query(b"E"))
    got = relayed(out, RelayToClient)
    assert b"DISCARD" not in got and got.startswith(m.frame(b"1", b"")) and b"55000" in got


def test_protocol_named_statements_do_not_pin(pooled: ClientSession) -> None:
    """They are kept by the session (proxy/statements.py) and prepared again on the server it lands on."""
    parse = m.Parse("S_1", "SELECT 1", b"\x00\x00").encode()
    assert pooled.client_data(parse + m.SYNC_MESSAGE) == [AcquireServer(pooled.request)]
    pooled.server_attached(server_for(pooled))
    assert kinds(pooled.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))) == [ReleaseServer]
    bind = m.frame(b"B", b"\x00S_1\x00\x00\x00\x00\x00\x00\x00")
    assert pooled.client_data(bind + m.SYNC_MESSAGE) == [AcquireServer(pooled.request)]
    sent_ = relayed(pooled.server_attached(server_for(pooled)))  # another server: S_1 is prepared there first
    assert [t for t, _ in frames(sent_)] == [b"P", b"B", b"S"] and b"pgt_" in sent_ and b"S_1" not in sent_
    out = pooled.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.ready_for_query(b"I"))
    assert relayed(out, RelayToClient) == m.frame(b"2", b"") + m.ready_for_query(b"I")  # its ParseComplete: ours
    assert kinds(out) == [ReleaseServer]


def test_a_tenants_own_function_pins_for_good(tmp_path: Path) -> None:
    s = _session(tmp_path, "transaction")
    login(s)
    own = TenantPolicy(tenant="acme", strategy="database", extra_allowed_functions=frozenset({"public.report"}))
    s.enable_policy(lambda _kind, sql: DecisionCache().get_or_decide(own, sql))
    s.server_attached(server_for(s))
    assert kinds(run(s, "SELECT lower('A')", done("SELECT 1"))) == [ReleaseServer]  # a built-in: nothing held
    # what a function of the tenant's own leaves on the server (a setting, a temporary table...) is not known
    assert run(s, "SELECT public.report(1)", done("SELECT 1"))[-1] == SessionPinned("function")
    assert kinds(run(s, "DISCARD ALL", done("DISCARD ALL"))) == []


def test_a_pinned_session_leaving_gets_its_server_reset(pooled: ClientSession) -> None:
    pinned(pooled, ("CREATE TEMP TABLE t (a int)", done("CREATE TABLE")))
    [release] = pooled.close()
    assert release == ReleaseServer(reusable=True, reset=True, reason=CloseReason.CLIENT_GONE)


# --- settings: recorded as the gated statement, replayed as a diff ------------------------------------------------


def test_session_settings_are_replayed_on_the_next_server_as_a_diff(pooled: ClientSession) -> None:
    assert kinds(run(pooled, "SET DateStyle = German", m.parameter_status("DateStyle", "German, DMY")
                     + done("SET"))) == [ReleaseServer]
    first = ServerConnection(pooled.backend, "saas", {})  # type: ignore[arg-type]
    pooled.client_data(query("SET work_mem = '8MB'"))
    [sent_] = pooled.server_attached(first)  # a fresh server: the session's DateStyle first, swallowed
    assert frames(relayed([sent_])) == [(b"Q", b"SET DateStyle = German\x00"), (b"Q", b"SET work_mem = '8MB'\x00")]
    assert kinds(pooled.server_data(m.parameter_status("DateStyle", "German, DMY") + done("SET"))) == []
    out = pooled.server_data(done("SET"))
    assert relayed(out, RelayToClient) == done("SET") and kinds(out) == [ReleaseServer]
    # the server it had records what the session left on it
    assert first.settings == {"datestyle": "SET DateStyle = German", "work_mem": "SET work_mem = '8MB'"}
    other = server_for(pooled)
    other.settings = {"timezone": "SET TimeZone = 'Asia/Tokyo'", "work_mem": "SET work_mem = '8MB'"}
    other.status["TimeZone"] = "Asia/Tokyo"
    pooled.client_data(query("SELECT 1"))
    [sent_] = pooled.server_attached(other)
    replay = "RESET timezone; SET DateStyle = German"
    assert frames(b"".join(bytes(c) for c in sent_.chunks)) == [(b"Q", replay.encode() + b"\x00"),
                                                                (b"Q", b"SELECT 1\x00")]
    answer = (m.parameter_status("TimeZone", "UTC") + m.parameter_status("DateStyle", "German, DMY")
              + done("RESET", "SET"))
    out = pooled.server_data(answer + done("SELECT 1"))
    # The replay's answers are swallowed; of its statuses only what the client has not been told reaches it (it saw
    # DateStyle German when it set it; this fake server never reported TimeZone at its startup).
    assert relayed(out, RelayToClient) == done("SELECT 1")
    assert sent(out) == m.parameter_status("TimeZone", "UTC")
    assert kinds(out) == [ReleaseServer] and other.settings == {
        "datestyle": "SET DateStyle = German", "work_mem": "SET work_mem = '8MB'"}


def test_reset_all_gives_the_client_its_startup_settings_back(tmp_path: Path) -> None:
    s = _session(tmp_path, "session")
    _log_in(s, application_name="psql")
    server = server_for(s, {"application_name": ""})
    [replay] = s.server_attached(server)
    startup = "SELECT pg_catalog.set_config('application_name', 'psql', false)"
    assert frames(relayed([replay])) == [(b"Q", startup.encode() + b"\x00")]
    s.server_data(m.parameter_status("application_name", "psql") + m.frame(b"C", b"SELECT 1\x00")
                  + m.ready_for_query(b"I"))
    assert server.status["application_name"] == "psql"
    run(s, "SET application_name = 'mine'", m.parameter_status("application_name", "mine") + done("SET"))
    # PostgreSQL resets to the server's startup value; the client expects its own startup value: set again at once
    # (in the same query: also inside a transaction block), the proxy's SET unseen
    answer = (m.command_complete("RESET") + m.command_complete("SET") + m.parameter_status("application_name", "psql")
              + m.ready_for_query(b"I"))
    out = run(s, "RESET ALL", answer)
    assert frames(relayed(out)) == [(b"Q", b"RESET ALL; SET application_name TO 'psql'\x00")]
    assert relayed(out, RelayToClient) == (m.command_complete("RESET") + m.parameter_status("application_name", "psql")
                                           + m.ready_for_query(b"I"))
    assert s.client_data(m.TERMINATE_MESSAGE)[0] == ReleaseServer(reusable=True, reset=True,
                                                                  reason=CloseReason.CLIENT_TERMINATE)
    assert server.settings == {"application_name": startup}  # (no replay needed: the server has it)


def test_a_reset_of_a_startup_setting_is_its_startup_value_at_once(tmp_path: Path) -> None:
    """Inside a transaction block too: PostgreSQL gets the SET of the startup value; the client gets RESET's tag,
    and the ParameterStatus of the value (the server's); the server's settings record it for the next client."""
    s = _session(tmp_path, "transaction")
    _log_in(s, application_name="psql")
    server = server_for(s, {"application_name": ""})
    s.server_attached(server)
    s.server_data(m.parameter_status("application_name", "psql") + done("SELECT 1"))
    run(s, "BEGIN", done("BEGIN", status=b"T"), server)
    run(s, "SET application_name = 'mine'", m.parameter_status("application_name", "mine") + done("SET", status=b"T"))
    out = s.client_data(query("RESET application_name"))
    assert frames(relayed(out)) == [(b"Q", b"SET application_name TO 'psql'\x00")]
    back = s.server_data(m.command_complete("SET") + m.parameter_status("application_name", "psql")
                         + m.ready_for_query(b"T"))
    assert relayed(back, RelayToClient) == (m.command_complete("RESET") + m.parameter_status("application_name", "psql")
                                            + m.ready_for_query(b"T"))
    # extended protocol: a Parse of it (named), its Binds answered with RESET's tag
    parse = m.Parse("r1", "RESET application_name", b"\x00\x00").encode()
    bind = m.frame(b"B", b"\x00r1\x00" + b"\x00" * 6)
    out = s.client_data(parse + bind + m.execute_message("") + m.frame(b"S", b""))
    sent_ = frames(relayed(out))
    assert [t for t, _ in sent_] == [b"P", b"B", b"E", b"S"] and b"SET application_name TO 'psql'" in sent_[0][1]
    back = s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.command_complete("SET")
                         + m.ready_for_query(b"T"))
    assert m.command_complete("RESET") in relayed(back, RelayToClient)
    assert kinds(run(s, "COMMIT", done("COMMIT"))) == [ReleaseServer]
    assert server.settings == {"application_name": "SELECT pg_catalog.set_config('application_name', 'psql', false)"}


def test_a_reused_server_answers_the_startup_with_the_clients_own_settings(tmp_path: Path) -> None:
    s = _session(tmp_path, "transaction")
    _log_in(s, application_name="bob")
    server = server_for(s, {"application_name": "alice", "server_version": "18.1"})
    server.settings = {"application_name": "SELECT pg_catalog.set_config('application_name', 'alice', false)",
                       "datestyle": "SET DateStyle = German"}
    [replay] = s.server_attached(server)
    assert frames(relayed([replay])) == [(b"Q", b"RESET datestyle; SELECT pg_catalog.set_config("
                                                b"'application_name', 'bob', false)\x00")]
    out = s.server_data(m.parameter_status("DateStyle", "ISO, MDY") + m.frame(b"C", b"RESET\x00")
                        + m.parameter_status("application_name", "bob") + m.frame(b"C", b"SELECT 1\x00")
                        + m.ready_for_query(b"I"))
    answer = sent(out)
    assert m.parameter_status("application_name", "bob") in answer and b"alice" not in answer
    assert answer.endswith(m.ready_for_query(b"I"))
    assert kinds(out) == [StartRelay, ReleaseServer]
    assert server.settings == {"application_name": "SELECT pg_catalog.set_config('application_name', 'bob', "
                                                   "false)"}


def test_a_replay_the_server_refuses_ends_the_session(pooled: ClientSession) -> None:
    run(pooled, "SET work_mem = '8MB'", done("SET"))
    pooled.client_data(query("SELECT 1"))
    pooled.server_attached(server_for(pooled))
    out = pooled.server_data(error("22023"))
    assert kinds(out)[0] is ReleaseServer and isinstance(out[-1], CloseClient)
    assert out[-1].reason is CloseReason.SETTINGS_REPLAY


def test_a_server_given_back_while_the_client_is_mid_message_is_not_reusable(pooled: ClientSession) -> None:
    """Red team 9s2 L1: the settings replay on the server the session lands on fails while the client has sent the
    first bytes of a CopyData after its query (forwarded as they come): the server went back reusable, and the pool's
    reset (DISCARD ALL, its check) was swallowed as the rest of that CopyData. Every give-back checks it."""
    run(pooled, "SET work_mem = '8MB'", done("SET"))  # (the next server needs a replay)
    copy = m.frame(b"d", b"x" * 40)
    pooled.client_data(query("SELECT 1") + copy[:12])
    sent_ = relayed(pooled.server_attached(server_for(pooled)))
    assert sent_.endswith(query("SELECT 1") + copy[:12])  # behind the replay
    out = pooled.server_data(error("22023"))  # the replay refused
    assert out[0] == ReleaseServer(reusable=False, reset=True, reason=CloseReason.SETTINGS_REPLAY)
    assert isinstance(out[-1], CloseClient) and out[-1].reason is CloseReason.SETTINGS_REPLAY


def test_a_cursor_closed_in_a_rolled_back_transaction_stays_closed(pooled: ClientSession) -> None:
    pinned(pooled, ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", done("DECLARE CURSOR")))
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    run(pooled, "CLOSE c", done("CLOSE CURSOR", status=b"T"))
    assert kinds(run(pooled, "ROLLBACK", done("ROLLBACK"))) == [SessionUnpinned, ReleaseServer]


def test_a_deallocate_in_a_rolled_back_transaction_stays_done(pooled: ClientSession) -> None:
    pinned(pooled, ("PREPARE p AS SELECT 1", done("PREPARE")))
    run(pooled, "BEGIN", done("BEGIN", status=b"T"))
    run(pooled, "DEALLOCATE p", done("DEALLOCATE", status=b"T"))
    assert kinds(run(pooled, "ROLLBACK", done("ROLLBACK"))) == [SessionUnpinned, ReleaseServer]


def test_garbage_sent_between_transactions_ends_the_session_with_08p01(pooled: ClientSession) -> None:
    actions = pooled.client_data(b"Q\x00\x00\x00\x02")  # a length below 4
    assert [type(a) for a in actions] == [CloseClient] and actions[-1].error.sqlstate == "08P01"  # no server taken
    assert pooled.state is State.CLOSED
    assert pooled.close() == []


def test_an_idle_pooled_session_keeps_its_attributes_in_slots(pooled: ClientSession) -> None:
    """Memory per idle client (issue 16: <= 10 KB): every attribute a session sets is one of its __slots__ (an
    instance dict of more than 30 keys costs ~1 KB more). A new attribute goes into ClientSession.__slots__."""
    run(pooled, "SELECT 1", done("SELECT 1"))
    parse = m.Parse("S_1", "SELECT 1", b"\x00\x00").encode()
    pooled.client_data(parse + m.SYNC_MESSAGE)
    pooled.server_attached(server_for(pooled))
    pooled.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    assert pooled.state is State.IDLE and pooled.statements is not None
    assert not pooled.__dict__, f"add {sorted(pooled.__dict__)} to ClientSession.__slots__"


def _tenant_session(tmp_path: Path, counts: ConnectionCounts, limit: int) -> ClientSession:
    s = ClientSession(make_config(tmp_path, pool={"pool_mode": "transaction", "max_tenant_statement_bytes": limit}),
                      session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: 0.0, tls_available=False, connections=counts)
    _log_in(s)
    s.server_attached(server_for(s, {"application_name": ""}))
    return s


def _named_parse(s: ClientSession, name: str, text: str) -> bytes:
    """The client's named Parse and Sync: what the server gets (the session takes a server for it)."""
    out = list(s.client_data(m.Parse(name, text, b"\x00\x00").encode() + m.frame(b"S", b"")))
    if s.state is State.WAITING:
        out += s.server_attached(server_for(s))
    return relayed(out)


def test_the_statement_text_kept_for_a_tenant_is_bounded_over_all_its_sessions(tmp_path: Path) -> None:
    """Red team 7 F10: each session may keep 16 MiB of named statements; a tenant's connections multiplied it (6
    sessions: +92 MB of proxy memory). [pool] max_tenant_statement_bytes bounds their sum (53200, naming the key);
    a session that ends gives its share back."""
    counts = ConnectionCounts()
    text = "SELECT '" + "x" * 3000 + "'"
    one, two = _tenant_session(tmp_path, counts, 10_000), _tenant_session(tmp_path, counts, 10_000)
    assert text.encode() in _named_parse(one, "a", text)
    one.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    assert text.encode() in _named_parse(one, "b", text)
    assert text.encode() in _named_parse(two, "c", text)
    two.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    refused = _named_parse(two, "d", text)
    assert text.encode() not in refused and refused.startswith(b"P") and b"pgtenant_denied_" in refused
    [marker] = two._denials.values()
    assert marker.sqlstate == "53200" and "max_tenant_statement_bytes = 10000" in marker.message
    assert 9000 < counts.statement_bytes.held["acme"] <= 10_000
    one.close()
    assert counts.statement_bytes.held["acme"] < 4000
    two.close()
    assert counts.statement_bytes.held == {}


# --- what an idle session keeps (benchmarks/idle_memory.py) -----------------------------------------------------


@pytest.mark.parametrize(("length", "kept"), [(10, True), (3000, False)])
def test_a_long_parse_memo_goes_with_the_server(pooled: ClientSession, length: int, kept: bool) -> None:
    """The last Parse's memo (its body, text and rewrite: up to 64 KB) stays while the session holds no server only
    when it is short; a short one keeps the hot path's memo from one transaction to the next."""
    batch = (m.Parse("", "SELECT " + "1" * length, b"\x00\x00").encode()
             + m.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
             + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) + m.SYNC_MESSAGE)
    assert isinstance(pooled.client_data(batch)[-1], AcquireServer)
    pooled.server_attached(server_for(pooled))
    assert pooled._parse_memo is not None
    answer = m.frame(b"1", b"") + m.frame(b"2", b"") + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert ReleaseServer in kinds(pooled.server_data(answer))
    assert (pooled._parse_memo is not None) is kept


def test_sessions_told_the_same_values_share_them_until_one_is_told_more(tmp_path: Path) -> None:
    sessions = [_session(tmp_path, "session") for _ in range(2)]
    for s in sessions:
        _log_in(s)
        s.server_attached(server_for(s, {"application_name": "", "TimeZone": "UTC"}))
    a, b = sessions
    assert a._client_status is b._client_status  # one dict
    assert relayed(a.server_data(m.parameter_status("TimeZone", "CET")), RelayToClient)  # the client is told
    assert (a._client_status["TimeZone"], b._client_status["TimeZone"]) == ("CET", "UTC")
    assert relayed(b.server_data(m.parameter_status("TimeZone", "UTC")), RelayToClient) == b""  # (unchanged)


# --- messages PostgreSQL answers with nothing (red team 9s3 R1) -----------------------------------


@pytest.mark.parametrize("lone", [m.frame(b"d", b"xxxx"), m.frame(b"c", b""), m.frame(b"f", b"no\x00")],
                         ids=["copydata", "copydone", "copyfail"])
def test_a_copy_message_outside_copy_gives_its_server_back_at_once(pooled: ClientSession, lone: bytes) -> None:
    """CopyData/CopyDone/CopyFail outside COPY: PostgreSQL ignores them and answers nothing, so no ReadyForQuery
    would ever run the release: the server stayed held until the client's next request (another tenant got 53300 on
    a budget of one). It goes back after the read that forwarded the message."""
    s = pooled
    assert isinstance(s.client_data(lone)[-1], AcquireServer)
    out = s.server_attached(server_for(s))
    assert relayed(out) == lone
    assert out[-1] == ReleaseServer(reusable=True, reset=False) and s.server is None and s.state is State.IDLE


def test_a_copy_message_completed_after_its_querys_answer_gives_the_server_back(pooled: ClientSession) -> None:
    """The split variant: a query and the first bytes of a CopyData in one write; the ReadyForQuery 'I' comes while
    the client is mid-message (the server stays: part of a message is on its wire), the rest completes it."""
    s = pooled
    copy = m.frame(b"d", b"xxxx")
    s.client_data(query("SELECT 1") + copy[:3])
    s.server_attached(server_for(s))
    assert kinds(s.server_data(done("SELECT 1"))) == [] and s.server is not None
    out = s.client_data(copy[3:])
    assert relayed(out) == copy  # (a header's first bytes are held back until it is whole)
    assert kinds(out) == [ReleaseServer] and s.server is None


def test_a_lone_flush_is_ended_by_the_proxys_own_sync_and_gives_the_server_back(pooled: ClientSession) -> None:
    """A Flush with no batch before it opens one that runs nothing and gets no answer: the proxy ends it with a
    Sync of its own at once (as an answered Flush-ended batch), its ReadyForQuery not relayed, and the server goes
    back."""
    s = pooled
    s.client_data(m.frame(b"H", b""))
    out = s.server_attached(server_for(s))
    assert relayed(out) == m.frame(b"H", b"") + m.SYNC_MESSAGE
    back = s.server_data(m.ready_for_query(b"I"))
    assert relayed(back, RelayToClient) == b"" and ReleaseServer in kinds(back) and s.server is None
