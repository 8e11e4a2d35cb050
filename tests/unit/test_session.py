"""The client session state machine driven by scripted conversations: no sockets, no event loop."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scramp import ScramClient

from proxy.actions import (
    AdminLogin,
    AnswerWithheld,
    CloseClient,
    ConnectBackend,
    ForwardCancel,
    LastLineGuarded,
    RelayToClient,
    RelayToServer,
    ReleaseServer,
    RunDecision,
    StartClientTls,
)
from proxy.auth.scram import make_verifier
from proxy.auth.throttle import AuthThrottle
from proxy.config import parse_config
from proxy.login import TRANSITIONS as LOGIN_TRANSITIONS
from proxy.login import LoginEvent, LoginState
from proxy.policy.cache import Pending
from proxy.policy.model import RELEASE, ROLLBACK_TO, SAVEPOINT, SQL_PREPARE, Allow, Change, Decision, Deny, Rewrite
from proxy.policy.settings import marked_entry
from proxy.protocol import messages as m
from proxy.session import TRANSITIONS, ClientSession, Event, State
from tests.support.sessions import attach, frames, login, make_config, refused_parses, sent, server_for


@pytest.fixture
def session(tmp_path: Path) -> ClientSession:
    return ClientSession(
        make_config(tmp_path, max_message_length=4096),
        session_id="s1",
        client_address="10.0.0.1",
        throttle=AuthThrottle(max_failures=2),
        clock=lambda: 100.0,
        tls_available=True,
    )


def test_full_conversation(session: ClientSession) -> None:
    actions = login(session, application_name="psql", options="-c statement_timeout=5")
    assert session.state is State.CONNECTING
    assert isinstance(actions[-1], ConnectBackend)
    assert sent(actions).endswith(m.authentication(m.AUTH_OK))
    assert session.tenant is not None and session.tenant.name == "acme"
    assert session.backend_parameters == {"application_name": "psql", "statement_timeout": "5"}
    server = server_for(session, {"server_version": "15.18", "application_name": ""})
    # The client's startup parameters are its settings: set on the server it gets, the answers swallowed.
    [replay] = session.server_attached(server)
    assert isinstance(replay, RelayToServer)
    assert frames(b"".join(replay.chunks)) == [(b"Q", b"SELECT pg_catalog.set_config('application_name', 'psql', "
                                                      b"false); SELECT pg_catalog.set_config('statement_timeout', "
                                                      b"'5', false)\x00")]
    row = m.frame(b"T", b"\x00\x00") + m.frame(b"D", b"\x00\x00") + m.frame(b"C", b"SELECT 1\x00")
    out = sent(session.server_data(m.parameter_status("application_name", "psql") + row * 2
                                   + m.ready_for_query(b"I")))
    assert server.settings == {} and session.state is State.READY  # (recorded when the server goes back)
    assert out.startswith(m.parameter_status("server_version", "15.18") + m.parameter_status("application_name",
                                                                                              "psql"))
    assert m.backend_key_data(session.process_id, session.secret_key[:4]) in out  # protocol 3.0: 4 secret bytes
    assert out.endswith(m.ready_for_query(b"I"))
    assert session.state is State.READY
    # Relay: runs of frontend messages pass as they are; the backend's status is tracked.
    q = m.Query("SELECT 1").encode()
    [relay] = session.client_data(q + m.SYNC_MESSAGE)
    assert isinstance(relay, RelayToServer) and b"".join(bytes(c) for c in relay.chunks) == q + m.SYNC_MESSAGE
    [back] = session.server_data(m.frame(b"C", b"BEGIN\x00") + m.ready_for_query(b"T"))
    assert isinstance(back, RelayToClient)
    assert session.info.tx_status == b"T"
    actions = session.client_data(m.TERMINATE_MESSAGE)
    assert [type(a) for a in actions] == [ReleaseServer, CloseClient]
    assert session.state is State.CLOSED


def test_wrong_password_error_fields(session: ClientSession) -> None:
    session.client_data(m.encode_startup_message({"user": "alice"}))
    client = ScramClient(["SCRAM-SHA-256"], "alice", "bad")
    first = client.get_client_first().encode()
    out = sent(session.client_data(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)))
    client.set_server_first(out[9:].decode())
    [close] = session.client_data(m.frame(b"p", client.get_client_final().encode()))
    assert isinstance(close, CloseClient) and close.error is not None
    assert (close.error.sqlstate, close.error.message) == ("28P01", 'password authentication failed for user "alice"')
    assert close.reason == "auth_failed:bad_proof"


def test_unknown_user_same_shape(session: ClientSession) -> None:
    out = sent(session.client_data(m.encode_startup_message({"user": "mallory"})))
    assert struct.unpack_from("!i", out, 5)[0] == m.AUTH_SASL
    client = ScramClient(["SCRAM-SHA-256"], "mallory", "x")
    first = client.get_client_first().encode()
    out = sent(session.client_data(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)))
    assert out[:1] == b"R"  # a SASLContinue with a (mock) salt, as for a real user
    client.set_server_first(out[9:].decode())
    [close] = session.client_data(m.frame(b"p", client.get_client_final().encode()))
    assert close.error.sqlstate == "28P01" and close.reason == "auth_failed:unknown_user"


def test_login_beyond_the_failure_budget_is_refused(tmp_path: Path) -> None:
    throttle = AuthThrottle(max_failures=1)
    assert throttle.admit("10.0.0.1", "alice", 100.0) is None
    throttle.failed("10.0.0.1", "alice", 100.0)
    s = ClientSession(make_config(tmp_path), session_id="s", client_address="10.0.0.1", throttle=throttle,
                      clock=lambda: 100.0, tls_available=False)
    [close] = s.client_data(m.encode_startup_message({"user": "alice"}))
    assert isinstance(close, CloseClient) and close.reason == "auth_throttled:address_user"
    assert close.error.sqlstate == "28P01" and "try again in 60 seconds" in close.error.message
    # Another user from the same address is not concerned.
    other = ClientSession(make_config(tmp_path), session_id="t", client_address="10.0.0.1", throttle=throttle,
                          clock=lambda: 100.0, tls_available=False)
    assert sent(other.client_data(m.encode_startup_message({"user": "bob"})))[:1] == b"R"


def test_a_client_leaving_after_the_challenge_counts_as_a_failure(tmp_path: Path) -> None:
    throttle = AuthThrottle(max_failures=5)

    def session() -> ClientSession:
        return ClientSession(make_config(tmp_path), session_id="s", client_address="10.0.0.1", throttle=throttle,
                             clock=lambda: 100.0, tls_available=False)

    psql = session()  # psql hangs up at AuthenticationSASL to ask for the password: not a failure
    psql.client_data(m.encode_startup_message({"user": "alice"}))
    psql.close()
    assert throttle.failures("10.0.0.1", "alice", 100.0) == 0
    probe = session()  # a timing probe leaves after the server-first: a failure
    probe.client_data(m.encode_startup_message({"user": "alice"}))
    first = b"n,,n=,r=abcdefgh"
    assert sent(probe.client_data(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)))
    probe.close()
    assert throttle.failures("10.0.0.1", "alice", 100.0) == 1


def test_mock_iterations_follow_the_configured_users(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw", iterations=10000)}"\n')
    config = parse_config(
        {"secrets_file": "s.toml", "backends": {"main": {}},
         "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"}},
         "users": {"alice": {"tenant": "acme"}}},
        base=tmp_path,
    )
    s = ClientSession(config, session_id="s", client_address="a", throttle=AuthThrottle(), clock=lambda: 0.0,
                      tls_available=False)
    s.client_data(m.encode_startup_message({"user": "nosuchuser"}))
    first = b"n,,n=,r=abcdefgh"
    out = sent(s.client_data(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)))
    assert out.endswith(b",i=10000")


def test_oversized_login_message_names_the_real_cap(tmp_path: Path) -> None:
    # Before login the cap is PostgreSQL's 65,535 bytes, whatever limits.max_message_length (64 MiB by default).
    s = ClientSession(make_config(tmp_path), session_id="s", client_address="a", throttle=AuthThrottle(),
                      clock=lambda: 0.0, tls_available=False)
    s.client_data(m.encode_startup_message({"user": "alice"}))
    [close] = s.client_data(b"p" + struct.pack("!i", 70000) + b"x" * 16)
    assert close.error.sqlstate == "54000"
    assert close.error.message == "message of 70000 bytes exceeds pgtenant's limit of 65535 bytes"


def test_ssl_request_then_startup(session: ClientSession) -> None:
    actions = session.client_data(m.encode_ssl_request())
    assert sent(actions) == b"S" and isinstance(actions[-1], StartClientTls)
    assert session.state is State.LOGIN and session.row().state == "tls_handshake"
    session.tls_done()
    assert session.row().state == "startup" and session.info.tls
    # A second SSLRequest inside TLS is a protocol violation.
    [close] = session.client_data(m.encode_ssl_request())
    assert isinstance(close, CloseClient) and close.error.sqlstate == "08P01"


def test_ssl_request_without_tls_configured(tmp_path: Path) -> None:
    s = ClientSession(make_config(tmp_path), session_id="s", client_address="a", throttle=AuthThrottle(),
                      clock=lambda: 0.0, tls_available=False)
    assert sent(s.client_data(m.encode_ssl_request())) == b"N"
    assert s.login is not None and s.login.state is LoginState.STARTUP


def test_a_flood_of_negotiation_requests_in_one_write_ends_in_one_error(tmp_path: Path) -> None:
    """32,768 GSSENCRequests in one write crashed the compiled proxy (a recursion per packet; red-team finding):
    the first is answered N, the bytes after it are refused like PostgreSQL refuses them, nothing recurses."""
    s = ClientSession(make_config(tmp_path), session_id="s", client_address="a", throttle=AuthThrottle(),
                      clock=lambda: 0.0, tls_available=False)
    gss = (8).to_bytes(4, "big") + m.GSSENC_REQUEST_CODE.to_bytes(4, "big")
    actions = s.client_data(gss * 40_000)
    assert sent(actions[:-1]) == b"N"
    assert isinstance(actions[-1], CloseClient) and actions[-1].error.sqlstate == "08P01"
    assert s.state is State.CLOSED


def test_cancel_request(session: ClientSession) -> None:
    actions = session.client_data(m.encode_cancel_request(42, b"abcd"))
    assert actions[0] == ForwardCancel(42, b"abcd")
    assert isinstance(actions[1], CloseClient) and actions[1].error is None


def test_fragmented_startup(session: ClientSession) -> None:
    packet = m.encode_startup_message({"user": "alice"})
    for i in range(len(packet) - 1):
        assert session.client_data(packet[i : i + 1]) == []
    assert sent(session.client_data(packet[-1:]))[:1] == b"R"


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x02\x00\x00",
        m.frame(b"Q", b"SELECT 1\x00"),  # a regular message before startup
        struct.pack("!ii", 8, 1234),  # protocol 0.1234
    ],
)
def test_bad_first_packets(session: ClientSession, data: bytes) -> None:
    actions = session.client_data(data)
    assert isinstance(actions[-1], CloseClient) and actions[-1].error.sqlstate in ("08P01", "0A000")
    assert session.state is State.CLOSED


def test_non_password_message_during_auth(session: ClientSession) -> None:
    session.client_data(m.encode_startup_message({"user": "alice"}))
    [close] = session.client_data(m.Query("SELECT 1").encode())
    assert close.error.sqlstate == "08P01" and "expected SASL response" in close.error.message


def test_oversized_message_in_relay(session: ClientSession) -> None:
    login(session)
    attach(session)
    release, close = session.client_data(b"Q" + struct.pack("!I", 10_000))
    assert close.error.sqlstate == "54000"
    assert not release.reusable  # (a read that breaks off: its server is closed, see test_session_pooling.py)


def test_data_while_connecting_is_a_violation(session: ClientSession) -> None:
    login(session)
    [close] = session.client_data(m.Query("SELECT 1").encode())
    assert close.error.sqlstate == "08P01"


def test_timeout_only_before_ready(session: ClientSession) -> None:
    login(session)
    attach(session)
    assert session.timeout() == []


def test_transition_table_is_closed() -> None:
    # Every (state, event) pair not in the table is refused; CLOSE is allowed from anywhere.
    for state in State:
        assert TRANSITIONS[(state, Event.CLOSE)] is State.CLOSED
    assert (State.READY, Event.AUTH_OK) not in TRANSITIONS
    assert (State.CONNECTING, Event.ADMIN_OK) not in TRANSITIONS
    # The login's table too: CLOSE from anywhere, authentication only after the SCRAM exchange.
    for state in LoginState:
        assert LOGIN_TRANSITIONS[(state, LoginEvent.CLOSE)] is LoginState.CLOSED
    assert (LoginState.STARTUP, LoginEvent.AUTH_OK) not in LOGIN_TRANSITIONS
    assert (LoginState.SASL_INITIAL, LoginEvent.AUTH_OK) not in LOGIN_TRANSITIONS


def test_invalid_utf8_is_22021_and_session_stays(session: ClientSession) -> None:
    login(session)
    attach(session)
    session.enable_policy(lambda kind, sql: __import__("proxy.policy.model", fromlist=["Allow"]).Allow())
    [relay] = session.client_data(m.frame(b"Q", b"SELECT '\xff'\x00"))
    forwarded = b"".join(bytes(c) for c in relay.chunks)
    assert b"\xff" not in forwarded and b"pgtenant_denied_" in forwarded
    marker = forwarded[5:-1]
    err = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": f'syntax error at or near "{marker.decode()}"'})
    [back] = session.server_data(err + m.ready_for_query(b"I"))
    out = b"".join(bytes(c) for c in back.chunks)
    assert b"C22021\x00" in out and out.endswith(m.ready_for_query(b"I"))
    assert session.state is State.READY
    # A Parse with binary parameter type OIDs (0xff bytes) is not mistaken for invalid text.
    parse = m.Parse("S_1", "SELECT $1", b"\x00\x01\x00\x00\x00\xff").encode()
    [relay] = session.client_data(parse)
    assert b"".join(bytes(c) for c in relay.chunks) == parse


def test_admin_login_ends_the_startup_deadline(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\nops = "{make_verifier("pw")}"\n')
    config = parse_config(
        {"secrets_file": "s.toml", "backends": {"main": {}}, "admin": {"users": ["ops"]},
         "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"}},
         "users": {"alice": {"tenant": "acme"}}},
        base=tmp_path,
    )
    s = ClientSession(config, session_id="s", client_address="a", throttle=AuthThrottle(), clock=lambda: 0.0,
                      tls_available=False)
    s.client_data(m.encode_startup_message({"user": "ops", "database": "pgtenant"}))
    client = ScramClient(["SCRAM-SHA-256"], "ops", "pw")
    first = client.get_client_first().encode()
    out = sent(s.client_data(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)))
    client.set_server_first(out[9:].decode())
    actions = s.client_data(m.frame(b"p", client.get_client_final().encode()))
    assert s.state is State.ADMIN and isinstance(actions[-1], AdminLogin)  # the driver logs, counts, audits it
    assert s.timeout() == [] and s.state is State.ADMIN  # the startup deadline no longer applies


# --- the session's context (temporary relations, search_path) --------------------------------------------------


class _ContextDecider:
    """A decision function per session context, like Gate.with_context: records the contexts it was made for."""

    def __init__(self, made: list[object], context: object) -> None:
        made.append(context)
        self.context = context

    def __call__(self, kind: str, sql: str):
        from proxy.policy.model import SET_PATH, TEMP_TABLE, Allow, Change

        if sql.startswith("CREATE"):
            return Allow(changes=(Change(0, TEMP_TABLE, sql.split()[-1]),))
        if sql.startswith("SET"):
            return Allow(changes=(Change(0, SET_PATH, path=("public",), shown="globex, public"),))
        return Allow()

    def current(self) -> object:
        return self.context


def _context_session(session: ClientSession) -> list[object]:
    from proxy.policy.model import EMPTY_CONTEXT

    made: list[object] = []
    login(session)
    attach(session)
    session.enable_policy(_ContextDecider(made, EMPTY_CONTEXT), lambda: EMPTY_CONTEXT,
                          lambda context: _ContextDecider(made, context))
    return made


def _answer(session: ClientSession, *messages: bytes) -> bytes:
    [relay] = [a for a in session.server_data(b"".join(messages))
               if not isinstance(a, (AnswerWithheld, LastLineGuarded))]
    return b"".join(bytes(c) for c in relay.chunks)


def test_a_decided_change_is_decided_in_at_once_and_kept_when_it_succeeds(session: ClientSession) -> None:
    made = _context_session(session)
    session.client_data(m.Query("CREATE TEMP TABLE t").encode())
    assert made[-1].temp_tables == {"t"} and session.context.belief.temp_tables == {"t"}
    _answer(session, m.frame(b"C", b"CREATE TABLE\x00"), m.ready_for_query(b"I"))
    assert session.context.committed.temp_tables == {"t"}
    assert session.decide is not None and session.decide.context.temp_tables == {"t"}  # type: ignore[attr-defined]
    assert session._policy_token() is made[-1]


def test_a_failed_change_is_taken_back(session: ClientSession) -> None:
    from proxy.policy.model import EMPTY_CONTEXT

    made = _context_session(session)
    session.client_data(m.Query("CREATE TEMP TABLE t").encode())
    err = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42P07", "M": "relation already exists"})
    _answer(session, err, m.ready_for_query(b"I"))
    assert made[-1] is EMPTY_CONTEXT and session.context.idle and not session._tracking


def test_a_pipelined_parse_sees_the_create_parsed_before_it(session: ClientSession) -> None:
    made = _context_session(session)
    bind = m.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
    execute = m.frame(b"E", b"\x00" + struct.pack("!i", 0))
    session.client_data(m.Parse("", "CREATE TEMP TABLE t", b"\x00\x00").encode() + bind + execute
                        + m.Parse("", "INSERT INTO t VALUES (1)", b"\x00\x00").encode() + bind + execute
                        + m.SYNC_MESSAGE)
    assert made[-1].temp_tables == {"t"}
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.frame(b"C", b"CREATE TABLE\x00"),
            m.frame(b"1", b""), m.frame(b"2", b""), m.frame(b"C", b"INSERT 0 1\x00"), m.ready_for_query(b"I"))
    assert session.context.committed.temp_tables == {"t"}


def test_parameter_status_of_search_path_shows_the_clients_value(session: ClientSession) -> None:
    _context_session(session)
    session.client_data(m.Query("SET search_path = globex, public").encode())
    reported = f"{marked_entry('globex, public')}, public"  # what PostgreSQL has (settings.marked_entry)
    out = _answer(session, m.parameter_status("search_path", reported), m.frame(b"C", b"SET\x00"),
                  m.ready_for_query(b"I"))
    assert out.startswith(m.parameter_status("search_path", "globex, public"))


# --- decisions made off the event loop: the message and everything after it wait, in order -------------------

_HOLD_MESSAGES = st.one_of(
    st.builds(lambda i, slow: m.Query(f"SELECT {i}{' -- slow' if slow else ''}{' -- deny' if i % 3 == 0 else ''}")
              .encode(), st.integers(0, 99), st.booleans()),
    st.builds(lambda i, slow: m.Parse(f"s{i}", f"SELECT {i}{' /* slow */' if slow else ''}", b"\x00\x00").encode(),
              st.integers(0, 99), st.booleans()),
    st.just(m.frame(b"B", b"\x00s1\x00" + struct.pack("!hhh", 0, 0, 0))),
    st.just(m.frame(b"E", b"\x00" + struct.pack("!i", 0))), st.just(m.SYNC_MESSAGE),
    st.builds(lambda n: m.frame(b"d", m.Query("SELECT 'slow'").encode() * n), st.integers(0, 50)),
)


def _decision(sql: str) -> Decision:
    if "deny" in sql:
        return Deny("42501", "no", "", "r")
    return Rewrite(sql.replace("SELECT", "SELECT /* r */"), ("r",)) if "7" in sql else Allow()


def _relayed(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if isinstance(a, RelayToServer) for c in a.chunks)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(_HOLD_MESSAGES, min_size=1, max_size=20), st.lists(st.integers(1, 300), min_size=1, max_size=6),
       st.lists(st.booleans(), min_size=1, max_size=5))
def test_a_decision_made_elsewhere_holds_everything_after_it_in_order(
    tmp_path: Path, msgs: list[bytes], cuts: list[int], early: list[bool]
) -> None:
    """Some statements ("slow") are decided elsewhere: whatever the chunking, and whether more bytes arrive while one
    is pending, every message reaches the backend once, in the client's order, with its statement's decision."""
    s = ClientSession(make_config(tmp_path, max_message_length=1 << 20), session_id="s1", client_address="10.0.0.1",
                      throttle=AuthThrottle(max_failures=2), clock=lambda: 100.0, tls_available=False)
    login(s)
    attach(s)
    decided: list[str] = []

    def decide(kind: str, sql: str) -> Decision | Pending:
        if "slow" in sql:
            return Pending(None, None, sql)  # type: ignore[arg-type]
        decided.append(sql)
        return _decision(sql)

    s.enable_policy(decide, object)  # a fresh policy token each time: every Parse is decided (no memo)
    data = b"".join(msgs)
    out, pending, pos, i = b"", [], 0, 0

    def run(actions: list) -> None:
        nonlocal out
        out += _relayed(actions)
        pending.extend(a.pending for a in actions if isinstance(a, RunDecision))

    while pos < len(data) or pending:
        if pending and (pos >= len(data) or not early[i % len(early)]):
            p = pending.pop(0)
            assert not pending  # one decision at a time
            decided.append(p.sql)
            run(s.decision_ready(_decision(p.sql)))
        else:
            step = cuts[i % len(cuts)]
            actions = s.client_data(data[pos : pos + step])
            assert not pending or actions == []  # bytes arriving while a decision is pending are only kept
            run(actions)
            pos += step
        i += 1
    sent_frames, client_frames = frames(out), frames(data)
    assert [t for t, _ in sent_frames] == [t for t, _ in client_frames]
    # (nothing is answered here: a Parse of a name parsed before is refused as the server refuses it, undecided)
    duplicates = refused_parses(client_frames)
    statements = [m.Query.decode(b).sql if t == b"Q" else m.Parse.decode(b).sql
                  for (t, b), dup in zip(client_frames, duplicates, strict=True) if t in (b"Q", b"P") and not dup]
    assert decided == statements  # each decided once, in order
    for (t, body), (_, original), dup in zip(sent_frames, client_frames, duplicates, strict=True):
        if dup:
            assert m.Parse.decode(body).sql.startswith("pgtenant_denied_")
        elif t in (b"Q", b"P"):
            sql = m.Query.decode(original).sql if t == b"Q" else m.Parse.decode(original).sql
            got = m.Query.decode(body).sql if t == b"Q" else m.Parse.decode(body).sql
            d = _decision(sql)
            if type(d) is Deny:
                assert got.startswith("pgtenant_denied_")
            else:
                assert got == (d.sql if type(d) is Rewrite else sql)
        else:
            assert body == original


def test_pending_denials_are_bounded_in_bytes(session: ClientSession) -> None:
    login(session)
    attach(session)
    session.enable_policy(lambda kind, sql: Deny("42501", "x" * 900, "", "r"))
    for i in range(5000):
        session.client_data(m.Query(f"SELECT {i}").encode())
    assert session._denial_bytes <= 1 << 20 and 0 < len(session._denials) < 5000
    assert session._denial_bytes == sum(200 + len(e.message) for e in session._denials.values())


def test_a_long_parse_is_not_memoized(tmp_path: Path) -> None:
    """The memo would keep a Parse's body until the next one: a long one is decided again instead."""
    s = ClientSession(make_config(tmp_path, max_message_length=1 << 20), session_id="s1", client_address="10.0.0.1",
                      throttle=AuthThrottle(max_failures=2), clock=lambda: 100.0, tls_available=False)
    login(s)
    attach(s)
    decided: list[str] = []
    s.enable_policy(lambda kind, sql: decided.append(sql) or Allow(), lambda: None)
    short = m.Parse("", "SELECT 1", b"\x00\x00").encode()
    long = m.Parse("", "SELECT 1" + " " * 70_000, b"\x00\x00").encode()
    for parse in (short, short, long, long):
        s.client_data(parse + m.SYNC_MESSAGE)
    assert len(decided) == 3 and s._parse_memo is None


