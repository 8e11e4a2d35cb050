"""A routed session (read replicas, proxy/replicas.py): what it tells the pool of each request, and when it marks a
write for read-your-writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy.actions import AcquireServer, ConnectBackend, ReleaseServer
from proxy.auth.throttle import AuthThrottle
from proxy.config import Config, ReplicaConfig, RoutingConfig
from proxy.policy import TenantPolicy
from proxy.policy.cache import DecisionCache
from proxy.protocol import messages as m
from proxy.replicas import Route
from proxy.session import ClientSession, State
from tests.support.sessions import login, make_config, server_for

POLICY = TenantPolicy(tenant="acme", strategy="database", allow_writes=True)


def routed_config(tmp_path: Path, mode: str = "transaction", route: str = "auto") -> Config:
    cfg = make_config(tmp_path, pool={"pool_mode": mode})
    return replace(cfg, backends={"main": replace(cfg.backends["main"], replicas=(ReplicaConfig("r1"),))},
                   routing=RoutingConfig(route=route))  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def session(cfg: Config, clock: Clock) -> tuple[ClientSession, ConnectBackend]:
    s = ClientSession(cfg, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                      clock=clock, tls_available=False)
    *_, connect = login(s)
    cache = DecisionCache()
    s.enable_policy(lambda _kind, sql: cache.get_or_decide(POLICY, sql))
    return s, connect


def request(s: ClientSession, sql: str, replica: str | None) -> Route:
    """The client sends `sql`; the session asks the pool (its Route), gets a server (of `replica`, None: the
    primary) that answers, and gives it back."""
    [acquire] = s.client_data(m.Query(sql).encode())
    assert isinstance(acquire, AcquireServer) and acquire.route is not None
    server = server_for(s)
    server.replica = replica
    s.server_attached(server)
    out = s.server_data(m.frame(b"C", b"SELECT 1\x00") + m.ready_for_query(b"I"))
    assert any(isinstance(a, ReleaseServer) for a in out) and s.state is State.IDLE
    return acquire.route


def test_each_request_says_whether_it_only_reads_and_a_write_is_remembered(tmp_path: Path) -> None:
    clock = Clock()
    s, connect = session(routed_config(tmp_path), clock)
    auto = RoutingConfig(route="auto")
    assert connect.route == Route(auto, False, None)  # the login's server: the primary for "auto"
    s.server_attached(server_for(s))  # (answered, then given back at once: no write to wait for)
    assert s.routing is not None and s.routing.wrote_at is None
    assert request(s, "SELECT 1", "r1") == Route(auto, True, None)
    clock.now = 101.0
    assert request(s, "SELECT 2", None) == Route(auto, True, None)  # a read on the primary is no write either
    assert request(s, "INSERT INTO t VALUES (1)", None) == Route(auto, False, None)
    assert request(s, "SELECT 3", None) == Route(auto, True, 101.0)  # read-your-writes: after the write at 101
    clock.now = 102.0
    assert request(s, "BEGIN READ ONLY; SELECT 4; COMMIT", "r1") == Route(auto, True, 101.0)


def test_a_session_without_replicas_or_on_the_primary_route_is_not_routed(tmp_path: Path) -> None:
    clock = Clock()
    s, connect = session(routed_config(tmp_path, route="primary"), clock)
    assert connect.route is None and s.routing is None
    (tmp_path / "x").mkdir()
    plain = replace(make_config(tmp_path / "x", pool={"pool_mode": "transaction"}), routing=RoutingConfig(route="auto"))
    s, connect = session(plain, clock)  # "auto", but its backend has no replica
    assert connect.route is None and s.routing is None


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_route_replica_asks_a_replica_from_login(tmp_path: Path, mode: str) -> None:
    s, connect = session(routed_config(tmp_path, mode=mode, route="replica"), Clock())
    assert connect.route == Route(RoutingConfig(route="replica"), False, None)
    assert s.pooled is (mode == "transaction")


def test_an_agent_profile_session_only_reads(tmp_path: Path) -> None:
    """An agent's writes are refused by the proxy and its servers are read-only: each of its requests may go to a
    replica under "auto", whatever it is."""
    cfg = routed_config(tmp_path)
    cfg = replace(cfg, users={"alice": replace(cfg.users["alice"], profile="agent")})
    s, _ = session(cfg, Clock())
    s.server_attached(server_for(s))
    [acquire] = s.client_data(m.Query("SELECT nextval('s')").encode())
    assert isinstance(acquire, AcquireServer) and acquire.route == Route(RoutingConfig(route="auto"), True, None)


def _answer(s: ClientSession, tag: bytes, status: bytes) -> list:
    return s.server_data(m.frame(b"C", tag + b"\x00") + m.ready_for_query(status))


@pytest.mark.parametrize(("statement", "wrote"), [("SELECT 1", False), ("INSERT INTO t VALUES (1)", True),
                                                  ("SELECT public.audit_touch()", True)])
def test_a_read_write_transaction_counts_as_a_write_only_if_it_may_have_written(
        tmp_path: Path, statement: str, wrote: bool) -> None:
    """BEGIN (read write) goes to the primary; read-your-writes then holds back the session's reads only when
    something the transaction sent may have written (not for a transaction that only read)."""
    clock = Clock()
    s, _ = session(routed_config(tmp_path), clock)
    auto = RoutingConfig(route="auto")
    s.server_attached(server_for(s))
    [acquire] = s.client_data(m.Query("BEGIN").encode())
    assert isinstance(acquire, AcquireServer) and acquire.route == Route(auto, False, None)
    s.server_attached(server_for(s))
    _answer(s, b"BEGIN", b"T")
    s.client_data(m.Query(statement).encode())
    _answer(s, b"SELECT 1", b"T")
    s.client_data(m.Query("COMMIT").encode())
    out = _answer(s, b"COMMIT", b"I")
    assert any(isinstance(a, ReleaseServer) for a in out) and s.state is State.IDLE
    clock.now = 101.0
    assert request(s, "SELECT 2", "r1") == Route(auto, True, 100.0 if wrote else None)


def test_a_write_pipelined_before_the_replica_is_lent_goes_with_its_read_to_the_primary(tmp_path: Path) -> None:
    """What the client sends while the pool finds a replica for its read is seen before that server is used: a
    batch with a write in it gives the replica back unused and asks for the primary (not 25006 on the replica)."""
    s, _ = session(routed_config(tmp_path), Clock())
    s.server_attached(server_for(s))
    read, write = m.Query("SELECT 1").encode(), m.Query("INSERT INTO t VALUES (1)").encode()
    [acquire] = s.client_data(read)
    assert isinstance(acquire, AcquireServer) and acquire.route is not None and acquire.route.read_only
    assert s.client_data(write) == []  # (kept while the session waits for its server)
    replica = server_for(s)
    replica.replica = "r1"
    back, again = s.server_attached(replica)
    assert isinstance(back, ReleaseServer) and back.reusable
    assert isinstance(again, AcquireServer) and again.route is not None and not again.route.read_only
    assert s.server is None and s.state is State.WAITING
    out = s.server_attached(server_for(s))
    sent = b"".join(bytes(c) for a in out if hasattr(a, "chunks") for c in a.chunks)  # type: ignore[attr-defined]
    assert read in sent and write in sent


def test_a_read_only_batch_keeps_its_replica(tmp_path: Path) -> None:
    s, _ = session(routed_config(tmp_path), Clock())
    s.server_attached(server_for(s))
    [acquire] = s.client_data(m.Query("SELECT 1").encode())
    assert isinstance(acquire, AcquireServer) and acquire.route is not None and acquire.route.read_only
    s.client_data(m.Query("SELECT 2").encode())
    replica = server_for(s)
    replica.replica = "r1"
    out = s.server_attached(replica)
    assert not any(isinstance(a, ReleaseServer | AcquireServer) for a in out) and s.server is replica


class CountingGate:
    """A decision function with the gate's cache lookup (`cached`): how often each is asked."""

    def __init__(self) -> None:
        self.cache = DecisionCache()
        self.decided: list[str] = []
        self.looked_up: list[str] = []

    def __call__(self, _kind: str, sql: str) -> object:
        self.decided.append(sql)
        return self.cache.get_or_decide(POLICY, sql)

    def cached(self, sql: str) -> object:
        self.looked_up.append(sql)
        return self.cache.cached(POLICY, sql)


