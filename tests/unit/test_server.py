"""The server connection state machine against scripted backend answers (our own SCRAM server as the backend)."""

from __future__ import annotations

import struct

from proxy.actions import SendServer, ServerFailed, ServerReady, StartServerTls
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