def _backend_error(sqlstate: str, message: str) -> bytes:
    return m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": sqlstate, "M": message})


def test_a_denial_at_run_fails_each_run_of_the_statement(session: ClientSession) -> None:
    """A statement PostgreSQL analyzes when it runs, naming a hidden schema (Deny.at_run): its Parse reaches the
    server as a CLOSE of a marker cursor, which succeeds at Parse and fails at every Execute; each failure is
    answered with the denial (a missing schema's error), the first and the next."""
    login(session)
    attach(session)
    denial = Deny("3F000", 'schema "nix" does not exist', "", "foreign_schema", at_run=True)
    session.enable_policy(lambda kind, sql: denial)
    parse = m.Parse("s1", "CREATE TEMP VIEW v AS SELECT * FROM hid.t", b"\x00\x00").encode()
    out = _relayed(session.client_data(parse + m.SYNC_MESSAGE))
    [(_, body), _] = frames(out)
    text = m.Parse.decode(body).sql
    assert text.startswith("CLOSE pgtenant_denied_") and m.Parse.decode(body).name == "s1"
    marker = text.removeprefix("CLOSE ")
    _answer(session, m.frame(b"1", b""), m.ready_for_query(b"I"))
    for _ in range(2):  # Bind + Execute + Sync, twice
        session.client_data(m.frame(b"B", b"\x00s1\x00" + struct.pack("!hhh", 0, 0, 0))
                            + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) + m.SYNC_MESSAGE)
        got = _answer(session, m.frame(b"2", b""),
                      _backend_error("34000", f'cursor "{marker}" does not exist'), m.ready_for_query(b"I"))
        assert b'schema "nix" does not exist' in got and b"C3F000\x00" in got and marker.encode() not in got


