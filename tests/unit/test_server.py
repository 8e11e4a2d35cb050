"""The server connection state machine against scripted backend answers (our own SCRAM server as the backend)."""

from __future__ import annotations

import struct

from proxy.actions import SendServer, ServerFailed, ServerQueryDone, ServerReady, StartServerTls
from proxy.auth.scram import ScramServerExchange, make_verifier
from proxy.config import BackendConfig
from proxy.protocol import messages as m
from proxy.protocol.stream import Message, MessageStream
from proxy.server import ServerConnection, ServerState


def _frontend(data: bytes) -> list[Message]:
    return [i for i in MessageStream(intercept=frozenset(range(256))).feed(data) if isinstance(i, Message)]


def test_scram_startup_to_ready() -> None:
    backend = BackendConfig(name="main", user="proxy", password="pw", sslmode="disable")
    conn = ServerConnection(backend, "saas", {"pgtenant.tenant_id": "acme"})
    [start] = conn.initiate()
    assert isinstance(start, SendServer)
    startup = m.decode_startup_packet(bytes(start.data))
    assert startup.parameters == {"user": "proxy", "database": "saas", "pgtenant.tenant_id": "acme"}
    server = ScramServerExchange(make_verifier("pw"), username="proxy", mock_secret=b"x" * 32)
    [reply] = conn.data(m.authentication_sasl(server.mechanisms()))
    [init] = _frontend(bytes(reply.data))
    init_msg = m.SASLInitialResponse.decode(init.body)
    server_first = server.client_first(init_msg.mechanism, init_msg.data)
    [reply] = conn.data(m.authentication(m.AUTH_SASL_CONTINUE, server_first))
    [final] = _frontend(bytes(reply.data))
    server_final = server.client_final(final.body)
    tail = (
        m.authentication(m.AUTH_SASL_FINAL, server_final) + m.authentication(m.AUTH_OK)
        + m.parameter_status("server_version", "15.18") + m.backend_key_data(77, b"\x01\x02\x03\x04")
        + m.ready_for_query(b"I")
    )
    actions: list = []
    for i in range(len(tail)):  # byte by byte: framing must not matter
        actions += conn.data(tail[i : i + 1])
    [ready] = actions
    assert isinstance(ready, ServerReady)
    assert ready.parameters == {"server_version": "15.18"}
    assert (ready.process_id, ready.secret_key) == (77, b"\x01\x02\x03\x04")
    assert conn.state is ServerState.READY
    assert conn.row() == ("main", "proxy", "saas", 77, False, "ready")  # what SHOW SERVERS lists


def test_ssl_negotiation() -> None:
    backend = BackendConfig(name="main", sslmode="require")
    conn = ServerConnection(backend, "db", {})
    [req] = conn.initiate()
    assert bytes(req.data) == m.encode_ssl_request()
    assert conn.data(b"S") == [StartServerTls()]
    other = ServerConnection(backend, "db", {})
    other.initiate()
    [refused] = other.data(b"N")
    assert isinstance(refused, ServerFailed) and "sslmode=require" in refused.reason


def test_prefer_falls_back_to_plaintext() -> None:
    conn = ServerConnection(BackendConfig(name="main", sslmode="prefer"), "db", {})
    conn.initiate()
    [startup] = conn.data(b"N")
    assert isinstance(startup, SendServer) and conn.state is ServerState.STARTUP


def test_backend_error_during_startup() -> None:
    conn = ServerConnection(BackendConfig(name="main", sslmode="disable"), "db", {})
    conn.initiate()
    err = m.encode_error_fields(b"E", {"S": "FATAL", "C": "3D000", "M": 'database "db" does not exist'})
    [failed] = conn.data(err)
    assert isinstance(failed, ServerFailed) and "3D000" in failed.reason
    assert conn.state is ServerState.FAILED


def test_unsupported_auth_method() -> None:
    conn = ServerConnection(BackendConfig(name="main", sslmode="disable"), "db", {})
    conn.initiate()
    [failed] = conn.data(m.frame(b"R", struct.pack("!i", 7)))  # GSS
    assert isinstance(failed, ServerFailed) and "GSS" in failed.reason


def test_plaintext_injection_after_ssl_answer() -> None:
    conn = ServerConnection(BackendConfig(name="main", sslmode="require"), "db", {})
    conn.initiate()
    [failed] = conn.data(b"S" + m.ready_for_query(b"I"))
    assert isinstance(failed, ServerFailed) and "unencrypted" in failed.reason


def _ready_server() -> ServerConnection:
    conn = ServerConnection(BackendConfig(name="main", sslmode="disable"), "db", {})
    conn.initiate()
    conn.data(m.authentication(m.AUTH_OK) + m.parameter_status("application_name", "") + m.ready_for_query(b"I"))
    assert conn.state is ServerState.READY
    return conn


