"""ClientSession, scripted: a COPY FROM STDIN the client leaves idle past idle_in_transaction_timeout ends the
session (25P03) and closes its server, in session and transaction pooling (red team 9s5); one whose client keeps
sending is not ended."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.actions import AcquireServer, CloseClient, CopyInHeld, LimitReached, ReleaseServer
from proxy.auth.scram import make_verifier
from proxy.auth.throttle import AuthThrottle
from proxy.config import Config, parse_config
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession
from tests.support.sessions import login, make_config, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database")
COPY_IN = m.frame(b"G", b"\x00\x00\x00")  # CopyInResponse: text, no columns
BOUND = 5.0


def _tenant_bound(tmp_path: Path) -> Config:
    """Transaction pooling, the global idle_in_transaction_timeout (300 s), tenant acme's own: BOUND."""
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    return parse_config({
        "secrets_file": "s.toml", "pool": {"pool_mode": "transaction", "sticky_servers": False},
        "backends": {"main": {}}, "users": {"alice": {"tenant": "acme"}},
        "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme",
                             "idle_in_transaction_timeout": BOUND}},
    }, base=tmp_path)


def _copying(tmp_path: Path, mode: str, now: list[float], config: Config | None = None) -> tuple[ClientSession, list]:
    """A session of `mode` (client_message_timeout 0) whose client sent COPY FROM STDIN at 0 s, answered by the
    server's CopyInResponse; the actions of that answer."""
    config = config or make_config(tmp_path, pool={"pool_mode": mode, "client_message_timeout": 0},
                                   idle_in_transaction_timeout=BOUND)
    s = ClientSession(config,
                      session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: now[0], tls_available=False)
    login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _kind, sql: cache.get_or_decide(POLICY, sql))
    s.server_attached(server_for(s, {"application_name": ""}))
    out = s.client_data(m.Query("COPY t FROM STDIN").encode())
    if mode == "transaction":
        assert out == [AcquireServer(s.request)]
        s.server_attached(server_for(s))
    assert s.server is not None
    return s, s.server_data(COPY_IN)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_an_idle_copy_in_ends_the_session_and_closes_its_server(tmp_path: Path, mode: str) -> None:
    now = [0.0]
    s, out = _copying(tmp_path, mode, now)
    assert (CopyInHeld(True) in out) is (mode == "transaction")  # (counted in transaction pooling)
    now[0] = BOUND - 1
    s.client_data(m.frame(b"d", b"1\n"))  # a byte: the clock starts again
    now[0] = 2 * BOUND - 1.5
    assert s.message_tick(now[0]) == []
    now[0] = 2 * BOUND
    out = s.message_tick(now[0])
    assert [type(a) for a in out] == [LimitReached, ReleaseServer, CloseClient], out
    release = out[1]
    assert isinstance(release, ReleaseServer) and not release.reusable  # (closed: it is mid-COPY)
    assert release.reason is CloseReason.IDLE_IN_TRANSACTION_TIMEOUT
    error = out[2].error
    assert error is not None and (error.severity, error.sqlstate) == ("FATAL", "25P03")
    assert "idle COPY FROM STDIN" in error.message


def test_a_copy_ended_by_the_client_is_counted_no_longer_and_not_timed(tmp_path: Path) -> None:
    """Transaction pooling: CopyDone sent, the server's answer not yet in: the server is no longer counted as held
    by the COPY (CopyInHeld False), and nothing ends the session however long that answer takes."""
    now = [0.0]
    s, out = _copying(tmp_path, "transaction", now)
    assert CopyInHeld(True) in out
    out = s.client_data(m.frame(b"d", b"1\n") + m.frame(b"c", b""))
    assert CopyInHeld(False) in out
    now[0] = 10 * BOUND
    assert s.message_tick(now[0]) == []


def test_a_copy_whose_client_is_not_read_is_not_idle(tmp_path: Path) -> None:
    """While the I/O layer does not read the client (the server link is full: the server takes no data), the COPY
    is not idle; its clock starts again when the reading does."""
    now = [0.0]
    s, _ = _copying(tmp_path, "transaction", now)
    now[0] = 3 * BOUND
    assert s.message_tick(now[0], True) == []
    now[0] = 4 * BOUND - 1
    assert s.message_tick(now[0]) == []
    now[0] = 4 * BOUND
    assert [type(a) for a in s.message_tick(now[0])] == [LimitReached, ReleaseServer, CloseClient]


def test_the_tenants_own_idle_in_transaction_timeout_bounds_its_copy(tmp_path: Path) -> None:
    """The tenant's limit (BOUND) over the global one (300 s)."""
    now = [0.0]
    s, _ = _copying(tmp_path, "transaction", now, _tenant_bound(tmp_path))
    now[0] = BOUND - 0.5
    assert s.message_tick(now[0]) == []
    now[0] = BOUND
    out = s.message_tick(now[0])
    assert [type(a) for a in out] == [LimitReached, ReleaseServer, CloseClient], out
    assert "for 5 s" in out[2].error.message