def test_a_denial_at_run_whose_entry_is_gone_is_still_the_proxys(session: ClientSession) -> None:
    """A marker cursor's failure whose denial was evicted is answered as the proxy's (never the backend's text)."""
    login(session)
    attach(session)
    session.enable_policy(lambda kind, sql: Allow())
    session.client_data(m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    marker = "pgtenant_denied_0123456789abcdef"
    got = _answer(session, _backend_error("34000", f'cursor "{marker}" does not exist'), m.ready_for_query(b"I"))
    assert marker.encode() not in got and got[:1] == b"E"


def test_the_statements_before_a_hidden_schema_are_sent_first(session: ClientSession) -> None:
    """Deny.before: the statements ahead of the refused one are forwarded (as decided), then the marker CLOSE."""
    login(session)
    attach(session)
    before = Rewrite("SELECT 1 /* r */; ", ("r",))
    denial = Deny("42P01", 'relation "nix.t" does not exist', "", "foreign_schema", 24, (2, 2), before=before)
    session.enable_policy(lambda kind, sql: denial)
    out = _relayed(session.client_data(m.Query("SELECT 1; SELECT * FROM hid.t").encode()))
    [(_, body)] = frames(out)
    text = m.Query.decode(body).sql
    assert text.startswith("SELECT 1 /* r */; \n;CLOSE pgtenant_denied_"), text
    marker = text.rsplit(" ", 1)[1]
    got = _answer(session, m.frame(b"C", b"SELECT 1\x00"),
                  _backend_error("34000", f'cursor "{marker}" does not exist'), m.ready_for_query(b"I"))
    assert b'relation "nix.t" does not exist' in got and b"P24\x00" in got and marker.encode() not in got


def test_a_parse_of_several_statements_naming_a_hidden_schema_is_postgresqls_42601(session: ClientSession) -> None:
    """PostgreSQL refuses a Parse of several statements before it looks a name up: a hidden schema in one of them
    gets that answer, as a missing one does."""
    login(session)
    attach(session)
    denial = Deny("42P01", 'relation "nix.t" does not exist', "", "foreign_schema", 24, (2, 2))
    session.enable_policy(lambda kind, sql: denial)
    out = _relayed(session.client_data(m.Parse("s1", "SELECT 1; SELECT * FROM hid.t", b"\x00\x00").encode()
                                       + m.SYNC_MESSAGE))
    marker = m.Parse.decode(frames(out)[0][1]).sql
    got = _answer(session, _backend_error("42601", f'syntax error at or near "{marker}"'), m.ready_for_query(b"I"))
    assert b"C42601\x00" in got and b"cannot insert multiple commands into a prepared statement" in got
    assert b"nix" not in got


@pytest.mark.parametrize(("minor", "options", "agreed"), [
    (0, {}, None), (2, {}, None), (1, {}, m.PROTOCOL_3_0), (3, {}, m.PROTOCOL_3_2),
    (2, {"_pq_.x": "1"}, m.PROTOCOL_3_2), (0, {"_pq_.x": "1"}, m.PROTOCOL_3_0),
])
def test_protocol_3_2_is_taken_and_later_ones_negotiated_to_it(session: ClientSession, minor: int,
                                                               options: dict[str, str], agreed: int | None) -> None:
    """As PostgreSQL 18: 3.2 (a longer cancel key) when asked for 3.2 or later, else 3.0; a NegotiateProtocolVersion
    names what was not taken as asked."""
    pairs = {"user": "alice", **options}
    body = struct.pack("!i", (3 << 16) | minor) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                                           for k, v in pairs.items()) + b"\0"
    out = sent(session.client_data(struct.pack("!i", len(body) + 4) + body))
    first = frames(out)[0]
    if agreed is None:
        assert first[0] == b"R"
    else:
        assert first[0] == b"v" and struct.unpack_from("!ii", first[1]) == (agreed, len(options))
    assert session.info.protocol_minor == (2 if minor >= 2 else 0)
    assert session._client_key() == (session.process_id, session.secret_key if minor >= 2 else session.secret_key[:4])


