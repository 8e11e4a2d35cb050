"""proxy.relay: the relaying hot path, driven with scripted bytes, a recording connection and fake transports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from proxy.actions import CloseClient, ReleaseServer
from proxy.audit import AuditLog
from proxy.auth.throttle import AuthThrottle
from proxy.metrics import QueryRecorder, TenantStats
from proxy.policy.model import Allow
from proxy.protocol import messages as m
from proxy.relay import ClientRelay
from proxy.session import ClientSession, State
from tests.support.sessions import make_config


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | memoryview) -> None:
        self.out.append(bytes(data))

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        self.out.append(b"".join(bytes(c) for c in chunks))

    def is_closing(self) -> bool:
        return self.closing


class Conn:
    """Records what the relay hands back to the connection."""

    def __init__(self) -> None:
        self.ran: list[list] = []
        self.calls: list[tuple] = []

    def run(self, actions: list) -> None:
        self.ran.append(actions)

    def internal_error(self) -> None:
        self.calls.append(("internal_error",))

    def count_backend_error(self, sqlstate: str) -> None:
        self.calls.append(("backend_error", sqlstate))

    def flush_bytes(self) -> None:
        self.calls.append(("flush",))

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("lost", exc))

    def pause_writing(self) -> None:
        self.calls.append(("pause",))

    def resume_writing(self) -> None:
        self.calls.append(("resume",))


@pytest.fixture
def relay(tmp_path: Path) -> ClientRelay:
    clock = iter(range(1000)).__next__
    session = ClientSession(make_config(tmp_path), session_id="s1", client_address="10.0.0.1",
                            throttle=AuthThrottle(max_failures=2), clock=lambda: float(clock()), tls_available=False)
    session.state = State.READY
    session.server = SimpleNamespace(settings={}, status={})  # type: ignore[assignment]  # the server it holds
    session.enable_policy(lambda _kind, _sql: Allow())
    stats = TenantStats()
    audit = AuditLog(tmp_path / "audit.log", redact_literals=False)
    r = ClientRelay(Conn(), session, Transport(), Transport(), recorder=QueryRecorder((0.5, 5.0)), stats=stats,
                    metrics_enabled=True, audit=audit, audit_prefix=AuditLog.fields(session_id="s1"))
    session.report_requests(r.request_done)
    return r


def answer(tag: bytes, status: bytes = b"I") -> bytes:
    return m.frame(b"C", tag + b"\x00") + m.ready_for_query(status)


def test_plain_reads_are_written_through_and_counted(relay: ClientRelay, tmp_path: Path) -> None:
    q = m.Query("SELECT 1").encode()
    relay.data_received(q)
    assert relay.server.out == [q] and relay.owner.ran == []
    back = m.frame(b"D", b"\x00\x01\x00\x00\x00\x011") + answer(b"SELECT 1")
    relay.from_server(back)
    assert relay.client.out == [back]
    assert (relay.bytes_in, relay.bytes_out) == (len(q), len(back))
    st = relay.stats
    assert (st.queries, st.rows, st.errors, len(st.latencies())) == (1, 1, 0, 1)
    assert relay.recorder.series[("select", "ok")].snapshot()[0] == 0 and relay.recorder.rows == 1
    assert relay.owner.calls == []
    relay.audit.close()
    [line] = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert (line["session_id"], line["sql"], line["kind"], line["rows"]) == ("s1", "SELECT 1", "select", 1)


def test_anything_but_a_plain_relay_goes_to_the_connection(relay: ClientRelay) -> None:
    q = m.Query("SELECT 1").encode()
    relay.data_received(q + m.TERMINATE_MESSAGE)
    [actions] = relay.owner.ran
    assert [type(a) for a in actions][-2:] == [ReleaseServer, CloseClient]
    assert relay.server.out == []  # the connection's runner writes what precedes the Terminate


def test_closed_transports_are_not_written(relay: ClientRelay) -> None:
    relay.server.closing = relay.client.closing = True
    relay.data_received(m.Query("SELECT 1").encode())
    relay.from_server(answer(b"SELECT 0"))
    assert relay.server.out == [] and relay.client.out == []


def test_a_bug_while_relaying_is_an_internal_error(relay: ClientRelay) -> None:
    def broken(_kind: str, _sql: str) -> Allow:
        raise RuntimeError("a bug in the policy gate")

    relay.session.enable_policy(broken)
    relay.data_received(m.Query("SELECT 1").encode())
    assert relay.owner.calls == [("internal_error",)]


def test_backend_errors_and_byte_batches_are_reported(relay: ClientRelay) -> None:
    relay.data_received(m.Query("SELECT 1/0").encode())
    err = m.frame(b"E", b"SERROR\x00C22012\x00Mdivision by zero\x00\x00") + m.ready_for_query(b"I")
    relay.from_server(err)
    assert ("backend_error", "22012") in relay.owner.calls and relay.stats.errors == 1
    assert ("flush",) not in relay.owner.calls
    big = m.Query("SELECT '" + "x" * 70_000 + "'").encode()
    relay.data_received(big)
    relay.from_server(answer(b"SELECT 0"))
    assert relay.owner.calls.count(("flush",)) == 1  # once 64 KiB have passed, not per request


def test_socket_events_reach_the_owners(relay: ClientRelay) -> None:
    relay.pause_writing()
    relay.resume_writing()
    relay.connection_lost(None)
    assert relay.owner.calls == [("pause",), ("resume",), ("lost", None)]
    assert relay.eof_received() is None
