"""Hidden schemas (issue 14): a schema created after the tenant was prepared is answered as a missing one until the
next reload, and then as the schema it sees (red team 9a8 N2: every schema the tenant cannot see is renamed alike).

A hidden schema's statement and a missing one's are both sent with a reserved name and both answers written back, so
the proxy's work never tells them apart. Which schemas a tenant sees is what the tenant was prepared with (startup,
each reload): one created since is of none of them, renamed and answered as missing (as the catalogs leave it out)
until the next reload, which finds it. Lab: the one of test_hidden_bounds.py (`globex` hidden from alice, a shared
tenant, and dan, a database tenant of `saas`).
"""

from __future__ import annotations

import socket

import pytest

from proxy.protocol import messages as m
from tests.integration.test_hidden_bounds import MODES, TENANTS, proxies  # noqa: F401 (the fixture)
from tests.integration.test_hidden_lastline import _errors, _exchange, _rows
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import SYNC, bind, execute, login, parse


def _session(proxy: ProxyProcess, strategy: str) -> socket.socket:
    user, db = TENANTS[strategy]
    sock, msgs = login(proxy.port, {"user": user, "database": db}, proxy.password(user))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _ask(proxy: ProxyProcess, strategy: str, sql: str, extended: bool) -> tuple[list[tuple[str, str]], list[bytes]]:
    sock = _session(proxy, strategy)
    try:
        got = _exchange(sock, parse(sql) + bind() + execute() + SYNC if extended else m.Query(sql).encode())
    finally:
        sock.close()
    return _errors(got), _rows(got)


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_schema_created_since_the_tenant_was_prepared_is_missing_until_the_next_reload(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, strategy: str,  # noqa: F811
        extended: bool) -> None:
    proxy = proxies[mode]
    later = f"zz_later_{mode[0]}{strategy[0]}{int(extended)}"
    pg.execute(f"CREATE SCHEMA {later}; CREATE TABLE {later}.t (x int); INSERT INTO {later}.t VALUES (7); "
               f"GRANT USAGE ON SCHEMA {later} TO PUBLIC; GRANT SELECT ON {later}.t TO PUBLIC", dbname="saas")
    try:
        missing = later.replace("zz_later", "zz_lateq")  # (the same length: a name that does not exist)
        answers = {name: _ask(proxy, strategy, f"SELECT x FROM {name}.t", extended) for name in (later, missing)}
        assert answers[later] == ([("42P01", f'relation "{later}.t" does not exist')], []), answers
        assert answers[missing] == ([("42P01", f'relation "{missing}.t" does not exist')], []), answers
        proxy.reload("reloaded")
        assert _ask(proxy, strategy, f"SELECT x FROM {later}.t", extended) == ([], [b"\x00\x01\x00\x00\x00\x017"])
        assert _ask(proxy, strategy, f"SELECT x FROM {missing}.t", extended) == answers[missing]
    finally:
        pg.execute(f"DROP SCHEMA {later} CASCADE", dbname="saas")
        proxy.reload("reloaded")


@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_new_tenants_schema_is_missing_before_and_hidden_after_the_reload(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, strategy: str) -> None:  # noqa: F811
    """A schema created for a new schema-strategy tenant: answered as missing once created (of none of the schemas
    the tenant was prepared with), and after the reload that configures its tenant, hidden, answered the same way
    (renamed both times: the answer never tells which)."""
    proxy = proxies[mode]
    schema = f"zz_newco_{mode[0]}{strategy[0]}"
    pg.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int); INSERT INTO {schema}.t VALUES (7); "
               f"GRANT USAGE ON SCHEMA {schema} TO pgt_role_1; GRANT SELECT ON {schema}.t TO pgt_role_1",
               dbname="saas")  # (its own tenant's role only, as provisioning leaves it: the preflight checks)
    missing = ([("42P01", f'relation "{schema}.t" does not exist')], [])
    try:
        assert _ask(proxy, strategy, f"SELECT x FROM {schema}.t", False) == missing
        proxy.extra_tenants["newco"] = {"strategy": "schema", "database": "saas", "schema": schema,
                                        "backend_user": "pgt_role_1"}
        proxy.write_config()
        proxy.reload("reloaded")
        assert _ask(proxy, strategy, f"SELECT x FROM {schema}.t", False) == missing
        assert _ask(proxy, strategy, f"SELECT x FROM {schema}.t", True) == missing
    finally:
        proxy.extra_tenants.pop("newco", None)
        proxy.write_config()
        proxy.reload("reloaded")
        pg.execute(f"DROP SCHEMA {schema} CASCADE", dbname="saas")