# --- hidden schemas: where the reserved names travel (proxy/hiddennames.py, red team 9a2 H1, H3) --------------------

_R = "pg_9" + "a" * 24  # a reserved name (policy/hiding.reserved_name's shape)
_LIKE = "CREATE TEMP TABLE IF NOT EXISTS t0 (LIKE hid.t)"


def _hiding(session: ClientSession, moved: bool = False) -> None:
    """A session whose policy sends `hid` as the reserved name _R (as policy/hiding.py decides; with `moved`, the
    renamed span recorded too, for positions)."""
    login(session)
    attach(session)

    def decide(kind: str, sql: str) -> Decision:
        if "hid." not in sql:
            return Allow()
        at = sql.index("hid.")
        spans = ((at, at + len(_R) + 2, len(_R) + 2 - 3),) if moved else ()
        return Rewrite(sql.replace("hid.", f'"{_R}".'), ("hidden_schema",), names=((_R, "hid"),), moved=spans)

    session.enable_policy(decide)


def _missing(type_byte: bytes = b"E") -> bytes:
    severity = "ERROR" if type_byte == b"E" else "NOTICE"
    code = "3F000" if type_byte == b"E" else "00000"
    return m.encode_error_fields(type_byte, {"S": severity, "V": severity, "C": code,
                                             "M": f'schema "{_R}" does not exist'})


def _bind(portal: str, statement: str) -> bytes:
    return m.frame(b"B", f"{portal}\x00{statement}\x00".encode() + struct.pack("!hhh", 0, 0, 0))


def _execute(portal: str) -> bytes:
    return m.frame(b"E", f"{portal}\x00".encode() + struct.pack("!i", 0))


@pytest.mark.parametrize(("portal", "statement"), [("p1", "s1"), ("", "")])
def test_a_portal_executed_after_a_sync_is_answered_with_its_statements_names(
        session: ClientSession, portal: str, statement: str) -> None:
    """Red team 9a2 H1: in a transaction block a portal outlives the Sync of its Bind; a utility statement is analyzed
    when the portal runs, so the answer to its Execute, in a later request, names the reserved name: the client reads
    its own name (and after the portal's Close, or its transaction's end, the names are no longer the portal's)."""
    _hiding(session)
    session.client_data(m.Query("BEGIN").encode())
    _answer(session, m.frame(b"C", b"BEGIN\x00"), m.ready_for_query(b"T"))
    session.client_data(m.Parse(statement, _LIKE, b"\x00\x00").encode() + _bind(portal, statement) + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"T"))
    assert portal in session._hidden.portals
    session.client_data(_execute(portal) + m.SYNC_MESSAGE)
    got = _answer(session, _missing(), m.ready_for_query(b"E"))
    assert b'schema "hid" does not exist' in got and _R.encode() not in got
    session.client_data(m.Query("ROLLBACK").encode())
    _answer(session, m.frame(b"C", b"ROLLBACK\x00"), m.ready_for_query(b"I"))
    assert session._hidden.portals == {}


