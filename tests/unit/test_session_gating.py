"""ClientSession relaying: every Query and Parse is decided under any chunking, revocation, a repeated Parse's
outcome, the statement a Bind names. Driven with scripted bytes, no sockets."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.actions import CloseClient, RelayToServer, ReleaseServer, RunDecision, TerminateBackend
from proxy.auth.throttle import AuthThrottle
from proxy.policy.cache import Pending
from proxy.policy.model import (
    DEALLOCATE,
    SESSION_STATEMENTS,
    SESSION_STATEMENTS_MARKER,
    SQL_PREPARE,
    Allow,
    Change,
    Deny,
    Rewrite,
)
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession, State
from tests.support.sessions import attach, frames, login, make_config, refused_parses


def ready_session(tmp_path: Path, decide=None, policy_token=object, pool: dict | None = None) -> ClientSession:
    """A relaying session; by default every Parse gets a fresh policy token, so each one is decided anew."""
    s = ClientSession(
        make_config(tmp_path, pool, max_message_length=1 << 20),
        session_id="s1",
        client_address="10.0.0.1",
        throttle=AuthThrottle(max_failures=2),
        clock=lambda: 100.0,
        tls_available=False,
    )
    login(s)
    s.enable_policy(decide or (lambda kind, sql: Deny("42501", "no", "", "r") if "deny" in sql else Allow()),
                    policy_token)
    attach(s)
    return s


def forwarded(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if isinstance(a, RelayToServer) for c in a.chunks)


def bind(statement: str = "") -> bytes:
    return m.frame(b"B", b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0))


EXECUTE = m.frame(b"E", b"\x00" + struct.pack("!i", 0))

# --- gating is independent of how the bytes are chunked --------------------------------------

_FAKE_Q = m.Query("SELECT 'deny-inner'").encode()  # bytes that look like a Query, inside other messages
_MESSAGES = st.one_of(
    st.builds(lambda i: m.Query(f"SELECT {i} -- deny" if i % 2 else f"SELECT {i}").encode(), st.integers(0, 99)),
    st.builds(lambda i: m.Parse(f"s{i}", f"SELECT {i} /* deny */" if i % 2 else f"SELECT {i}", b"\x00\x00").encode(),
              st.integers(0, 99)),
    st.just(bind("s1")), st.just(EXECUTE), st.just(m.SYNC_MESSAGE), st.just(m.frame(b"H", b"")),
    st.builds(lambda n: m.frame(b"d", _FAKE_Q * n), st.integers(0, 300)),  # CopyData carrying "messages"
    st.just(m.frame(b"D", b"S" + _FAKE_Q)),  # Describe
    st.just(m.frame(b"C", b"Ss1\x00")),  # Close statement
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(_MESSAGES, min_size=1, max_size=25), st.lists(st.integers(1, 700), min_size=1, max_size=8))
def test_every_query_and_parse_is_decided_under_any_chunking(
    tmp_path: Path, msgs: list[bytes], cuts: list[int]
) -> None:
    decided: list[str] = []

    def decide(kind: str, sql: str):
        decided.append(sql)
        return Deny("42501", "no", "", "r") if "deny" in sql else Allow()

    s = ready_session(tmp_path, decide)
    data = b"".join(msgs)
    out, pos, i = b"", 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out += forwarded(s.client_data(data[pos : pos + step]))
        pos += step
        i += 1
    refused = refused_parses(frames(data))  # (42P05: not decided)
    expected = [t for (t, _), dup in zip(frames(data), refused, strict=True) if t in (b"Q", b"P") and not dup]
    assert len(decided) == len(expected)
    sent = frames(out)
    assert [t for t, _ in sent] == [t for t, _ in frames(data)]  # same messages, same order
    for t, body in sent:
        if t == b"Q":
            assert "deny" not in m.Query.decode(body).sql
        elif t == b"P":
            assert "deny" not in m.Parse.decode(body).sql


# --- revocation --------------------------------------------------------------------------------


def test_revoked_session_refuses_bind_and_execute(tmp_path: Path) -> None:
    s = ready_session(tmp_path)
    s.client_data(m.Parse("s1", "SELECT * FROM orders", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    revoked = s.revoke(errors.user_removed("alice"))
    actions = s.client_data(bind("s1") + EXECUTE + m.SYNC_MESSAGE)
    assert any(isinstance(a, CloseClient) for a in revoked + actions), actions
    assert not forwarded(actions).startswith(b"B")


def _slow_session(tmp_path: Path, pool: dict | None = None) -> ClientSession:
    """A session whose statements naming "slow" are decided elsewhere (RunDecision, then decision_ready)."""
    return ready_session(tmp_path, lambda kind, sql: Pending(None, None, sql) if "slow" in sql else Allow(),
                         pool=pool)


def _closed_with_28000(actions: list) -> bool:
    closes = [a for a in actions if isinstance(a, CloseClient)]
    return len(closes) == 1 and closes[0].reason is CloseReason.USER_REMOVED and closes[0].error.sqlstate == "28000"


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_message_held_for_its_decision_never_reaches_the_server_after_a_revocation(tmp_path: Path, mode: str) -> None:
    """Red team 9b3 F2: a write held for its policy decision when the reload removed its user was relayed when the
    decision came (decision_ready did not look at `revoked`): it committed after the removal."""
    s = _slow_session(tmp_path, {"pool_mode": mode})
    held = s.client_data(m.Query("INSERT INTO orders VALUES (1) -- slow").encode())
    if s.state is State.WAITING:  # (transaction pooling: decided once the session holds a server)
        held += attach(s)
    assert s.state is State.READY and any(isinstance(a, RunDecision) for a in held) and not forwarded(held)
    revoked = s.revoke(errors.user_removed("alice"))
    after = s.decision_ready(Allow())
    assert not forwarded(revoked + after)
    assert _closed_with_28000(revoked + after)


# --- revocation ends the session now (red team 9b3 F1, F3) --------------------------------------------


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_revoked_session_with_requests_on_its_server_has_its_backend_terminated(tmp_path: Path, mode: str) -> None:
    """Red team 9b3 F1: the reload's CancelRequest stopped only the running statement; what the client pipelined
    behind it ran. The backend process is terminated (its pid and backend carried), the server dropped without a
    cancel (one would let the next pipelined statement start), the client closed with 28000."""
    s = ready_session(tmp_path, pool={"pool_mode": mode})
    sent = s.client_data(m.Query("SELECT pg_sleep(5)").encode() + m.Query("INSERT INTO orders VALUES (1)").encode())
    if s.state is State.WAITING:  # (transaction pooling: relayed once the session holds a server)
        sent += attach(s)
    assert forwarded(sent).count(b"Q") >= 2
    server = s.server
    assert server is not None
    actions = s.revoke(errors.user_removed("alice"))
    terminate = [a for a in actions if isinstance(a, TerminateBackend)]
    assert terminate == [TerminateBackend(server.backend, server.database, server.process_id, server.secret_key)]
    assert [a for a in actions if isinstance(a, ReleaseServer)] == [
        ReleaseServer(reusable=False, reset=True, reason=CloseReason.USER_REMOVED, busy=False)]
    assert _closed_with_28000(actions) and isinstance(actions[-1], CloseClient)
    assert s.state is State.CLOSED


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_revoked_idle_session_is_closed_at_once(tmp_path: Path, mode: str) -> None:
    """Red team 9b3 F3: an idle session of a removed user stayed open (and got NOTIFY payloads) until it sent
    something. It is closed at the revocation, FATAL 28000 unasked; nothing ran on its server: no termination."""
    s = ready_session(tmp_path, pool={"pool_mode": mode})
    actions = s.revoke(errors.user_removed("alice"))
    assert not [a for a in actions if isinstance(a, TerminateBackend)]
    assert _closed_with_28000(actions) and s.state is State.CLOSED
    assert actions[-1].error.severity == "FATAL"


# --- a Parse repeated byte for byte ------------------------------------------------------------------


def test_repeated_parse_reuses_its_outcome_only_under_the_same_policy(tmp_path: Path) -> None:
    decided: list[str] = []
    token = [object()]

    def decide(kind: str, sql: str):
        decided.append(sql)
        if "deny" in sql:
            return Deny("42501", "no", "", "r")
        return Rewrite(sql.replace(" t", " u"), ("r",)) if "rewrite" in sql else Allow()

    s = ready_session(tmp_path, decide, lambda: token[0])
    allowed = m.Parse("", "SELECT 1", b"\x00\x00").encode()
    rewritten = m.Parse("", "SELECT 'rewrite' FROM t", b"\x00\x00").encode()
    denied = m.Parse("", "SELECT 'deny'", b"\x00\x00").encode()
    sync = m.frame(b"S", b"")
    assert forwarded(s.client_data(allowed + sync)) == allowed + sync
    assert forwarded(s.client_data(allowed + sync)) == allowed + sync
    assert decided == ["SELECT 1"]
    first = forwarded(s.client_data(rewritten + sync))
    assert forwarded(s.client_data(rewritten + sync)) == first
    assert decided == ["SELECT 1", "SELECT 'rewrite' FROM t"]
    assert m.Parse.decode(frames(first)[0][1]).sql == "SELECT 'rewrite' FROM u"
    token[0] = object()  # a reload replaced the policy: decided again
    forwarded(s.client_data(rewritten + sync))
    assert decided[-1] == "SELECT 'rewrite' FROM t" and len(decided) == 3
    markers = {frames(forwarded(s.client_data(denied + sync)))[0][1] for _ in range(2)}
    assert len(markers) == 2 and len(decided) == 5  # a denial is never reused: each gets its own marker
    assert len(s.tracker.pending) == 7  # every Parse + Sync is still a tracked request


# --- the statement a Bind names ---------------------------------------------------------------------




# --- pg_prepared_statements: the session's list goes in place of the policy's marker ------------------------------


def test_a_rewrite_reading_pg_prepared_statements_gets_the_sessions_list(tmp_path: Path) -> None:
    """Without proxy/statements.py (the client's names reach the server): the client's texts of the named statements
    the policy rewrote, over the server's rows of those names; a client's own text is never touched."""
    listing = f"SELECT * FROM v({SESSION_STATEMENTS_MARKER})"

    def decide(kind: str, sql: str):
        if "pg_prepared_statements" in sql:
            return Rewrite(listing, ("catalog_filter", SESSION_STATEMENTS))
        if "orders" in sql:
            return Rewrite(sql + " WHERE tenant_id = 'acme'", ("tenant_filter",))
        return Allow()

    s = ready_session(tmp_path, decide)
    assert s.statements is None
    out = forwarded(s.client_data(m.Query("SELECT name FROM pg_prepared_statements").encode()))
    assert m.query_text(frames(out)[0][1]) == "SELECT * FROM v('[]')"
    s.client_data(m.Parse("S_1", "SELECT * FROM orders", b"\x00\x00").encode())
    s.client_data(m.Parse("S_2", "SELECT 1", b"\x00\x00").encode())
    out = forwarded(s.client_data(m.Parse("S_3", "SELECT name FROM pg_prepared_statements", b"\x00\x00").encode()))
    sql = m.Parse.decode(frames(out)[0][1]).sql
    assert json.loads(sql[sql.index("'") + 1 : sql.rindex("'")].replace("''", "'")) == [
        {"name": "S_1", "statement": "SELECT * FROM orders", "server": "S_1", "over": True},
        {"name": "S_3", "statement": "SELECT name FROM pg_prepared_statements", "server": "S_3", "over": True},
    ]
    # S_1 closed and parsed again, as it is: its text goes
    s.client_data(m.close_message(b"S", "S_1") + m.Parse("S_1", "SELECT 2", b"\x00\x00").encode())
    out = forwarded(s.client_data(m.Query("SELECT name FROM pg_prepared_statements").encode()))
    assert '"S_1"' not in m.query_text(frames(out)[0][1])
    out = forwarded(s.client_data(m.Query("SELECT 'x' /* orders */").encode()))  # a rewrite without the rule
    assert m.query_text(frames(out)[0][1]) == "SELECT 'x' /* orders */ WHERE tenant_id = 'acme'"


def test_sql_prepares_past_the_sessions_bounds_are_refused(tmp_path: Path) -> None:
    """Each SQL PREPARE keeps its whole text on the server (with the listing, for one that reads
    pg_prepared_statements: red team 5, F6, ~220 MB of backend memory each): the session's [pool] bounds on statements
    apply to them too (53200, the session goes on)."""
    def decide(kind: str, sql: str):
        return Allow(changes=(Change(0, SQL_PREPARE, sql.split()[1]),))

    s = ready_session(tmp_path, decide, pool={"max_session_statements": 2, "max_session_statement_bytes": 200})
    for name in ("a", "b"):
        text = f"PREPARE {name} AS SELECT 1"
        assert forwarded(s.client_data(m.Query(text).encode())) == m.Query(text).encode()
    out = forwarded(s.client_data(m.Query("PREPARE c AS SELECT 1").encode()))
    assert b"PREPARE c" not in out and m.query_text(frames(out)[0][1]).startswith("pgtenant")
    assert s.tracker.pending[-1].decision.rule == "sql_prepare_limit"
    assert "max_session_statements = 2" in s.tracker.pending[-1].decision.message
    long = "PREPARE d AS SELECT '" + "x" * 200 + "'"
    s = ready_session(tmp_path, decide, pool={"max_session_statements": 2, "max_session_statement_bytes": 200})
    assert b"PREPARE d" not in forwarded(s.client_data(m.Query(long).encode()))
    assert "max_session_statement_bytes = 200" in s.tracker.pending[-1].decision.message


def test_a_sql_prepared_statement_is_listed_with_the_clients_text(tmp_path: Path) -> None:
    """Red team 5, F5: the server's text of a rewritten SQL PREPARE is the proxy's (its filters name the schemas
    hidden from the tenant): pg_prepared_statements shows the client's PREPARE over it, as PostgreSQL would."""
    listing = f"SELECT * FROM v({SESSION_STATEMENTS_MARKER})"

    def decide(kind: str, sql: str):
        if "pg_prepared_statements" in sql:
            return Rewrite(listing, ("catalog_filter", SESSION_STATEMENTS))
        if sql.startswith("PREPARE"):
            name = sql.split()[1]
            changes = (Change(0, SQL_PREPARE, name),)
            if "pg_namespace" in sql:
                return Rewrite(sql + " WHERE nspname <> 'globex'", ("catalog_filter",), changes=changes)
            return Allow(changes=changes)
        if sql.startswith("DEALLOCATE"):
            return Allow(changes=(Change(0, DEALLOCATE, sql.split()[1]),))
        return Allow()

    def listed(s: ClientSession) -> list[dict]:
        out = forwarded(s.client_data(m.Query("SELECT name FROM pg_prepared_statements").encode()))
        sql = m.query_text(frames(out)[0][1])
        return json.loads(sql[sql.index("'") + 1 : sql.rindex("'")].replace("''", "'"))

    s = ready_session(tmp_path, decide)
    s.client_data(m.Query("PREPARE p1 AS SELECT nspname FROM pg_namespace").encode())
    s.client_data(m.Query("PREPARE p2 AS SELECT 1").encode())  # forwarded as it is: the server's text is the client's
    assert listed(s) == [{"name": "p1", "statement": "PREPARE p1 AS SELECT nspname FROM pg_namespace", "server": "p1",
                          "over": True}]
    s.client_data(m.Query("PREPARE p1 AS SELECT 2").encode())  # p1 again (after a DEALLOCATE), as it is
    assert listed(s) == []
    s.client_data(m.Query("PREPARE p3 AS SELECT nspname FROM pg_namespace").encode())
    s.client_data(m.Query("DEALLOCATE p3").encode())
    s.client_data(m.Parse("p3", "SELECT 3", b"\x00\x00").encode())  # a protocol statement of that name now
    assert listed(s) == []


# --- session pooling: the statement names the server has (red team round 6 F8; proxy/stmtnames.py) ---------------


def _deallocating(kind: str, sql: str):
    if sql.startswith("DEALLOCATE"):
        return Allow(changes=(Change(0, DEALLOCATE, sql.split()[1]),))
    return Allow()


def _parsed(s: ClientSession, name: str, sql: str = "SELECT 1") -> str:
    """What reaches the server of a Parse of `name` (its text: a marker when the session refuses it)."""
    out = forwarded(s.client_data(m.Parse(name, sql, b"\x00\x00").encode() + m.SYNC_MESSAGE))
    return m.Parse.decode(frames(out)[0][1]).sql


@pytest.mark.parametrize("extended", [False, True])
def test_a_deallocated_name_can_be_parsed_again_once_the_server_said_so(tmp_path: Path, extended: bool) -> None:
    s = ready_session(tmp_path, _deallocating, pool={"pool_mode": "session"})
    assert _parsed(s, "S_1") == "SELECT 1"
    s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    assert _parsed(s, "S_1").startswith("pgtenant_denied_")  # 42P05: the server has it
    s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": "x"}) + m.ready_for_query(b"I"))
    if extended:
        s.client_data(m.Parse("", "DEALLOCATE S_1", b"\x00\x00").encode() + bind() + EXECUTE + m.SYNC_MESSAGE)
        head = m.frame(b"1", b"") + m.frame(b"2", b"")
    else:
        s.client_data(m.Query("DEALLOCATE S_1").encode())
        head = b""
    assert _parsed(s, "S_1").startswith("pgtenant_denied_")  # its answer has not come: it may fail
    s.server_data(head + m.command_complete("DEALLOCATE") + m.ready_for_query(b"I"))
    s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": "x"}) + m.ready_for_query(b"I"))
    assert _parsed(s, "S_1") == "SELECT 1"  # gone: a new statement of that name, as on a direct connection


def test_a_pipelined_parse_after_a_failed_one_of_its_batch_is_not_refused(tmp_path: Path) -> None:
    s = ready_session(tmp_path, pool={"pool_mode": "session"})
    s.client_data(m.Parse("S_1", "SELEC 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": "x"}) + m.ready_for_query(b"I"))
    assert _parsed(s, "S_1") == "SELECT 1"  # the failed Parse made nothing
