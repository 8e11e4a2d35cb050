"""ClientSession, scripted, session pooling: a batch waiting for its Sync with no byte either way past
idle_in_transaction_timeout ends the session (25P03) and closes its server, as in transaction pooling (red team
9s7 L1); a flushed batch whose answer is owed is not ended. The statement cache off (skipping.Owed) and on."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.actions import AcquireServer, BatchWithoutSync, CloseClient, LimitReached, ReleaseServer
from proxy.auth.throttle import AuthThrottle
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.reasons import CloseReason
from proxy.session import ClientSession
from tests.support import wire
from tests.support.sessions import login, make_config, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database")
BOUND = 5.0
CACHE = [False, True]


def _session(tmp_path: Path, now: list[float], cache: bool) -> ClientSession:
    config = make_config(tmp_path, pool={"statement_cache": cache}, idle_in_transaction_timeout=BOUND)
    s = ClientSession(config, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: now[0], tls_available=False)
    login(s)
    decisions = DecisionCache()
    s.enable_policy(lambda _kind, sql: decisions.get_or_decide(POLICY, sql))
    s.server_attached(server_for(s, {"application_name": ""}))
    assert s.server is not None and not s.pooled
    return s


def _ended(out: list) -> None:
    assert [type(a) for a in out] == [LimitReached, ReleaseServer, CloseClient], out
    release = out[1]
    assert not release.reusable and release.reason is CloseReason.IDLE_IN_TRANSACTION_TIMEOUT
    error = out[2].error
    assert error is not None and (error.severity, error.sqlstate) == ("FATAL", "25P03")
    assert "idle-in-transaction timeout" in error.message


@pytest.mark.parametrize("cache", CACHE)
@pytest.mark.parametrize("tail", [b"", b"B\0\0"], ids=["whole", "half_message_after"])
def test_a_batch_left_without_its_sync_ends_the_session(tmp_path: Path, cache: bool, tail: bytes) -> None:
    now = [0.0]
    s = _session(tmp_path, now, cache)
    out = s.client_data(wire.parse("SELECT 1") + tail)
    assert not any(isinstance(a, BatchWithoutSync) for a in out)  # (counted in transaction pooling only)
    now[0] = BOUND - 1
    s.client_data(m.frame(b"D", b"S\0") if not tail else b"\0")  # a byte: the clock starts again
    now[0] = 2 * BOUND - 1.5
    assert s.message_tick(now[0]) == []
    now[0] = 2 * BOUND
    _ended(s.message_tick(now[0]))


@pytest.mark.parametrize("cache", CACHE)
def test_a_flushed_batch_whose_answer_is_owed_is_not_ended_until_answered(tmp_path: Path, cache: bool) -> None:
    """P/B/E/Flush: ParseComplete and BindComplete come, the Execute's answer not (its statement runs): not idle
    however long; once answered in full, the batch (which ran a statement: no Sync of the proxy's own) is timed."""
    now = [0.0]
    s = _session(tmp_path, now, cache)
    s.client_data(wire.parse("SELECT 1") + wire.bind() + wire.execute() + m.frame(b"H", b""))
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b""))
    now[0] = 10 * BOUND
    assert s.message_tick(now[0]) == []
    s.server_data(m.frame(b"D", b"\0\x01\0\0\0\x011") + m.frame(b"C", b"SELECT 1\0"))
    now[0] = 11 * BOUND - 0.5
    assert s.message_tick(now[0]) == []
    now[0] = 11 * BOUND
    _ended(s.message_tick(now[0]))


@pytest.mark.parametrize("cache", CACHE)
def test_a_batch_whose_client_is_not_read_is_not_idle(tmp_path: Path, cache: bool) -> None:
    """While the I/O layer does not read the client (the server link is full: the server takes nothing, say its
    Parse waits for a lock), the batch is not idle; its clock starts again when the reading does."""
    now = [0.0]
    s = _session(tmp_path, now, cache)
    s.client_data(wire.parse("SELECT 1"))
    now[0] = 3 * BOUND
    assert s.message_tick(now[0], True) == []
    now[0] = 4 * BOUND - 1
    assert s.message_tick(now[0]) == []
    now[0] = 4 * BOUND
    _ended(s.message_tick(now[0]))