def test_a_portals_names_go_at_its_close(session: ClientSession) -> None:
    _hiding(session)
    session.client_data(m.Parse("s1", _LIKE, b"\x00\x00").encode() + _bind("p1", "s1") + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"T"))
    session.client_data(m.frame(b"C", b"Pp1\x00") + m.SYNC_MESSAGE)
    assert session._hidden.portals == {}
    session.client_data(m.Parse("s2", "SELECT 1", b"\x00\x00").encode() + _bind("p1", "s2") + m.SYNC_MESSAGE)
    assert session._hidden.portals == {}


def test_a_transaction_end_keeps_the_portals_of_requests_behind_it(session: ClientSession) -> None:
    """The portals of the request answered with ReadyForQuery 'I' are gone; a pipelined request's Bind stays."""
    _hiding(session)
    session.client_data(m.Query("COMMIT").encode())
    session.client_data(m.Parse("s1", _LIKE, b"\x00\x00").encode() + _bind("p1", "s1") + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"C", b"COMMIT\x00"), m.ready_for_query(b"I"))
    assert "p1" in session._hidden.portals
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"I"))
    assert session._hidden.portals == {}


@pytest.mark.parametrize("type_byte", [b"E", b"N"])
def test_an_answer_whose_request_the_tracker_dropped_is_withheld(session: ClientSession, type_byte: bytes) -> None:
    """Red team 9a2 H3: past 10,000 requests in flight the tracker drops the oldest; the renamed request's answer then
    comes while another request heads the queue. No reserved name the session sent reaches the client: the answer is
    withheld (a generic refusal naming its rule), and the session goes on."""
    _hiding(session)
    session.client_data(m.Query("SELECT pg_sleep(1); SELECT 1 FROM hid.t").encode()
                        + m.Query("SELECT 1").encode() * 10_000)
    assert session.tracker.dropped == 1
    got = _answer(session, _missing(type_byte))
    assert _R.encode() not in got and b"answer_withheld" in got and got[:1] == type_byte
    got = _answer(session, m.ready_for_query(b"I"), m.frame(b"C", b"SELECT 1\x00"))
    assert b"SELECT 1" in got


def test_a_reserved_name_in_a_computed_value_is_not_written_back(session: ClientSession) -> None:
    """Red team 9a2 H7: only PostgreSQL's own message shapes naming the statement's objects get the client's name;
    a computed value quoting a reserved name is withheld, never rewritten."""
    _hiding(session)
    session.client_data(m.Query(f"{_LIKE}; SELECT current_setting('x')").encode())
    got = _answer(session, m.encode_error_fields(b"E", {
        "S": "ERROR", "V": "ERROR", "C": "42704", "M": f'unrecognized configuration parameter "{_R}.zz"'}))
    assert b'"hid.zz"' not in got and _R.encode() not in got and b"answer_withheld" in got


# --- the last line over every message that carries text (issue 14: red team 9a5 F5, F8, F9) ----------------------

def _run(session: ClientSession, *messages: bytes) -> tuple[bytes, list]:
    """The bytes relayed to the client and the other actions of one read of the server's `messages`."""
    actions = session.server_data(b"".join(messages))
    relayed = b"".join(bytes(c) for a in actions if isinstance(a, RelayToClient) for c in a.chunks)
    return relayed, [a for a in actions if not isinstance(a, (RelayToClient, LastLineGuarded))]


_ROW_DESC = m.row_description(["a"])
_LEAKS = {  # a message of each type holding the reserved name, as PostgreSQL would send it
    "data_row": m.data_row([f"Output: set_config('x', '{_R}.english')".encode()]),
    "row_description": m.row_description([f"{_R}.english"]),
    "command_complete": m.frame(b"C", f"SELECT {_R}\x00".encode()),
    "copy_data": m.frame(b"d", f"{_R}.english\n".encode()),
    "function_call_response": m.frame(b"V", struct.pack("!i", len(_R)) + _R.encode()),
}


@pytest.mark.parametrize("kind", sorted(_LEAKS))
def test_a_result_holding_a_sent_reserved_name_is_cut_and_the_session_goes_on(session: ClientSession,
                                                                             kind: str) -> None:
    """A DataRow, RowDescription, CommandComplete, CopyData or FunctionCallResponse holding a reserved name the
    session sent is never relayed: answer_withheld in its place, the rest swallowed up to the ReadyForQuery (which
    goes through), logged and counted; the next request is relayed as ever (a name of that shape the session never
    sent too: the client may write one itself)."""
    _hiding(session)
    session.client_data(m.Query("SELECT 1 FROM hid.t; SELECT 2").encode())
    leak = _LEAKS[kind]
    before = _ROW_DESC if kind != "row_description" else b""
    own_end = m.frame(b"C", b"SELECT 1\x00") if kind != "command_complete" else b""
    got, more = _run(session, before, leak, own_end, _missing(), m.ready_for_query(b"I"))
    assert _R.encode() not in got and got.startswith(before)
    assert [t for t, _ in frames(got[len(before):])] == [b"E", b"Z"]
    assert b"answer_withheld" in got and b"C42501\x00" in got
    assert more == [AnswerWithheld(kind)]
    session.client_data(m.Query("SELECT 1").encode())  # (a name of the shape the session never sent: relayed)
    other = ("pg_9" + "b" * 24).encode()
    answer = _ROW_DESC + m.data_row([other]) + m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I")
    assert _run(session, answer) == (answer, [])


@pytest.mark.parametrize("large", [b"D", b"d"])
def test_a_large_message_after_a_cut_is_dropped_as_it_arrives(session: ClientSession, large: bytes) -> None:
    """Red team 9a7 H5: the rest of a cut result is swallowed up to its ReadyForQuery; a large DataRow or CopyData
    in it was held whole first (a 300 MB row: +0.6-0.9 GB). It is dropped as it arrives: no more than a header is
    held between reads, nothing of it reaches the client, and the cut ends at the ReadyForQuery as before."""
    _hiding(session)
    session.client_data(m.Query("SELECT 1 FROM hid.t").encode())
    got, more = _run(session, _ROW_DESC, _LEAKS["data_row"])
    assert [t for t, _ in frames(got)] == [b"T", b"E"] and more == [AnswerWithheld("data_row")]
    row = m.frame(large, b"x" * 3_000_000)
    held = []
    for at in range(0, len(row), 65536):
        got, more = _run(session, row[at : at + 65536])
        assert got == b"" and more == []
        held.append(session.backend_stream.pending)
    assert max(held) <= 5, max(held)
    got, more = _run(session, m.frame(b"C", b"SELECT 2\x00"), m.ready_for_query(b"I"))
    assert got == m.ready_for_query(b"I") and more == []
    session.client_data(m.Query("SELECT 1").encode())  # (the session goes on: the guard is the last line's again)
    answer = _ROW_DESC + m.data_row([b"x" * 100_000]) + m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I")
    assert _run(session, answer) == (answer, [])


@pytest.mark.parametrize("kind", ["parameter_status", "notification_response"])
def test_an_asynchronous_message_holding_a_sent_reserved_name_is_dropped(session: ClientSession, kind: str) -> None:
    """A ParameterStatus or NotificationResponse (no answer of the client's request: nothing to cut) holding a
    reserved name the session sent is dropped, logged and counted; the result around it goes through."""
    _hiding(session)
    session.client_data(m.Query("SELECT 1 FROM hid.t").encode())
    leak = (m.parameter_status("application_name", f"{_R}.x") if kind == "parameter_status"
            else m.frame(b"A", struct.pack("!i", 7) + b"chan\x00" + f"{_R}.x\x00".encode()))
    rest = _ROW_DESC + m.data_row([b"1"]) + m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I")
    got, more = _run(session, leak, rest)
    assert got == rest and more == [AnswerWithheld(kind)]


