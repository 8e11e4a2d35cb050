"""Red team 21p F1 (scripted conversations): past the request tracker's bound on requests in flight (10,000
Queries or batches to Sync sent, not answered) it dropped the oldest one's attribution and matched the answers
against the wrong request; now the session ends (FATAL 54000, too_many_in_flight) before any answer is read, and
its server is closed, not reused. Both pool modes, the simple and the extended protocol."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from proxy.actions import CloseClient, RelayToServer, ReleaseServer
from proxy.auth.throttle import AuthThrottle
from proxy.policy.model import Allow, Decision
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession, State
from tests.support.sessions import attach, login, make_config

_BOUND = 10_000  # proxy/tracking.py _MAX_PENDING (read by the compiled twin once: not patched)


def _session(tmp_path: Path, mode: str) -> ClientSession:
    session = ClientSession(make_config(tmp_path, pool={"pool_mode": mode}), session_id="s1",
                            client_address="10.0.0.1", throttle=AuthThrottle(), clock=lambda: 100.0,
                            tls_available=False)
    login(session)
    attach(session)

    def decide(kind: str, sql: str) -> Decision:
        return Allow()

    session.enable_policy(decide)
    if mode == "transaction":  # (a transaction holds the server)
        session.client_data(m.Query("BEGIN").encode())
        if session.server is None:
            attach(session)
        session.server_data(m.frame(b"C", b"BEGIN\x00") + m.ready_for_query(b"T"))
    assert session.state is State.READY and session.server is not None
    return session


def _batch(k: int) -> bytes:
    return (m.Parse("", f"SELECT {k}", b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
            + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) + m.SYNC_MESSAGE)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_more_requests_in_flight_than_followed_end_the_session(tmp_path: Path, mode: str, protocol: str) -> None:
    session = _session(tmp_path, mode)
    request = (lambda k: m.Query(f"SELECT {k}").encode()) if protocol == "simple" else _batch
    head = session.client_data(b"".join(request(k) for k in range(_BOUND - 1)))
    assert not any(isinstance(a, CloseClient) for a in head)
    # the bound reached (10,000 in flight: PostgreSQL's answers still matched), then one more in a later read
    assert not any(isinstance(a, CloseClient) for a in session.client_data(request(_BOUND)))
    actions = session.client_data(request(_BOUND + 1) + request(_BOUND + 2))
    [close] = [a for a in actions if isinstance(a, CloseClient)]
    assert close.reason is CloseReason.REQUESTS_IN_FLIGHT
    assert close.error is not None and close.error.sqlstate == "54000" and close.error.severity == "FATAL"
    assert "more than 10000 requests in flight" in close.error.message
    assert not any(isinstance(a, RelayToServer) for a in actions)  # nothing of that read reaches the server
    [release] = [a for a in actions if isinstance(a, ReleaseServer)]
    assert not release.reusable