def test_a_repeated_query_is_routed_by_its_cached_decision(tmp_path: Path) -> None:
    """The read-only verdict is the policy decision's (READ_ONLY, cached with it): a Query seen before is routed by
    one cache lookup, whose decision the gate then uses (the text is neither judged again nor looked up twice)."""
    s, _ = session(routed_config(tmp_path), Clock())
    gate = CountingGate()
    s.enable_policy(gate)
    s.server_attached(server_for(s))
    expected = [  # (sql, where, its decision asked of the gate: only when the cache had none for the routing)
        ("SELECT 1", "r1", True), ("SELECT 1", "r1", False),
        ("SELECT abalance FROM a WHERE aid = 7", "r1", True), ("SELECT abalance FROM a WHERE aid = 8", "r1", False),
        ("UPDATE a SET x = 1", None, True), ("UPDATE a SET x = 1", None, False),
    ]
    for sql, where, decided in expected:
        gate.decided.clear()
        assert request(s, sql, where).read_only is (where is not None), sql
        assert gate.looked_up[-1] == sql and gate.decided == ([sql] if decided else []), sql


def _sent(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if type(a).__name__ == "RelayToServer" for c in a.chunks)


def _relayed(actions: list) -> bytes:
    return b"".join(bytes(c) for a in actions if type(a).__name__ == "RelayToClient" for c in a.chunks)


PREPARE = (m.Parse("stmt1", "SELECT 1 WHERE $1::int > 0", b"\x00\x00").encode() + m.frame(b"D", b"Sstmt1\x00")
           + m.frame(b"H", b""))