def test_a_withheld_result_in_an_open_transaction_block_fails_it_on_the_server(session: ClientSession) -> None:
    """Status 'T': the client was told the statement failed, the server's block goes on. As for a cut result, a
    failing statement is sent; its answers are swallowed but for its ReadyForQuery ('E'), which ends the request."""
    _hiding(session)
    session.client_data(m.Query("SELECT 1 FROM hid.t").encode())
    got, more = _run(session, _ROW_DESC, _LEAKS["data_row"], m.frame(b"C", b"SELECT 1\x00"), m.ready_for_query(b"T"))
    assert [t for t, _ in frames(got)] == [b"T", b"E"] and _R.encode() not in got
    assert more[0] == AnswerWithheld("data_row") and len(more) == 2 and isinstance(more[1], RelayToServer)
    assert [bytes(c) for c in more[1].chunks] == [m.query_message("pgtenant_result_cut_off")]
    got, more = _run(session, _NOSUCH, m.ready_for_query(b"E"))
    assert got == m.ready_for_query(b"E") and more == []


def test_a_withheld_result_in_an_open_block_with_a_request_behind_it_ends_the_session(session: ClientSession) -> None:
    """Status 'T' with another request pipelined behind it: a failing statement cannot be sent in order, so the
    session ends (FATAL answer_withheld), its server not reused."""
    _hiding(session)
    session.client_data(m.Query("SELECT 1 FROM hid.t").encode() + m.Query("SELECT 2").encode())
    got, more = _run(session, _ROW_DESC, _LEAKS["data_row"], m.frame(b"C", b"SELECT 1\x00"), m.ready_for_query(b"T"))
    assert _R.encode() not in got and [t for t, _ in frames(got)] == [b"T", b"E", b"Z"]
    closes = [a for a in more if isinstance(a, CloseClient)]
    assert len(closes) == 1 and closes[0].error.severity == "FATAL" and closes[0].error.sqlstate == "42501"
    assert any(isinstance(a, ReleaseServer) and not a.reusable for a in more)


def test_a_withheld_result_whose_request_ran_on_ends_the_session(session: ClientSession) -> None:
    """A statement after the cut one completed (the client was told the request failed): the session ends (FATAL
    answer_withheld), its server not reused."""
    _hiding(session)
    session.client_data(m.Query("SELECT 1 FROM hid.t; UPDATE t SET a = 1").encode())
    got, more = _run(session, _ROW_DESC, _LEAKS["data_row"], m.frame(b"C", b"SELECT 1\x00"),
                     m.frame(b"C", b"UPDATE 1\x00"), m.ready_for_query(b"I"))
    assert _R.encode() not in got and [t for t, _ in frames(got)] == [b"T", b"E", b"Z"]
    closes = [a for a in more if isinstance(a, CloseClient)]
    assert len(closes) == 1 and closes[0].error.severity == "FATAL" and closes[0].error.sqlstate == "42501"
    assert any(isinstance(a, ReleaseServer) and not a.reusable for a in more)


# Every way a statement names a schema ({s}), and whether the last line's guard is set after it (for a hidden and a
# missing schema alike): where it names one as a qualifier, sent (both renamed, red team 9a8 N2; the statements
# run before a refused one too), not where the statement is refused or the name is a value or a statement's object
# (no reserved name sent for either). (query, parse) where they differ.
_NAMINGS = (
    ("SELECT * FROM {s}.zz", True), ('SELECT * FROM "{s}".zz', True), ("SELECT {s}.f(1)", False),
    ("SELECT NULL::{s}.t", True), ("SELECT 1 OPERATOR({s}.+) 1", True), ('SELECT \'a\' COLLATE {s}."C"', True),
    ("SELECT {s}.zz.id", True), ("LOCK TABLE {s}.zz", False), ("LOCK {s}.zz IN ACCESS SHARE MODE", True),
    ("COPY {s}.zz TO STDOUT", True), ("CREATE TEMP TABLE t (LIKE {s}.zz)", True),
    ("CREATE TABLE {s}.t (a int)", False), ("DROP SCHEMA {s}", False), ("CREATE SCHEMA {s}", False),
    ("GRANT USAGE ON SCHEMA {s} TO PUBLIC", False), ("SET search_path = {s}, public", False),
    ("SELECT pg_catalog.set_config('search_path', '{s}', false)", False), ("SELECT to_regclass('{s}.zz')", False),
    ("SELECT '{s}.zz'::regclass", False), ("SET default_text_search_config = '{s}.english'", False),
    ("SELECT 1; SELECT * FROM {s}.zz", True),
    ("SELECT * FROM {s}.zz; SET default_text_search_config = 'x.english'", (True, False)),
    ("PREPARE p AS SELECT * FROM {s}.zz", True), ("DECLARE c CURSOR FOR SELECT * FROM {s}.zz", True),
    ("EXPLAIN SELECT * FROM {s}.zz", True), ("SELECT 1 FROM zz WHERE EXISTS (SELECT 1 FROM {s}.zz)", True),
)


@pytest.mark.parametrize("strategy", ["shared", "database"])
def test_a_hidden_and_a_missing_schema_set_the_last_lines_guard_alike(tmp_path: Path, strategy: str) -> None:
    """Red team 9a6 G3: the backend stream's guard (its cost on a large result told a hidden schema from a missing
    one) is set alike after a statement naming either, in every way of naming one, by Query and by Parse, and logged
    alike (LastLineGuarded: last_line_guarded)."""
    from proxy.policy import TenantPolicy, decide

    extra = {"tenant_value": "acme", "scoped_tables": {("public", "zz"): "tenant_id"}} if strategy == "shared" else {}
    policy = TenantPolicy(tenant="acme", strategy=strategy, hidden_schemas=frozenset({"globex"}),  # type: ignore
                          known_schemas=frozenset({"public"}), **extra)  # type: ignore[arg-type]

    def guarded(sql: str, parse: bool) -> bool:
        s = ClientSession(make_config(tmp_path), session_id="g", client_address="10.0.0.1",
                          throttle=AuthThrottle(max_failures=2), clock=lambda: 100.0, tls_available=True)
        login(s)
        attach(s)
        s.enable_policy(lambda kind, text: decide(policy, text))
        s.client_data(m.Parse("", sql, b"\x00\x00").encode() + m.SYNC_MESSAGE if parse else m.Query(sql).encode())
        logged = [a for a in s.server_data(m.ready_for_query(b"I")) if isinstance(a, LastLineGuarded)]
        guarded = s._hidden is not None and s._hidden.guarded
        assert len(logged) == guarded, (sql, logged)  # (logged once: last_line_guarded)
        assert s.guarded() == guarded, sql  # (what the server link asks: a large read then yields the loop)
        return guarded

    for template, expected in _NAMINGS:
        for parse in (False, True):
            want = expected if type(expected) is bool else expected[parse]  # (a Parse of it is refused whole)
            got = (guarded(template.format(s="globex"), parse), guarded(template.format(s="glebox"), parse))
            assert got == (want, want), (template, parse, got)


@pytest.mark.parametrize("strategy", ["shared", "database"])
@pytest.mark.parametrize("extended", [False, True], ids=["query", "extended"])
def test_a_hidden_and_a_missing_schema_are_sent_and_answered_alike(tmp_path: Path, strategy: str,
                                                                    extended: bool) -> None:
    """Red team 9a8 N2: a statement naming a hidden schema (globex) and one naming a missing one (glebox) do the same
    work in the session: both are sent renamed (the same bytes but for the reserved name), PostgreSQL's answer naming
    either reserved name is written back (decoded, the client's name and position put back, framed again) to the
    answer PostgreSQL gives for the client's text, and the same actions follow."""
    from proxy.policy import TenantPolicy, decide

    extra = {"tenant_value": "acme", "scoped_tables": {("public", "zz"): "tenant_id"}} if strategy == "shared" else {}
    policy = TenantPolicy(tenant="acme", strategy=strategy, hidden_schemas=frozenset({"globex"}),  # type: ignore
                          known_schemas=frozenset({"public"}), **extra)  # type: ignore[arg-type]
    seen = {}
    for name in ("globex", "glebox"):
        s = ClientSession(make_config(tmp_path), session_id="n2", client_address="10.0.0.1",
                          throttle=AuthThrottle(max_failures=2), clock=lambda: 100.0, tls_available=True)
        login(s)
        attach(s)
        s.enable_policy(lambda kind, text: decide(policy, text))
        sql = f"SELECT 1 FROM {name}.orders AS a0 WHERE 'x' = 'y'"
        sent = b"".join(bytes(c) for a in s.client_data(_extended(sql) + m.SYNC_MESSAGE if extended else
                                                        m.Query(sql).encode())
                        if isinstance(a, RelayToServer) for c in a.chunks)
        [reserved] = {r.decode() for r in re.findall(rb"pg_9[a-z2-7]{24}", sent)}
        assert name.encode() not in sent, sent  # (renamed: hidden and missing alike)
        start = sent.index(b"SELECT")
        at = sent[start : sent.index(b"\x00", start)].decode().index(f'"{reserved}"')  # (in the text PostgreSQL got)
        error = m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "42P01", "P": str(at + 1),
                                             "M": f'relation "{reserved}.orders" does not exist'})
        answers = [m.frame(b"1", b""), m.frame(b"2", b"")] if extended else []
        relayed, other = _run(s, *answers, error, m.ready_for_query(b"I"))
        fields = [m.decode_error_fields(body) for t, body, _ in m.split_messages(relayed)[0] if t == ord("E")]
        assert fields and fields[0]["M"] == f'relation "{name}.orders" does not exist', fields
        assert fields[0]["P"] == str(sql.index(name) + 1), fields  # (PostgreSQL's position for the client's text)
        seen[name] = (sent.replace(reserved.encode(), b"R").replace(name.encode(), b"S"),
                      relayed.replace(name.encode(), b"S"), [type(a).__name__ for a in other], s._hidden.guarded)
    assert seen["globex"] == seen["glebox"], seen


