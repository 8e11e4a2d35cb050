"""proxy/replicas.py: replica health from probes, read-only classification, the routing choice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy import replicas
from proxy.config import RoutingConfig, parse_config
from proxy.policy import Deny, TenantPolicy, decide
from proxy.policy.model import READ_ONLY
from proxy.protocol import messages as m
from proxy.replicas import (
    MAX_JUDGED,
    Health,
    Replica,
    ReplicaSet,
    Route,
    Router,
    kept,
    parse_lsn,
    probe_targets,
    read_only_request,
    read_only_sql,
    serializable,
)

VERIFIER = (
    "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$zMqJ8k8FpC7CY8Io6qVbZrdP1k1b9QQ9mF7d4sW7b3E="
    ":Vfhh0k0K0Sx6LDOa3ySdBBTy9HzPJvdnM9rDTrqF8gU="
)


def config(tmp_path: Path, **routing: object) -> object:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{VERIFIER}"\n')
    return parse_config({
        "secrets_file": "s.toml", "routing": routing,
        "backends": {"main": {"replicas": [{"name": "r1", "port": 5433}, {"name": "r2", "port": 5434}]},
                     "other": {"port": 5440}},
        "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme", "backend": "main"}},
        "users": {"alice": {"tenant": "acme"}},
    }, base=tmp_path)


def replica_set(max_lag: float = 5.0) -> ReplicaSet:
    return ReplicaSet("main", {"r1": Replica("r1", etl=False)}, poll_interval=1.0, probe_timeout=5.0, max_lag=max_lag)


def test_lsn_as_postgresql_prints_it() -> None:
    assert parse_lsn("0/0") == 0 and parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")


def test_a_replica_is_down_until_probed_then_healthy_while_it_keeps_up() -> None:
    s = replica_set()
    assert s.health("r1", 0.0) is Health.DOWN
    s.primary_polled(10.0, False, "0/100")
    s.replica_polled("r1", 10.1, True, "0/100")
    assert s.health("r1", 10.2) is Health.HEALTHY and s.replicas["r1"].lag(10.2) == 0.0
    assert s.candidates(10.2, 5.0, None, 0.0) == ["r1"]


def test_a_paused_replica_lags_from_the_first_commit_it_misses_and_comes_back() -> None:
    s = replica_set(max_lag=2.0)
    s.primary_polled(10.0, False, "0/100")
    s.replica_polled("r1", 10.1, True, "0/100")
    for t in range(11, 15):  # the primary moves on, the replica's replay is paused
        s.primary_polled(float(t), False, f"0/{0x100 + t:X}")
        s.replica_polled("r1", t + 0.1, True, "0/100")
    assert s.replicas["r1"].lag(14.5) == pytest.approx(4.5)
    assert s.health("r1", 14.5) is Health.LAGGING and s.candidates(14.5, 2.0, None, 0.0) == []
    assert s.candidates(14.5, 10.0, None, 0.0) == ["r1"]  # a tenant allowing more lag still reads there
    s.primary_polled(15.0, False, "0/200")
    s.replica_polled("r1", 15.1, True, "0/200")  # replay resumed: caught up
    assert s.health("r1", 15.2) is Health.HEALTHY


def test_an_idle_primary_does_not_make_a_replica_look_late() -> None:
    s = replica_set(max_lag=1.0)
    for t in range(10, 20):
        s.primary_polled(float(t), False, "0/100")
        s.replica_polled("r1", t + 0.1, True, "0/100")
    assert s.replicas["r1"].lag(19.5) == 0.0 and s.health("r1", 19.5) is Health.HEALTHY


def test_read_your_writes_waits_for_a_primary_position_taken_after_the_write() -> None:
    s = replica_set()
    s.primary_polled(10.0, False, "0/100")
    s.replica_polled("r1", 10.1, True, "0/100")
    wrote_at = 10.5  # a commit acknowledged here: the probe at 10.0 may not include it
    assert s.candidates(10.6, 5.0, wrote_at, 0.0) == []
    assert s.candidates(10.6, 5.0, wrote_at, max_staleness=1.0) == ["r1"]  # staleness allowed: 9.5 <= 10.0
    s.primary_polled(11.0, False, "0/180")
    s.replica_polled("r1", 11.1, True, "0/170")  # not yet there
    assert s.candidates(11.2, 5.0, wrote_at, 0.0) == []
    s.replica_polled("r1", 11.3, True, "0/180")
    assert s.candidates(11.4, 5.0, wrote_at, 0.0) == ["r1"]


@pytest.mark.parametrize("failure", ["failed", "promoted", "silent"])
def test_a_failed_promoted_or_silent_replica_is_down(failure: str) -> None:
    s = replica_set()
    s.primary_polled(10.0, False, "0/100")
    s.replica_polled("r1", 10.1, True, "0/100")
    now = 10.2
    if failure == "failed":
        s.replica_failed("r1", "connection refused")
    elif failure == "promoted":
        s.replica_polled("r1", 10.1, False, "0/100")
    else:
        now = 10.1 + 3 * 1.0 + 5.0 + 0.1
    assert s.health("r1", now) is Health.DOWN and s.candidates(now, 100.0, None, 0.0) == []


def test_the_fit_replicas_are_kept_until_time_or_a_probe_changes_them() -> None:
    """Routing asks for the fit replicas once a request: the answer is kept until a replica could stop being fit by
    time alone (its lag past max_lag, its probes silent) or a probe says something new."""
    s = replica_set()
    s.primary_polled(10.0, False, "0/100")
    s.primary_polled(11.0, False, "0/200")
    s.replica_polled("r1", 11.1, True, "0/100")  # it has not replayed 0/200 (not caught up): fresh as of 10.0
    assert s.candidates(11.2, 2.0, None, 0.0) == ["r1"] and s.candidates(11.9, 2.0, None, 0.0) == ["r1"]
    assert s.candidates(12.1, 2.0, None, 0.0) == []  # lagging past 2 s: no probe needed to see it
    assert s.candidates(12.1, 50.0, None, 0.0) == ["r1"]  # (another max_lag, its own answer)
    assert s.candidates(19.2, 50.0, None, 0.0) == []  # silent: 3 polls + the probe timeout after 11.1
    s.replica_polled("r1", 19.3, True, "0/200")  # a probe: caught up again
    assert s.candidates(19.4, 2.0, None, 0.0) == ["r1"] and s.candidates(19.4, 2.0, 10.5, 0.0) == ["r1"]
    assert s.candidates(19.4, 2.0, 11.5, 0.0) == []  # (read-your-writes: no primary position after 11.5)
    s.replica_failed("r1", "a server connection failed")
    assert s.candidates(19.5, 2.0, None, 0.0) == []


def test_an_etl_replica_is_as_fresh_as_its_staleness_query_says() -> None:
    s = ReplicaSet("main", {"etl": Replica("etl", etl=True)}, 1.0, 5.0, 5.0)
    s.replica_staleness("etl", 100.0, 3.0)
    assert s.replicas["etl"].lag(100.0) == pytest.approx(3.0) and s.health("etl", 100.0) is Health.HEALTHY
    assert s.candidates(100.0, 5.0, 98.0, 0.0) == []  # a write at 98 is not in a copy as of 97
    s.replica_staleness("etl", 101.0, 60.0)
    assert s.health("etl", 101.0) is Health.LAGGING
    s.replica_staleness("etl", 102.0, None)
    assert s.health("etl", 102.0) is Health.DOWN


def test_router_by_route_and_fallback(tmp_path: Path) -> None:
    router = Router(config(tmp_path))  # type: ignore[arg-type]
    s = router.sets["main"]
    assert set(router.sets) == {"main"}
    auto = RoutingConfig(route="auto")
    assert router.choose("main", None, 1.0, "acme").replica is None
    assert router.choose("main", Route(auto, read_only=True), 1.0, "acme").replica is None  # nothing probed yet
    s.primary_polled(10.0, False, "0/100")
    for name in ("r1", "r2"):
        s.replica_polled(name, 10.1, True, "0/100")
    picks = {router.choose("main", Route(auto, read_only=True), 10.2, "acme").replica for _ in range(4)}
    assert picks == {"r1", "r2"}  # round robin
    assert router.choose("main", Route(auto, read_only=False), 10.2, "acme").replica is None
    assert router.choose("main", Route(RoutingConfig(), read_only=True), 10.2, "acme").replica is None
    every = RoutingConfig(route="replica")
    assert router.choose("main", Route(every, read_only=False), 10.2, "acme").replica in ("r1", "r2")
    for name in ("r1", "r2"):
        s.replica_failed(name, "gone")
    assert router.choose("main", Route(every, read_only=False), 10.2, "acme") == router.choose(
        "main", None, 10.2, "acme")  # falls back to the primary
    refused = router.choose("main", Route(replace(every, replica_fallback="refuse"), False), 10.2, "acme").refusal
    assert refused is not None and refused.sqlstate == "57P03" and 'tenant "acme"' in refused.message
    rows = list(router.rows(10.2))
    assert [(b, r, h) for b, r, h, _, _ in rows] == [("main", "r1", Health.DOWN), ("main", "r2", Health.DOWN)]


def test_a_kept_server_serves_only_what_the_router_could_choose_it_for(tmp_path: Path) -> None:
    """Sticky servers for routed sessions: a server kept on a replica serves a read while that replica is among the
    candidates (healthy, within the lag, holding the session's last write; any candidate, the round robin's turn not
    taken), a kept primary server serves a write, or a read with no candidate when the fallback is the primary."""
    router = Router(config(tmp_path))  # type: ignore[arg-type]
    s = router.sets["main"]
    auto, every = RoutingConfig(route="auto", max_replica_lag=5.0), RoutingConfig(route="replica")
    read, write = Route(auto, read_only=True), Route(auto, read_only=False)
    assert kept(router, "main", read, 1.0, "r1") is None  # nothing probed yet: not a candidate
    assert kept(router, "main", read, 1.0, None) == router.choose("main", None, 1.0, "acme")  # the primary serves
    s.primary_polled(10.0, False, "0/100")
    for name in ("r1", "r2"):
        s.replica_polled(name, 10.1, True, "0/100")
    turn = router._turn
    for _ in range(3):
        choice = kept(router, "main", read, 10.2, "r2")
        assert choice is not None and choice.replica == "r2" and choice.server == "r2"  # (not r1's turn)
    assert router._turn == turn
    assert kept(router, "main", write, 10.2, "r1") is None  # a write: the primary, never a kept replica
    assert kept(router, "main", write, 10.2, None) == router.choose("main", write, 10.2, "acme")
    assert kept(router, "main", read, 10.2, None) is None  # a read goes to a replica: not the kept primary
    assert kept(router, "main", Route(auto, True, wrote_at=10.5), 10.6, "r1") is None  # read-your-writes
    s.primary_polled(11.0, False, "0/200")
    s.replica_polled("r1", 11.1, True, "0/200")  # r1 replayed past the write: it may serve the session again
    assert kept(router, "main", Route(auto, True, wrote_at=10.5), 11.2, "r1") is not None
    s.replica_failed("r1", "gone")
    assert kept(router, "main", read, 11.2, "r1") is None  # down: its kept server is not reused
    s.replica_polled("r2", 11.1, True, "0/100")
    assert s.health("r2", 16.0) is Health.LAGGING
    assert kept(router, "main", read, 16.0, "r2") is None  # lagging (6 s behind, max 5 s)
    assert kept(router, "main", read, 16.0, None) is not None  # no candidate: the primary
    assert kept(router, "main", Route(RoutingConfig(), read_only=True), 16.0, None) is not None  # route "primary"
    assert kept(router, "main", Route(every, True), 16.0, None) is not None  # replica_fallback = "primary"
    assert kept(router, "main", Route(replace(every, replica_fallback="refuse"), True), 16.0, None) is None


def test_a_kept_replica_server_is_not_reused_once_its_replica_fell_behind_or_went_silent_without_a_probe(
        tmp_path: Path) -> None:
    """The fit `kept` reads (the candidates kept per max_lag until a probe, or the time one of them stops being fit)
    holds only until then: a replica behind the primary lags past max_lag as time passes, a silent one goes down,
    with no probe in between; read-your-writes is judged per write, never from that fit."""
    router = Router(config(tmp_path))  # type: ignore[arg-type]
    s = router.sets["main"]
    read = Route(RoutingConfig(route="auto", max_replica_lag=5.0), read_only=True)
    s.primary_polled(10.0, False, "0/100")
    s.primary_polled(11.0, False, "0/200")
    s.replica_polled("r1", 11.1, True, "0/100")  # fresh as of 10.0, not caught up
    s.replica_polled("r2", 11.1, True, "0/200")  # caught up
    assert kept(router, "main", read, 11.2, "r1") is not None and kept(router, "main", read, 11.2, "r2") is not None
    assert kept(router, "main", read, 14.9, "r1") is not None
    assert kept(router, "main", read, 15.1, "r1") is None  # 5.1 s behind: lagging, no probe needed to see it
    assert kept(router, "main", read, 15.1, "r2") is not None
    silent = 11.1 + replicas.SILENCE_POLLS * s.poll_interval + s.probe_timeout
    assert kept(router, "main", read, silent - 0.1, "r2") is not None
    assert kept(router, "main", read, silent + 0.1, "r2") is None  # no probe for too long: down
    s.replica_polled("r2", silent + 0.2, True, "0/200")
    assert kept(router, "main", read, silent + 0.3, "r2") is not None
    assert kept(router, "main", Route(read.routing, True, wrote_at=silent), silent + 0.3, "r2") is None  # (its
    # copy is as of the primary's probe at 11.0: the write at `silent` is not known to be in it)


def test_a_reload_keeps_what_the_probes_told(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    router = Router(cfg)  # type: ignore[arg-type]
    router.sets["main"].primary_polled(10.0, False, "0/100")
    router.sets["main"].replica_polled("r1", 10.1, True, "0/100")
    router.reconfigure(cfg)  # type: ignore[arg-type]
    assert router.sets["main"].health("r1", 10.2) is Health.HEALTHY


def test_probe_targets_use_the_backend_credentials_and_a_tenant_database(tmp_path: Path) -> None:
    [(primary, database, replicas)] = probe_targets(config(tmp_path))  # type: ignore[arg-type]
    assert (primary.name, primary.port, database) == ("main", 5432, "saas")
    assert [(b.name, b.port, r.name, b.user) for b, r in replicas] == [
        ("main/r1", 5433, "r1", "pgtenant"), ("main/r2", 5434, "r2", "pgtenant")]


JUDGED = [
    ("SELECT * FROM t WHERE a = $1", True),
    ("select count(*), pg_catalog.now() from t join u using (id)", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("SHOW search_path", True),
    ("EXPLAIN ANALYZE SELECT 1", True),
    ("BEGIN READ ONLY; SELECT 1", True),
    ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", True),
    ("BEGIN; SET TRANSACTION READ ONLY; SELECT 1", True),
    ("BEGIN", False),
    ("BEGIN READ WRITE", False),
    ("BEGIN; SELECT 1", False),
    ("BEGIN; SELECT 1; COMMIT", True),  # a whole transaction in one text, that only read
    ("BEGIN READ ONLY; SAVEPOINT a; SELECT 1; ROLLBACK TO a; RELEASE a; END", True),
    ("BEGIN; SELECT 1; COMMIT; BEGIN", False),
    # PostgreSQL applies the modes in order: the last one wins (red team 9r F1)
    ("BEGIN READ ONLY, READ WRITE", False),
    ("START TRANSACTION READ ONLY, READ WRITE", False),
    ("BEGIN; SET TRANSACTION READ ONLY, READ WRITE", False),
    ("BEGIN READ WRITE, READ ONLY", True),
    # AND CHAIN opens the next transaction with the ended one's characteristics (red team 9r F1)
    ("BEGIN; COMMIT AND CHAIN", False),
    ("START TRANSACTION; ROLLBACK AND CHAIN", False),
    ("BEGIN; SELECT 1; COMMIT AND CHAIN", False),
    ("BEGIN READ ONLY; COMMIT AND CHAIN; SELECT 1", True),
    ("BEGIN READ ONLY; COMMIT AND CHAIN; COMMIT", True),
    # a standby refuses SERIALIZABLE (0A000): the primary (red team 9r F8)
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", False),
    ("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", False),
    ("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE", False),
    ("SET default_transaction_isolation = 'serializable'", False),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", False),
    ("BEGIN; SELECT 1; PREPARE TRANSACTION 'x'", False),
    ("SELECT 1; INSERT INTO t VALUES (1)", False),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 4711", True),  # (judged by its shape, literals as $n)
    ("SELECT x::varchar(10) FROM t", True),  # a shape that does not parse: judged by its text
    ("SELECT x::varchar(10) FROM t FOR SHARE", False),
    ("SELECT * FROM t LIMIT 10 OFFSET 20", True),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", False),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT * INTO u FROM t", False),
    ("SELECT nextval('s')", False),
    ("SELECT currval('s')", False),
    ("SELECT pg_advisory_lock(1)", False),
    ("SELECT set_config('a.b', '1', false)", False),
    ("SELECT my_function()", False),
    ("SELECT public.lower('x')", False),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", False),
    ("SET application_name = 'x'", True),
    ("RESET DateStyle", True),
    ("SET LOCAL work_mem = '1MB'", True),
    ("SET x.y = 1; SELECT 2", True),
    ("SET default_transaction_read_only = off", False),
    ("SET ROLE other", False),
    ("SET SESSION AUTHORIZATION other", False),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", False),
    ("RESET ALL", False),
    ("SET seed = 0.5", False),  # pins the session to its server: not on a replica
    ("SELECT setseed(0.5)", False),
    ("SET work_mem FROM CURRENT", False),
    ("SET search_path = a, b", True),
    ("COMMIT", True),  # (outside a transaction: a warning; a session in one holds its server, asks for none)
    ("SELEC 1", False),
    ("", False),
]


@pytest.mark.parametrize(("sql", "read_only"), JUDGED)
def test_read_only_sql(sql: str, read_only: bool) -> None:
    assert read_only_sql(sql) is read_only


def test_a_serializable_session_default_is_not_for_a_replica() -> None:
    assert [serializable(t) for t in (
        None, "SET default_transaction_isolation TO 'serializable'", "SET default_transaction_isolation = SERIALIZABLE",
        "SELECT pg_catalog.set_config('default_transaction_isolation', 'serializable', false)",
        "SET default_transaction_isolation TO 'repeatable read'")] == [False, True, True, True, False]


@pytest.mark.parametrize(("sql", "read_only"), JUDGED)
def test_the_policy_decision_says_the_same(sql: str, read_only: bool) -> None:
    """The policy's decision carries the same verdict (READ_ONLY, cached with it: a routed session reads it instead
    of judging the text again); a refused text is not read-only (it goes to the primary, to be refused there)."""
    decision = decide(TenantPolicy(tenant="t", strategy="database", allow_writes=True), sql)
    says = not isinstance(decision, Deny) and READ_ONLY in decision.effects
    assert says is (read_only and not isinstance(decision, Deny)), decision


def test_long_texts_are_judged_once_by_digest_and_the_longest_not_at_all() -> None:
    columns = ", ".join(f"c{i}" for i in range(600))  # ~4.5 KB, no integer literal
    long = f"SELECT {columns} FROM t"
    assert read_only_sql(long) and read_only_sql(long)
    in_list = "SELECT * FROM t WHERE a IN (" + ",".join(str(i) for i in range(3000)) + ")"  # judged by its shape
    assert 2048 < len(in_list) <= MAX_JUDGED and read_only_sql(in_list)
    assert not read_only_sql(f"SELECT {columns} FROM t FOR UPDATE")
    assert not read_only_sql("SELECT " + " + ".join(["1"] * 9000))  # longer than MAX_JUDGED: the primary


def test_read_only_requests_by_their_messages() -> None:
    q = m.frame(b"Q", b"SELECT 1\x00")
    parse = m.frame(b"P", b"s1\x00SELECT $1\x00\x00\x00")
    bind = m.frame(b"B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00")
    ex, sync = m.frame(b"E", b"\x00\x00\x00\x00\x00"), m.frame(b"S", b"")
    none = lambda _name: None  # noqa: E731
    assert read_only_request(q, none) and read_only_request(q + q, none)
    assert read_only_request(parse + bind + ex + sync, none)
    assert not read_only_request(parse + bind + ex, none)  # no Sync yet: more may follow on the same server
    describe, flush = m.frame(b"D", b"Ss1\x00"), m.frame(b"H", b"")
    assert read_only_request(parse + describe + flush, none)  # asyncpg's prepare: it waits for the answers
    assert read_only_request(bind + ex + sync, lambda name: "SELECT 2" if name == "s1" else None)
    assert not read_only_request(bind + ex + sync, none)  # an unknown statement
    assert not read_only_request(bind + ex + sync, lambda _: "DELETE FROM t")
    assert not read_only_request(m.frame(b"Q", b"INSERT INTO t VALUES (1)\x00"), none)
    assert not read_only_request(m.frame(b"F", b"\x00\x00\x00\x01") + sync, none)
    assert not read_only_request(q[:-1], none) and not read_only_request(b"", none)


def test_a_replica_waiting_for_its_checks_takes_their_outcome() -> None:
    s = ReplicaSet("main", {"r1": Replica("r1", etl=False)}, 1.0, 5.0, 1.0)
    s.replica_failed("r1", "waiting")
    s.replica_checked("r1", "waiting", "preflight: role is a superuser")
    assert s.replicas["r1"].failure == "preflight: role is a superuser"
    s.replica_checked("r1", "waiting", None)  # (failed since: stays)
    assert s.replicas["r1"].failure == "preflight: role is a superuser"
    s.replica_failed("r1", "waiting")
    s.replica_checked("r1", "waiting", None)
    assert s.replicas["r1"].failure is None


def test_a_serving_replica_whose_checks_fail_again_is_out_at_once() -> None:
    """Its last pass stood while a reload's checks ran (proxy/io/replicas.py check_inputs unchanged): their failure
    takes it out at once, not at the next probe (an hour away here)."""
    s = ReplicaSet("main", {"r1": Replica("r1", etl=False)}, 3600.0, 3600.0, 1.0)
    s.primary_polled(10.0, False, "0/100")
    s.replica_polled("r1", 10.1, True, "0/100")
    assert s.candidates(10.2, 3600.0, None, 0.0) == ["r1"]
    s.replica_checked("r1", "waiting", "preflight: role is a superuser")
    assert s.candidates(10.3, 3600.0, None, 0.0) == []
    assert s.replicas["r1"].failure == "preflight: role is a superuser"


def test_a_replica_whose_checks_pass_serves_at_once() -> None:
    """Probed while its start-up checks run (left out: `waiting`), then the checks pass: the replica may serve
    before the next probe (an hour away here), though the fit list was kept from the probe (wp-route18's cache
    with wp-rt9r's checks: the merge kept it out until the next probe)."""
    s = ReplicaSet("main", {"r1": Replica("r1", etl=False)}, 3600.0, 3600.0, 1.0)
    s.primary_polled(10.0, False, "0/100")
    s.replica_polled("r1", 10.1, True, "0/100")
    s.replica_failed("r1", "waiting")
    assert s.candidates(10.2, 3600.0, None, 0.0) == []
    s.replica_checked("r1", "waiting", None)
    assert s.candidates(10.3, 3600.0, None, 0.0) == ["r1"]


@pytest.mark.parametrize(("sql", "writes_nothing", "read_only"), [
    ("BEGIN", True, False), ("BEGIN; SELECT 1; COMMIT", True, True), ("START TRANSACTION ISOLATION LEVEL "
                                                                       "SERIALIZABLE", True, False),
    ("SET TRANSACTION READ WRITE", True, False), ("SELECT abalance FROM a WHERE aid = 42", True, True),
    ("COMMIT", True, True), ("BEGIN; UPDATE a SET x = 1", False, False), ("SELECT nextval('s')", False, False),
    ("SELECT 1 FOR UPDATE", False, False), ("SELECT f()", False, False), ("not sql", False, False),
])
def test_writes_nothing_sql(sql: str, writes_nothing: bool, read_only: bool) -> None:
    """What read-your-writes asks of a transaction's requests: a read-write BEGIN is no write, the rest as read_only_sql
    (a text judged both ways keeps both verdicts apart)."""
    assert replicas.writes_nothing_sql(sql) is writes_nothing
    assert replicas.read_only_sql(sql) is read_only
    assert replicas.writes_nothing_sql(sql) is writes_nothing


def test_a_tree_too_deep_to_read_is_not_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text whose parse tree is too deep for the JSON reader (red team 9r F4: hundreds of nested `-(…)`, a
    RecursionError depending on the stack's depth at the call) is judged not read-only (the primary; the policy
    decides it) instead of ending the session with XX000."""
    def too_deep(text: str) -> object:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON object")

    monkeypatch.setattr(replicas.json, "loads", too_deep)
    deep = "SELECT " + "-(" * 600 + "x" + ")" * 600  # (no integer literal: judged by its own text, not a shape's)
    assert replicas.read_only_sql(deep) is False
    assert replicas.writes_nothing_sql(deep) is False


def test_a_routed_sessions_route_is_the_same_object_from_write_to_write() -> None:
    """Routed.route: one Route per kind (read-only or not) until the session's next write, which makes both anew
    with its time (a kept server's resume keys kept's answer on the Route object: Pool.reuse)."""
    routed = replicas.Routed(RoutingConfig(route="auto"))
    first = routed.route(True)
    assert routed.route(True) is first and first.wrote_at is None
    write = routed.route(False)
    assert write.wrote_at is None and not write.read_only and routed.wrote
    routed.released(None, lambda: 7.5)  # (a primary after a write: read-your-writes from 7.5)
    after = routed.route(True)
    assert after == Route(routed.routing, True, 7.5) and routed.route(True) is after
    assert routed.route(False, lambda: False) == Route(routed.routing, False, 7.5)  # (it writes nothing)
    routed.released(None, lambda: 8.0)
    assert routed.route(True).wrote_at == 7.5  # (a read: no new write)
    routed.route(False, lambda: True)
    routed.released(None, lambda: 9.0)
    assert routed.route(True).wrote_at == 9.0 and routed.route(True) is routed.route(True)


def test_a_reload_gives_a_routed_session_its_new_routing_and_keeps_its_last_write() -> None:
    """Routed.reconfigure (red team 9s8 F3): the next Routes carry the reloaded routing and the last write's time
    (read-your-writes across the reload); the same routing again keeps the Route objects (a kept server's resume)."""
    routed = replicas.Routed(RoutingConfig(route="auto"))
    routed.route(False, lambda: True)
    routed.released(None, lambda: 7.5)
    kept = routed.route(True)
    routed.reconfigure(RoutingConfig(route="auto"))
    assert routed.route(True) is kept
    routed.reconfigure(RoutingConfig(route="primary", max_replica_lag=2.0))
    assert routed.route(True) == Route(RoutingConfig(route="primary", max_replica_lag=2.0), True, 7.5)
    assert routed.route(False) == Route(RoutingConfig(route="primary", max_replica_lag=2.0), False, 7.5)



def test_routing_of_a_backend_without_replicas_is_the_primary(tmp_path: Path) -> None:
    """replicas.routing_of: the user's routing; "primary" when its backend has no replica (as `routed` is None)."""
    cfg = config(tmp_path, route="auto", max_replica_lag=3.0)
    assert replicas.routing_of(cfg, "alice") == RoutingConfig(route="auto", max_replica_lag=3.0)  # type: ignore[arg-type]
    gone = replace(cfg, backends={**cfg.backends, "main": replace(cfg.backends["main"], replicas=())})  # type: ignore[attr-defined]
    assert replicas.routing_of(gone, "alice") == RoutingConfig(route="primary", max_replica_lag=3.0)  # type: ignore[arg-type]
    assert replicas.routed(gone, "alice") is None  # type: ignore[arg-type]
