"""The settings a session keeps for its replay are bounded ([pool] max_session_settings and
max_session_setting_bytes; red team 9s7 S1: 20,000 pipelined custom SETs were all kept and replayed on every server
hand-over), with psycopg and raw pipelined wire, in both pool modes: past the bound a SET fails with 54000 before it
reaches the server, the session goes on with what it kept (replayed on another server), a RESET frees room, another
tenant is unaffected, the refusal is counted."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, prepare_backend

SETTINGS = 20  # [pool] max_session_settings of the proxy
SETTING_BYTES = 16384  # [pool] max_session_setting_bytes


@pytest.fixture(scope="module", params=["transaction", "session"])
def bounded(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    """pgtenant with small settings bounds, one server per pool in transaction pooling (another client's request
    takes it between two of a session's: its settings are replayed), no sticky servers."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable",
                     pool={"pool_mode": request.param, "pool_size": 1 if request.param == "transaction" else 4,
                           "sticky_servers": False, "query_wait_timeout": 30.0, "max_session_settings": SETTINGS,
                           "max_session_setting_bytes": SETTING_BYTES})
    p.start()
    yield p
    p.stop()


def _denied(p: ProxyProcess) -> float:
    text = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    found = re.search(r'pgtenant_denied_statements_total\{[^}]*rule="session_settings_limit"[^}]*tenant="acme"'
                      r'[^}]*\} (\S+)|pgtenant_denied_statements_total\{[^}]*tenant="acme"[^}]*'
                      r'rule="session_settings_limit"[^}]*\} (\S+)', text)
    return float(next(g for g in found.groups() if g)) if found else 0.0


def test_a_set_past_the_bound_fails_and_the_session_goes_on(bounded: ProxyProcess) -> None:
    before = _denied(bounded)
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a, \
            psycopg.connect(bounded.dsn("alice"), autocommit=True) as other, \
            psycopg.connect(bounded.dsn("bruno"), autocommit=True) as b:
        for i in range(SETTINGS):
            a.execute(f"SET rt.k{i} = 'v{i}'")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_settings = {SETTINGS}") as info:
            a.execute(f"SET rt.k{SETTINGS} = 'v'")
        assert info.value.diag.message_hint is not None and "RESET" in info.value.diag.message_hint
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="session_settings_limit"):
            a.execute(f"SELECT set_config('rt.k{SETTINGS}', 'v', false)")
        other.execute("SELECT 1")  # (transaction pooling: the other session had the one server meanwhile)
        # the session goes on with what it kept, on whichever server it gets; its placeholder never got the value
        assert a.execute(f"SHOW rt.k{SETTINGS - 1}").fetchone() == (f"v{SETTINGS - 1}",)
        assert a.execute(f"SELECT current_setting('rt.k{SETTINGS}', true)").fetchone()[0] in (None, "")
        a.execute("SET rt.k0 = 'changed'")  # a setting it keeps may change
        a.execute("RESET rt.k1")
        a.execute(f"SET rt.k{SETTINGS} = 'v'")
        other.execute("SELECT 1")
        assert a.execute(f"SHOW rt.k{SETTINGS}").fetchone() == ("v",)
        assert a.execute("SHOW rt.k0").fetchone() == ("changed",)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            a.execute("SET rt.more = 'v'")
        # a transaction's SETs rolled back free their room; SET LOCAL is not kept
        a.execute("RESET rt.k2")
        a.execute("BEGIN")
        a.execute("SET rt.tx = 'v'")
        a.execute("ROLLBACK")
        a.execute("BEGIN")
        a.execute("SET rt.tx2 = 'v'")
        a.execute("SET LOCAL rt.local = 'v'")
        a.execute("COMMIT")
        # the bytes
        a.execute("RESET ALL")
        a.execute(f"SET rt.big = '{'x' * (SETTING_BYTES // 2)}'")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_setting_bytes = {SETTING_BYTES}"):
            a.execute(f"SET rt.big2 = '{'x' * (SETTING_BYTES // 2)}'")
        other.execute("SELECT 1")
        assert a.execute("SELECT length(current_setting('rt.big'))").fetchone() == (SETTING_BYTES // 2,)
        # another tenant: its own sessions, its own count
        for i in range(SETTINGS):
            b.execute(f"SET rt.b{i} = 'w'")
        assert b.execute("SHOW rt.b0").fetchone() == ("w",)
    assert _denied(bounded) - before == 4


def test_pipelined_sets_past_the_bound_fail_each_and_the_session_goes_on(bounded: ProxyProcess) -> None:
    """The red team's shape: SETs of long values pipelined without waiting for their answers."""
    value = "x" * 100
    a = wire.connect(bounded, "alice", timeout=30)
    try:
        n = 3 * SETTINGS
        a.sendall(b"".join(m.query_message(f"SET rt.p{i} = '{value}'") for i in range(n)))
        answers = [wire.read_until(a, b"Z") for _ in range(n)]
        codes = [(wire.errors_in(msgs) or [{"C": "ok"}])[0]["C"] for msgs in answers]
        assert codes == ["ok"] * SETTINGS + ["54000"] * (n - SETTINGS)
        msgs = wire.exchange(a, m.query_message(f"SELECT current_setting('rt.p{SETTINGS - 1}') = '{value}'"))
        assert [m.decode_data_row(body) for t, body in msgs if t == b"D"] == [[b"t"]]
        msgs = wire.exchange(a, m.query_message(f"SELECT current_setting('rt.p{SETTINGS}', true)"))
        assert [m.decode_data_row(body) for t, body in msgs if t == b"D"] in ([[None]], [[b""]])
    finally:
        a.close()


def test_a_prepared_set_past_the_bound_fails_at_its_bind(bounded: ProxyProcess) -> None:
    """The extended protocol: a named statement of a SET is refused when a Bind would run it past the bound, and runs
    once a RESET made room."""
    with psycopg.connect(bounded.dsn("alice"), autocommit=True) as a:
        for i in range(SETTINGS):
            a.execute(f"SET rt.k{i} = 'v{i}'")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"max_session_settings = {SETTINGS}"):
            a.execute("SELECT set_config('rt.prepared', 'p', false)", prepare=True)
        assert a.execute("SELECT 1").fetchone() == (1,)
        a.execute("RESET rt.k0")
        assert a.execute("SELECT set_config('rt.prepared', 'p', false)", prepare=True).fetchone() == ("p",)
        assert a.execute("SHOW rt.prepared").fetchone() == ("p",)