# --- an error in an extended message: PostgreSQL skips up to the Sync, a Query too (red team 9a3 J8) --------------

_NOSUCH = m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "42703", "M": 'column "nosuch" does not exist'})
_DONE = m.frame(b"C", b"SELECT 1\x00")


def _relation_missing() -> bytes:
    return m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "42P01",
                                        "M": f'relation "{_R}.t" does not exist', "P": "15"})


def _extended(sql: str) -> bytes:
    return m.Parse("", sql, b"\x00\x00").encode() + _bind("", "") + _execute("")


# (what the client sends, what PostgreSQL answers): a Query inside an extended batch is skipped when the batch failed
# before it (one ReadyForQuery, the Sync's), else answered as a simple query (its own ReadyForQuery, then the Sync's).
_INSIDE_BATCH = {
    "failed": (_extended("SELECT nosuch") + m.Query("SELECT 1").encode() + m.SYNC_MESSAGE,
               [_NOSUCH, m.ready_for_query(b"I")]),
    "failed, more after": (_extended("SELECT nosuch") + m.Query("SELECT 1").encode() + m.Query("SELECT 1").encode()
                           + _extended("SELECT 1") + m.frame(b"F", b"\x00\x00\x00\x01") + m.SYNC_MESSAGE,
                           [_NOSUCH, m.ready_for_query(b"I")]),
    "answered": (_extended("SELECT 1") + m.Query("SELECT 1").encode() + m.SYNC_MESSAGE,
                 [m.frame(b"1", b""), m.frame(b"2", b""), _DONE, _DONE, m.ready_for_query(b"I"),
                  m.ready_for_query(b"I")]),
    "the query failed": (_extended("SELECT 1") + m.Query("SELECT nosuch").encode() + m.SYNC_MESSAGE,
                         [m.frame(b"1", b""), m.frame(b"2", b""), _DONE, _NOSUCH, m.ready_for_query(b"I"),
                          m.ready_for_query(b"I")]),
}


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("case", sorted(_INSIDE_BATCH))
def test_a_query_inside_an_extended_batch_keeps_the_requests_aligned(tmp_path: Path, case: str, cache: bool) -> None:
    """Red team 9a3 J8: whether PostgreSQL skipped a Query sent inside an extended batch (an error before it) or ran
    it, the requests stay matched with their answers: the next request's error names the client's schema (it was
    withheld, matched to the Sync's request). Without the statement maps (session pooling: skipping.Owed) and with
    them (their ledger: `Statements.skips_to_sync`)."""
    session = ClientSession(make_config(tmp_path, pool={"statement_cache": cache}), session_id="s1",
                            client_address="10.0.0.1", throttle=AuthThrottle(), clock=lambda: 100.0,
                            tls_available=False)
    _hiding(session)
    sent_, answers = _INSIDE_BATCH[case]
    session.client_data(sent_)
    _answer(session, *answers)
    assert not session.tracker.pending
    session.client_data(m.Query("SELECT 1 FROM hid.t").encode())
    got = _answer(session, _relation_missing(), m.ready_for_query(b"I"))
    assert b'relation "hid.t" does not exist' in got and b"answer_withheld" not in got
    assert not session.tracker.pending


@pytest.mark.parametrize("cache", [False, True])
def test_a_failed_batch_answered_after_more_was_sent_joins_what_it_skipped(tmp_path: Path, cache: bool) -> None:
    """J8 pipelined: the requests sent after the failed batch's Query, up to its Sync, are skipped with it (never
    answered): the request sent after that Sync gets the next answer."""
    session = ClientSession(make_config(tmp_path, pool={"statement_cache": cache}), session_id="s1",
                            client_address="10.0.0.1", throttle=AuthThrottle(), clock=lambda: 100.0,
                            tls_available=False)
    _hiding(session)
    session.client_data(_extended("SELECT nosuch") + m.Query("SELECT 1").encode() + _extended("SELECT 2")
                        + m.SYNC_MESSAGE + m.Query("SELECT 1 FROM hid.t").encode())
    assert len(session.tracker.pending) == 3
    _answer(session, _NOSUCH, m.ready_for_query(b"I"))
    assert len(session.tracker.pending) == 1
    got = _answer(session, _relation_missing(), m.ready_for_query(b"I"))
    assert b'relation "hid.t" does not exist' in got and b"answer_withheld" not in got
    assert not session.tracker.pending


@pytest.mark.parametrize("bound_first", [True, False])
def test_a_plain_portal_executed_later_is_mapped_through_no_other_statements_moves(session: ClientSession,
                                                                                   bound_first: bool) -> None:
    """Red team 9a3 J7: in a transaction a portal bound to a statement sent as written, executed in a later request
    after a portal of a renamed statement (or after a Parse of one): its error's position is PostgreSQL's, not
    moved by the other statement's reserved name."""
    _hiding(session, moved=True)
    session.client_data(m.Query("BEGIN").encode())
    _answer(session, m.frame(b"C", b"BEGIN\x00"), m.ready_for_query(b"T"))
    plain = "CREATE TEMP TABLE t" + "1" * 60 + " (LIKE nosuch)"
    at = str(plain.index("nosuch") + 1)  # past where the other statement's reserved name was sent
    session.client_data(m.Parse("s2", plain, b"\x00\x00").encode() + _bind("p2", "s2") + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"T"))
    if bound_first:
        session.client_data(m.Parse("s1", _LIKE, b"\x00\x00").encode() + _bind("p1", "s1") + m.SYNC_MESSAGE)
        _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"T"))
        session.client_data(_execute("p1") + _execute("p2") + m.SYNC_MESSAGE)
        _answer(session, m.frame(b"C", b"CREATE TABLE\x00"))
    else:
        session.client_data(m.Parse("s1", _LIKE, b"\x00\x00").encode() + _execute("p2") + m.SYNC_MESSAGE)
        _answer(session, m.frame(b"1", b""))
    got = _answer(session, m.encode_error_fields(b"E", {
        "S": "ERROR", "V": "ERROR", "C": "42P01", "M": 'relation "nosuch" does not exist', "P": at}),
        m.ready_for_query(b"E"))
    assert m.decode_error_fields(got[5:])["P"] == at, got


# --- records at PostgreSQL's confirmation: a message skipped after an error leaves none (red team 9a3 J1, J1b, J6) ---


def _session_with_cache(tmp_path: Path, cache: bool) -> ClientSession:
    session = ClientSession(make_config(tmp_path, pool={"statement_cache": cache}), session_id="s1",
                            client_address="10.0.0.1", throttle=AuthThrottle(), clock=lambda: 100.0,
                            tls_available=False)
    _hiding(session, moved=True)
    return session


_PLAIN_LIKE = "CREATE TEMP TABLE t" + "1" * 60 + " (LIKE nosuch)"
_AT = str(_PLAIN_LIKE.index("nosuch") + 1)  # past where _LIKE's reserved name is sent