# --- an answer is coming only when the client asked for it (a Flush, Sync or Query after its message) -------------

CONVERSATIONS = [("session", False), ("session", True), ("transaction", False)]
IDS = ["session-no_cache", "session-cache", "transaction"]
FLUSH = m.frame(b"H", b"")
ANSWER = m.frame(b"D", b"\0\x01\0\0\0\x011") + m.frame(b"C", b"SELECT 1\0")


def _conversation(tmp_path: Path, now: list[float], mode: str, cache: bool, first: bytes) -> ClientSession:
    """A session of `mode` whose client sent `first` at 0 s (in transaction pooling, on the server it took)."""
    config = make_config(tmp_path, pool={"pool_mode": mode, "statement_cache": cache, "client_message_timeout": 0},
                         idle_in_transaction_timeout=BOUND)
    s = ClientSession(config, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=lambda: now[0], tls_available=False)
    login(s)
    decisions = DecisionCache()
    s.enable_policy(lambda _kind, sql: decisions.get_or_decide(POLICY, sql))
    s.server_attached(server_for(s, {"application_name": ""}))
    out = s.client_data(first)
    if mode == "transaction":
        assert out == [AcquireServer(s.request)]
        s.server_attached(server_for(s))
    assert s.server is not None and s.pooled is (mode == "transaction")
    return s


@pytest.mark.parametrize(("mode", "cache"), CONVERSATIONS, ids=IDS)
def test_an_execute_with_no_flush_after_an_answered_one_is_not_coming(tmp_path: Path, mode: str,
                                                                       cache: bool) -> None:
    """P/B/E/Flush answered in full, then Bind/Execute with no Flush: PostgreSQL runs it but sends nothing until
    the client asks, so the client is idle and ends a bound after its last byte (before: the unanswered Execute
    counted as running for ever, never timed). Once the client sends a Flush after it, its answer is coming: not
    idle however long, until it comes."""
    now = [0.0]
    s = _conversation(tmp_path, now, mode, cache, wire.parse("SELECT 1") + wire.bind() + wire.execute() + FLUSH)
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + ANSWER)
    now[0] = 1.0
    s.client_data(wire.bind() + wire.execute())
    now[0] = 2.0
    s.client_data(FLUSH)  # (its answer is asked for now)
    now[0] = 10 * BOUND
    assert s.message_tick(now[0]) == []
    s.server_data(m.frame(b"2", b"") + ANSWER)
    now[0] = 10 * BOUND + 1
    s.client_data(wire.bind() + wire.execute())  # no Flush after it
    now[0] = 11 * BOUND + 0.5
    assert s.message_tick(now[0]) == []
    now[0] = 11 * BOUND + 1
    _ended(s.message_tick(now[0]))


@pytest.mark.parametrize(("mode", "cache"), CONVERSATIONS, ids=IDS)
def test_an_answer_a_sync_asked_for_is_coming_with_a_batch_open_behind_it(tmp_path: Path, mode: str,
                                                                           cache: bool) -> None:
    """P/B/E/Sync, then P/B/E with no Sync yet: the first Execute's answer is coming (its statement runs), so the
    client is not idle however long (before: timed from the last byte as a batch without a Flush, ended while
    its statement ran); once that answer and its ReadyForQuery came, the open batch is timed."""
    now = [0.0]
    first = wire.parse("SELECT 1") + wire.bind() + wire.execute() + wire.SYNC
    s = _conversation(tmp_path, now, mode, cache, first + wire.parse("SELECT 2") + wire.bind() + wire.execute())
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b""))
    now[0] = 10 * BOUND
    assert s.message_tick(now[0]) == []
    s.server_data(ANSWER + m.frame(b"Z", b"I"))
    now[0] = 11 * BOUND - 0.5
    assert s.message_tick(now[0]) == []
    now[0] = 11 * BOUND
    _ended(s.message_tick(now[0]))