def _reset_answer(sent: bytes, temp_schema: bytes = b"f") -> bytes:
    nonce = sent.split(b"'")[1]
    return (m.command_complete("DISCARD ALL") + m.parameter_status("application_name", "")
            + m.ready_for_query(b"I") + m.row_description(["?column?", "pg_my_temp_schema"])
            + m.data_row([nonce, temp_schema]) + m.command_complete("SELECT 1") + m.ready_for_query(b"I"))


def test_reset_is_done_only_by_its_own_exact_answer() -> None:
    conn = _ready_server()
    conn.settings["DateStyle"] = "SET DateStyle = 'SQL'"
    conn.sequences = object()  # a session's sequence state (a column default's nextval()): DISCARD ALL ends it
    [send] = conn.reset()
    queries = [q for q in _frontend(bytes(send.data))]
    assert [m.Query.decode(q.body).sql.split("'")[0] for q in queries] == ["DISCARD ALL", "SELECT "]
    assert conn.state is ServerState.QUERYING and conn.settings == {} and conn.sequences is None
    answer = _reset_answer(bytes(send.data))
    assert conn.data(answer[:9]) == []
    assert conn.data(answer[9:]) == [ServerQueryDone(True)]
    assert conn.state is ServerState.READY
    [send] = conn.reset()  # a backend that made a temporary schema keeps it: not like a new one
    assert conn.data(_reset_answer(bytes(send.data), b"t")) == [ServerQueryDone(False, None, temp_schema=True)]
    [send] = conn.reset()  # anything else is a failed reset, not a kept temporary schema
    assert conn.data(_reset_answer(bytes(send.data), b"16391")) == [ServerQueryDone(False)]


def test_a_kept_temporary_schema_needs_the_resets_own_random_value() -> None:
    """Only the reset's own answer, its random value with `t`, tells a kept temporary schema; a forged one with
    another value is a failed reset."""
    conn = _ready_server()
    conn.reset()
    forged = m.command_complete("DISCARD ALL") + m.ready_for_query(b"I") + m.row_description(["?column?"]) + \
        m.data_row([b"guess", b"t"]) + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert conn.data(forged) == [ServerQueryDone(False)]
    conn.check()  # another query of the proxy's: no temporary schema answer applies
    assert conn.data(m.frame(b"I", b"") + m.ready_for_query(b"I")) == [ServerQueryDone(True)]


def test_a_reset_answer_behind_the_last_clients_tail_fails() -> None:
    """What the last client left on the wire comes first: a forged DISCARD ALL answer in it cannot carry the
    random value of the reset's second query."""
    conn = _ready_server()
    [send] = conn.reset()
    forged = m.command_complete("DISCARD ALL") + m.ready_for_query(b"I") + m.row_description(["?column?"]) + \
        m.data_row([b"guess", b"f"]) + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    assert conn.data(forged) == [ServerQueryDone(False)]
    tail = m.data_row([b"x"]) + m.command_complete("SELECT 1") + m.ready_for_query(b"I")
    conn2 = _ready_server()
    [send] = conn2.reset()
    [failed] = conn2.data(tail + _reset_answer(bytes(send.data)))  # a tail, then the real answer: too much
    assert isinstance(failed, ServerFailed)


def test_check_and_settings_answers() -> None:
    conn = _ready_server()
    [send] = conn.check()
    assert bytes(send.data) == m.query_message(";")
    assert conn.data(m.frame(b"I", b"") + m.ready_for_query(b"I")) == [ServerQueryDone(True)]
    [send] = conn.apply(['SET "application_name" TO \'bi\'', 'SET "DateStyle" TO \'SQL\''])
    assert m.Query.decode(_frontend(bytes(send.data))[0].body).sql == (
        'SET "application_name" TO \'bi\'; SET "DateStyle" TO \'SQL\'')
    answer = m.command_complete("SET") + m.parameter_status("application_name", "bi") + m.command_complete("SET") + \
        m.ready_for_query(b"I")
    assert conn.data(answer) == [ServerQueryDone(True)]
    assert conn.status["application_name"] == "bi"  # the ParameterStatus it reported
    [send] = conn.apply(['SET "DateStyle" TO \'nonsense\''])
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "22023", "M": 'invalid value for parameter "DateStyle"'})
    [done] = conn.data(error + m.ready_for_query(b"I"))
    assert not done.ok and done.error is not None and done.error.sqlstate == "22023"


def test_an_idle_server_that_speaks_fails() -> None:
    conn = _ready_server()
    [failed] = conn.data(m.parameter_status("application_name", "x"))
    assert isinstance(failed, ServerFailed) and conn.state is ServerState.FAILED
    conn = _ready_server()
    conn.check()
    [failed] = conn.data(m.frame(b"I", b"") + m.ready_for_query(b"I") + m.ready_for_query(b"I"))
    assert isinstance(failed, ServerFailed)  # more than its answer