def _nosuch_relation() -> bytes:
    return m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "42P01",
                                        "M": 'relation "nosuch" does not exist', "P": _AT})


@pytest.mark.parametrize("cache", [False, True])
def test_a_parse_skipped_after_an_error_leaves_the_statement_postgresql_has(tmp_path: Path, cache: bool) -> None:
    """Red team 9a3 J1: a Close and a Parse of a statement name sent after an error in their batch are skipped by
    PostgreSQL, which keeps the old statement: its records are not the renamed text's, and its Bind is refused until
    it is Parsed again (review 19a F1: the proxy's other records of it are the skipped Parse's)."""
    session = _session_with_cache(tmp_path, cache)
    session.client_data(m.Parse("s1", _PLAIN_LIKE, b"\x00\x00").encode() + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.ready_for_query(b"I"))
    session.client_data(m.Parse("", "SELECT nosuch", b"\x00\x00").encode() + m.frame(b"C", b"Ss1\x00")
                        + m.Parse("s1", _LIKE, b"\x00\x00").encode() + m.SYNC_MESSAGE)
    _answer(session, _NOSUCH, m.ready_for_query(b"I"))
    assert "s1" not in session._hidden.statements
    actions = session.client_data(_bind("", "s1") + _execute("") + m.SYNC_MESSAGE)
    [bind] = [body for a in actions if isinstance(a, RelayToServer)
              for kind, body in frames(b"".join(bytes(c) for c in a.chunks)) if kind == b"B"]
    assert bind.split(b"\x00")[1] != b"s1", bind


@pytest.mark.parametrize("cache", [False, True])
def test_a_close_skipped_after_an_error_leaves_the_portal_postgresql_has(tmp_path: Path, cache: bool) -> None:
    """Red team 9a3 J1b: a Close of a portal skipped after an error (its transaction then rolled back to a savepoint
    from before the error) leaves the portal, and its names: its run's answer names the client's schema."""
    session = _session_with_cache(tmp_path, cache)
    session.client_data(m.Query("BEGIN").encode())
    _answer(session, m.frame(b"C", b"BEGIN\x00"), m.ready_for_query(b"T"))
    session.client_data(m.Parse("s2", _LIKE, b"\x00\x00").encode() + _bind("p", "s2") + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"T"))
    session.client_data(m.Query("SAVEPOINT a").encode())
    _answer(session, m.frame(b"C", b"SAVEPOINT\x00"), m.ready_for_query(b"T"))
    session.client_data(m.Parse("", "SELECT nosuch", b"\x00\x00").encode() + m.frame(b"C", b"Pp\x00")
                        + m.SYNC_MESSAGE)
    _answer(session, _NOSUCH, m.ready_for_query(b"E"))
    assert "p" in session._hidden.portals
    session.client_data(m.Query("ROLLBACK TO a").encode())
    _answer(session, m.frame(b"C", b"ROLLBACK\x00"), m.ready_for_query(b"T"))
    session.client_data(_execute("p") + m.SYNC_MESSAGE)
    got = _answer(session, _missing(), m.ready_for_query(b"E"))
    assert b'schema "hid" does not exist' in got and b"answer_withheld" not in got, got


_SAVEPOINT_OPS = {"SAVEPOINT": SAVEPOINT, "RELEASE": RELEASE, "ROLLBACK TO": ROLLBACK_TO}


def _following_savepoints(session: ClientSession) -> None:
    """The hiding policy of `_hiding`, with the changes of SAVEPOINT, RELEASE and ROLLBACK TO statements."""
    hiding = session.decide

    def decide(kind: str, sql: str) -> Decision:
        changes = tuple(Change(at, op, one.strip()[len(word):].strip()) for at, one in enumerate(sql.split(";"))
                        for word, op in _SAVEPOINT_OPS.items() if one.strip().startswith(word))
        return Allow(changes=changes) if changes else hiding(kind, sql)

    session.enable_policy(decide)


@pytest.mark.parametrize("cache", [False, True])
def test_a_rollback_to_savepoint_drops_the_records_of_the_portals_bound_since(tmp_path: Path, cache: bool) -> None:
    """Red team 9a3 J2: ROLLBACK TO a savepoint (confirmed by its CommandComplete) drops the portals bound since it
    was set, in a savepoint released into it too: their records go; a portal bound before it keeps its record, and
    so do all at a refused ROLLBACK TO (savepoints in a Query string and in an extended batch)."""
    session = _session_with_cache(tmp_path, cache)
    _following_savepoints(session)
    session.client_data(m.Query("BEGIN").encode())
    _answer(session, m.frame(b"C", b"BEGIN\x00"), m.ready_for_query(b"T"))
    session.client_data(m.Parse("s2", _LIKE, b"\x00\x00").encode() + _bind("k", "s2") + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.ready_for_query(b"T"))
    session.client_data(m.Query("SAVEPOINT a; SAVEPOINT b").encode())
    _answer(session, m.frame(b"C", b"SAVEPOINT\x00"), m.frame(b"C", b"SAVEPOINT\x00"), m.ready_for_query(b"T"))
    session.client_data(_bind("p", "s2") + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"2", b""), m.ready_for_query(b"T"))
    session.client_data(m.Parse("", "RELEASE b", b"\x00\x00").encode() + _bind("", "") + _execute("")
                        + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.frame(b"2", b""), m.frame(b"C", b"RELEASE\x00"), m.ready_for_query(b"T"))
    assert set(session._hidden.portals) == {"k", "p"}
    session.client_data(m.Query("ROLLBACK TO nosuch").encode())
    _answer(session, m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "3B001",
                                                  "M": 'savepoint "nosuch" does not exist'}), m.ready_for_query(b"E"))
    assert set(session._hidden.portals) == {"k", "p"}
    session.client_data(m.Query("ROLLBACK TO a").encode())  # (in the failed transaction)
    _answer(session, m.frame(b"C", b"ROLLBACK\x00"), m.ready_for_query(b"T"))
    assert set(session._hidden.portals) == {"k"}


def test_a_parse_skipped_after_an_error_leaves_the_client_text_of_the_statement_postgresql_has(
        session: ClientSession) -> None:
    """Red team 9a3 J6 (session pooling): a Close and a Parse (sent as written) of a renamed statement's name,
    skipped after an error, leave its client text for pg_prepared_statements (the server still has its renamed
    text)."""
    _hiding(session)
    session.client_data(m.Parse("s1", _LIKE, b"\x00\x00").encode() + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.ready_for_query(b"I"))
    assert session._client_texts.texts == {"s1": (_LIKE, len(_LIKE))}
    session.client_data(m.Parse("", "SELECT nosuch", b"\x00\x00").encode() + m.frame(b"C", b"Ss1\x00")
                        + m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    _answer(session, _NOSUCH, m.ready_for_query(b"I"))
    assert session._client_texts.texts == {"s1": (_LIKE, len(_LIKE))}


def _duplicate(name: str) -> bytes:
    return m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "42P05",
                                        "M": f'prepared statement "{name}" already exists'})


def test_a_refused_prepare_of_a_held_name_leaves_its_client_text(session: ClientSession) -> None:
    """Red team 9a4 K6 (session pooling): a SQL PREPARE of a name a renamed protocol statement holds is refused by
    PostgreSQL (42P05), which keeps the statement: its client text stays for pg_prepared_statements (it was dropped
    when the PREPARE was sent)."""
    login(session)
    attach(session)

    def decide(kind: str, sql: str) -> Decision:
        if sql.startswith("PREPARE"):
            return Allow(changes=(Change(0, SQL_PREPARE, sql.split()[1]),))
        if "hid." not in sql:
            return Allow()
        return Rewrite(sql.replace("hid.", f'"{_R}".'), ("hidden_schema",), names=((_R, "hid"),))

    session.enable_policy(decide)
    session.client_data(m.Parse("s1", _LIKE, b"\x00\x00").encode() + m.SYNC_MESSAGE)
    _answer(session, m.frame(b"1", b""), m.ready_for_query(b"I"))
    session.client_data(m.Query("PREPARE s1 AS SELECT 1").encode())
    _answer(session, _duplicate("s1"), m.ready_for_query(b"I"))
    assert session._client_texts.texts == {"s1": (_LIKE, len(_LIKE))}
