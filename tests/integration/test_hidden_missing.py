"""Hidden schemas (issue 14): a missing schema's statement is sent renamed as a hidden one's is (red team 9a8 N2), and
PostgreSQL's answer for it, written back, is still the one PostgreSQL gives for the client's own text.

Where a tenant has hidden schemas, a schema of none of those it sees is renamed too, so the proxy's answer for a
missing schema is no longer PostgreSQL's answer to the client's text as sent: it is PostgreSQL's answer to the renamed
text, written back. These tests hold it to the former: each form is sent by dan (a database tenant of `saas`, where
`globex` is hidden: its statements are otherwise sent as written) through the proxy and straight to PostgreSQL (the
superuser, the same text), and every field of every error and notice (SQLSTATE, message, detail, hint, position,
the source fields) must be the same. Lab: the one of test_hidden_bounds.py.
"""

from __future__ import annotations

import socket

import pytest

from proxy.protocol import messages as m
from tests.integration.test_hidden_bounds import MODES, proxies  # noqa: F401 (the fixture)
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import SYNC, bind, exchange, execute, login, parse

# Statements naming a missing schema ({s}) that the proxy sends as PostgreSQL gets them, but for the renaming.
FORMS = [
    "SELECT * FROM {s}.orders",
    'SELECT * FROM "{s}".orders WHERE nosuch',
    "SELECT * FROM {S}.orders",
    "SELECT * FROM /* c */ {s} . orders",
    'SELECT * FROM U&"{s}".orders',
    "SELECT 1 FROM generate_series(1, 2) g, {s}.orders o WHERE o.id = g",
    "SELECT NULL::{s}.t",
    "SELECT x::{s}.t FROM (SELECT 1 AS x) v",
    "SELECT 1 OPERATOR({s}.+) 1",
    "SELECT 'a' COLLATE {s}.\"C\"",
    "SELECT {s}.orders.id",
    "SELECT ({s}.orders.*)",
    "CREATE TEMP TABLE n2_like (LIKE {s}.orders)",
    "CREATE TEMP TABLE n2_type (a {s}.t)",
    # (not a temporary view's query: it is sent wrapped, and PostgreSQL's position is in that text, renamed or not:
    # docs/security.md)
    "COPY {s}.orders TO STDOUT",
    "LOCK {s}.orders IN ACCESS SHARE MODE",
    "PREPARE n2_p AS SELECT * FROM {s}.orders",
    "SELECT 1; SELECT * FROM {s}.orders; SELECT 2",
    "SELECT * FROM {s}.orders, {s}.orders2",
    "SELECT 1 FROM (SELECT 1) v WHERE EXISTS (SELECT 1 FROM {s}.orders)",
    "WITH w AS (SELECT * FROM {s}.orders) SELECT * FROM w",
    "SELECT 'é', * FROM {s}.orders",
    # an error after the name: its position moves back by what the renaming added
    "SELECT NULL::{s}.t FROM nosuch_rel",
    "SELECT 1 OPERATOR({s}.+) nosuch",
    "SELECT 'a' COLLATE {s}.\"C\", 'é' FROM nosuch_rel",
    "SELECT NULL::\"{s}\".t, NULL::{S}.t2 FROM nosuch_rel",
    "CREATE TEMP TABLE IF NOT EXISTS n2_exists (LIKE {s}.orders)",
]


def _answers(port: int, user: str, password: str, sql: str, extended: bool) -> list[dict[str, str]]:
    sock, msgs = login(port, {"user": user, "database": "saas"}, password)
    assert msgs[-1][0] == b"Z", msgs
    try:
        sock_data = parse(sql) + bind() + execute() + SYNC if extended else m.Query(sql).encode()
        if "n2_exists" in sql:  # (the table exists: PostgreSQL's NOTICE, or the missing schema's error)
            exchange(sock, m.Query("CREATE TEMP TABLE n2_exists (a int)").encode())
        got = exchange(sock, sock_data)
    finally:
        _close(sock)
    return [m.decode_error_fields(body) for t, body in got if t in (b"E", b"N")]


def _close(sock: socket.socket) -> None:
    try:
        sock.sendall(m.TERMINATE_MESSAGE)
    finally:
        sock.close()


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
def test_a_missing_schema_renamed_is_answered_as_postgresql_answers_it(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, form: str, extended: bool) -> None:  # noqa: F811
    if extended and ";" in form:
        pytest.skip("one statement per Parse")
    sql = form.format(s="glebox", S="GLEBOX")
    proxy = proxies[mode]
    through = _answers(proxy.port, "dan", proxy.password("dan"), sql, extended)
    direct = _answers(pg.port, pg.superuser, pg.password, sql, extended)
    assert through and through == direct, (through, direct)