PREPARED = m.frame(b"1", b"") + m.frame(b"t", b"\x00\x01\x00\x00\x00\x17") + m.frame(b"n", b"")


def _prepared_on_replica(s: ClientSession) -> tuple[list, list]:
    """asyncpg's prepare() (Parse/Describe/Flush, no Sync) sent to a replica: what the session sends and does
    when its answers arrive."""
    [acquire] = s.client_data(PREPARE)
    assert isinstance(acquire, AcquireServer) and acquire.route is not None and acquire.route.read_only
    replica = server_for(s)
    replica.replica = "r1"
    attached = s.server_attached(replica)
    return attached, s.server_data(PREPARED)


def test_a_prepare_without_sync_answered_in_full_gives_its_replica_back(tmp_path: Path) -> None:
    """Red team 9r F7: Parse/Describe/Flush answered in full holds nothing on the server; the proxy ends it with a
    Sync of its own (its ReadyForQuery swallowed), gives the replica back, and the client's next request (a write)
    asks for a server of its own; the statement is prepared again on it."""
    s, _ = session(routed_config(tmp_path), Clock())
    s.server_attached(server_for(s))
    _, answered = _prepared_on_replica(s)
    assert _relayed(answered) == PREPARED and _sent(answered) == m.SYNC_MESSAGE
    assert not any(isinstance(a, ReleaseServer) for a in answered)
    done = s.server_data(m.ready_for_query(b"I"))
    assert _relayed(done) == b"" and any(isinstance(a, ReleaseServer) and a.reusable for a in done)
    assert s.state is State.IDLE and not s.tracker.pending
    write = (m.Parse("", "INSERT INTO t VALUES (1)", b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + b"\x00" * 6)
             + m.frame(b"E", b"\x00\x00\x00\x00\x00") + m.SYNC_MESSAGE)
    [again] = s.client_data(write)
    assert isinstance(again, AcquireServer) and again.route is not None and not again.route.read_only
    use = m.frame(b"B", b"\x00stmt1\x00" + b"\x00" * 6) + m.frame(b"E", b"\x00\x00\x00\x00\x00") + m.SYNC_MESSAGE
    s.server_attached(server_for(s))  # the primary, which never saw stmt1
    s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.frame(b"C", b"INSERT 0 1\x00") + m.ready_for_query(b"I"))
    out = s.client_data(use)
    assert isinstance(out[0], AcquireServer) and out[0].route is not None and out[0].route.read_only
    replica = server_for(s)
    replica.replica = "r1"
    assert b"SELECT 1 WHERE $1::int > 0" in _sent(s.server_attached(replica))  # prepared again where it runs


def test_what_the_client_sends_while_the_proxys_sync_is_answered_is_judged_after_it(tmp_path: Path) -> None:
    s, _ = session(routed_config(tmp_path), Clock())
    s.server_attached(server_for(s))
    _prepared_on_replica(s)
    assert s.client_data(m.Query("INSERT INTO t VALUES (1)").encode()) == []  # (held: not sent to the replica)
    done = s.server_data(m.ready_for_query(b"I"))
    assert any(isinstance(a, ReleaseServer) for a in done)
    [again] = [a for a in done if isinstance(a, AcquireServer)]
    assert again.route is not None and not again.route.read_only and _sent(done) == b""


@pytest.mark.parametrize("answer", [
    m.frame(b"E", b"SERROR\x00C42601\x00Msyntax error\x00\x00"),  # an error: the server skips to the client's Sync
    m.frame(b"1", b""),  # not answered in full yet (the Describe's answer is still to come)
])
def test_a_flushed_batch_not_done_keeps_its_server(tmp_path: Path, answer: bytes) -> None:
    s, _ = session(routed_config(tmp_path), Clock())
    s.server_attached(server_for(s))
    s.client_data(PREPARE)
    replica = server_for(s)
    replica.replica = "r1"
    s.server_attached(replica)
    out = s.server_data(answer)
    assert _sent(out) == b"" and s.server is replica


def test_a_flushed_batch_that_ran_a_statement_on_the_primary_keeps_its_server(tmp_path: Path) -> None:
    """Its writes commit only at the client's Sync (and an error before it would roll them back): no Sync of ours."""
    s, _ = session(routed_config(tmp_path), Clock())
    s.server_attached(server_for(s))
    batch = (m.Parse("", "INSERT INTO t VALUES (1)", b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + b"\x00" * 6)
             + m.frame(b"E", b"\x00\x00\x00\x00\x00") + m.frame(b"H", b""))
    [acquire] = s.client_data(batch)
    assert isinstance(acquire, AcquireServer) and acquire.route is not None and not acquire.route.read_only
    primary = server_for(s)
    s.server_attached(primary)
    out = s.server_data(m.frame(b"1", b"") + m.frame(b"2", b"") + m.frame(b"C", b"INSERT 0 1\x00"))
    assert _sent(out) == b"" and s.server is primary
