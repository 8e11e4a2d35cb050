"""`pgtenant mcp` in front of a real pgtenant and PostgreSQL, driven by the MCP SDK's own client over stdio and HTTP.

The fixture's tenants: alice is acme (shared schema, `saas.public.orders` rows with tenant_id 'acme', beside
bigco's), gina is globex (schema `globex` in `saas`), ivan is initech (database `initech`, allow_writes = true: the
agent profile and the MCP door's read-only transaction stand between an agent and a write there). alice, gina and
ivan are logins of the agent profile (the door logs in only as one), without a row cap or admission limits of
their own (the door's --max-rows cuts); bruno (bigco) is of the default profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

from proxy.mcp.door import APPLICATION_NAME, Door, Rows
from tests.support.certs import TlsFiles
from tests.support.mcpclient import Call, http_calls, http_server, stdio_calls, text
from tests.support.pgcluster import PgCluster, free_port
from tests.support.polling import until
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess, prepare_backend

REPORTING = Path(__file__).resolve().parents[2] / "docs" / "reporting.md"

# user -> (the schema its tables are in, its rows in orders, the columns of its orders)
TENANTS = {
    "alice": ("public", 200, ["id", "tenant_id", "amount"]),
    "gina": ("globex", 40, ["id", "amount"]),
    "ivan": ("public", 7, ["id", "amount"]),
}
# Names of the other tenants' objects that must never show up in a tenant's catalog answers.
FOREIGN = {"alice": ("globex", "initech"), "gina": ("initech", "public"), "ivan": ("globex", "saas")}
COUNT: Call = ("query", {"sql": "SELECT count(*) FROM orders"})


# agent.statement_timeout: the door's calls that wait for a lock below must outlast the tests' waits (30 s at most).
AGENT_KEYS = {"profile": "agent", "agent.max_rows": 100_000, "agent.max_cost": 0.0, "agent.max_estimated_rows": 0.0,
              "agent.statement_timeout": 600.0}


@pytest.fixture(scope="module")
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """pgtenant with TLS offered (not required), backend over TLS when the cluster has it; alice, gina and ivan of
    the agent profile."""
    prepare_backend(pg)
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("pgtenant"), tls=tls_certs,
        backend_sslmode="require" if pg.ssl_enabled else "disable",
        user_keys={user: AGENT_KEYS for user in TENANTS},
    )
    p.start()
    yield p
    p.stop()


def _data(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return result.structured_content


def _error(result: CallToolResult) -> str:
    assert result.is_error, text(result)
    return text(result)


def _rows(result: CallToolResult) -> list[list[Any]]:
    return _data(result)["rows"]


def _flat(exc: BaseException) -> str:
    """An exception with everything it groups (anyio task groups wrap the SDK's HTTP errors)."""
    inner = getattr(exc, "exceptions", ())
    return repr(exc) + "".join(_flat(e) for e in inner) + (_flat(exc.__cause__) if exc.__cause__ else "")


def _direct(proxy: ProxyProcess) -> str:
    """A DSN straight to initech's database as its role (no proxy, no agent profile): the door's own guards alone."""
    role, password = TENANT_ROLES["initech"]
    return proxy.cluster.dsn(role, password, "initech")


def _initech_rows(proxy: ProxyProcess) -> int:
    return proxy.cluster.execute("SELECT count(*) FROM public.orders", dbname="initech")[0][0]


# ------------------------------------------------------------------------------------------ catalog, per strategy


@pytest.mark.parametrize("user", sorted(TENANTS))
def test_list_and_describe_show_only_the_tenants_objects(proxy: ProxyProcess, user: str) -> None:
    schema, rows, columns = TENANTS[user]
    other = "public.orders" if user == "gina" else "globex.orders"
    listed, described, hidden, sample, count = stdio_calls(proxy.dsn(user), [
        ("list_tables", {}),
        ("describe_table", {"table_name": "orders"}),
        ("describe_table", {"table_name": other}),
        ("sample_rows", {"table_name": "orders", "rows": 3}),
        COUNT,
    ])
    tables = _data(listed)["tables"]
    assert {"schema": schema, "name": "orders", "kind": "table"}.items() <= next(
        t for t in tables if t["name"] == "orders").items()
    assert {t["schema"] for t in tables} == {schema}
    assert not any(name in json.dumps(tables) for name in FOREIGN[user])
    info = _data(described)
    assert (info["schema"], info["name"]) == (schema, "orders")
    assert [c["name"] for c in info["columns"]] == columns
    assert [(c["kind"], c["definition"]) for c in info["constraints"]] == [("primary key", "PRIMARY KEY (id)")]
    assert "no table or view" in _error(hidden)
    sampled = _data(sample)
    assert sampled["row_count"] == 3 and [c["name"] for c in sampled["columns"]] == columns
    if user == "alice":
        assert {row[1] for row in sampled["rows"]} == {"acme"}
    assert _rows(count) == [[rows]]


# ------------------------------------------------------------------------------------------------ query & dialect


def test_a_mysql_query_is_translated_and_returns_only_the_tenants_rows(proxy: ProxyProcess) -> None:
    grouped, own_filter = stdio_calls(proxy.dsn("alice"), [
        ("query", {"sql": "SELECT `tenant_id`, COUNT(*) AS n, IFNULL(SUM(`amount`), 0) AS total FROM `orders` "
                   "GROUP BY `tenant_id`", "dialect": "mysql"}),
        ("query", {"sql": "SELECT COUNT(*) FROM `orders` WHERE `tenant_id` = 'bigco'", "dialect": "mysql"}),
    ])
    data = _data(grouped)
    assert "`" not in data["sql"] and "COALESCE" in data["sql"]
    expected_total = sum(g * 1.5 for g in range(1, 301) if g % 3 != 0)
    assert [row[:2] for row in data["rows"]] == [["acme", 200]] and float(data["rows"][0][2]) == expected_total
    assert _rows(own_filter) == [[0]]  # another tenant's key finds nothing


def test_tsql_top_and_snowflake_functions_through_the_schema_tenant(proxy: ProxyProcess) -> None:
    top, iff = stdio_calls(proxy.dsn("gina"), [
        ("query", {"sql": "SELECT TOP 3 [id] FROM [orders] ORDER BY [id] DESC", "dialect": "tsql"}),
        ("query", {"sql": "SELECT IFF(amount > 20, 'big', 'small') AS size, COUNT(*) FROM orders GROUP BY 1 "
                   "ORDER BY 1", "dialect": "snowflake"}),
    ])
    assert _rows(top) == [[40], [39], [38]] and "LIMIT 3" in _data(top)["sql"]
    assert _rows(iff) == [["big", 20], ["small", 20]]


def test_results_are_cut_at_max_rows_with_a_note_and_the_session_goes_on(proxy: ProxyProcess) -> None:
    cut, after, sample = stdio_calls(proxy.dsn("alice"), [
        ("query", {"sql": "SELECT id FROM orders ORDER BY id"}),
        COUNT,
        ("sample_rows", {"table_name": "orders", "rows": 50}),
    ], "--max-rows", "5", "--sample-rows", "4")
    data = _data(cut)
    assert data["rows"] == [[1], [2], [4], [5], [7]] and data["truncated"] is True
    assert "Only the first 5 rows" in data["note"]
    assert _rows(after) == [[200]]
    assert _data(sample)["row_count"] == 4


def test_the_statement_timeout_holds_whatever_the_agent_sets(proxy: ProxyProcess) -> None:
    slow: Call = ("query", {"sql": "SELECT count(*) FROM generate_series(1, 2000000000)"})
    results = stdio_calls(proxy.dsn("gina"), [
        slow,
        ("query", {"sql": "SET statement_timeout = 0"}),  # refused by the profile (and alone: rolled back)
        slow,
        ("query", {"sql": "SELECT set_config('statement_timeout', '0', false), count(*) "
                   "FROM generate_series(1, 2000000000)"}),
        COUNT,
    ], "--statement-timeout", "0.5")
    for result in (results[0], results[2]):
        assert "ERROR 57014" in _error(result) and "statement timeout (0.5 s)" in text(result)
    assert "ERROR 25006" in _error(results[1]) and "agent_setting" in text(results[1])
    assert "ERROR 42501" in _error(results[3]) and "agent_function" in text(results[3])
    assert _rows(results[-1]) == [[40]]


def test_explain_plans_without_running(proxy: ProxyProcess) -> None:
    plan, analyze = stdio_calls(proxy.dsn("ivan"), [
        ("explain", {"sql": "SELECT * FROM `orders` WHERE `id` = 3", "dialect": "mysql"}),
        ("explain", {"sql": "ANALYZE DELETE FROM orders"}),
    ])
    assert "orders" in _data(plan)["plan"] and "cost=" in _data(plan)["plan"]
    assert "42601" in _error(analyze)
    assert _initech_rows(proxy) == 7
    (shared,) = stdio_calls(proxy.dsn("alice"), [("explain", {"sql": "SELECT * FROM orders"})])
    assert "Seq Scan on orders" in _data(shared)["plan"]
    assert "cost=" not in _data(shared)["plan"]  # COSTS OFF: estimates would count every tenant's rows


def test_a_connection_lost_while_idle_is_replaced_on_the_next_call(proxy: ProxyProcess) -> None:
    """A server connection closed under an idle door (here: its backend terminated) costs the agent nothing: the
    read-only statement runs again on a new login."""
    role = TENANT_ROLES["initech"][0]

    async def go() -> tuple[Rows, Rows]:
        door = Door(proxy.dsn("ivan"))
        try:
            first = await door.run("SELECT pg_backend_pid()", limit=1)
            killed = proxy.cluster.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND application_name = %s",
                [role, APPLICATION_NAME], dbname="initech")
            assert killed == [(True,)]
            return first, await door.run("SELECT pg_backend_pid(), count(*) FROM orders", limit=1)
        finally:
            await door.close()

    first, second = asyncio.run(go())
    assert second.rows[0][0] != first.rows[0][0] and second.rows[0][1] == 7


# ------------------------------------------------------------------------------------------------------ refusals


def test_the_door_runs_only_as_an_agent_profile_login(proxy: ProxyProcess) -> None:
    """A login of the default profile gives the door nothing: the proxy refuses it after its proof (the door's own
    read-only transaction alone would leave the agent without the profile's row cap, admission and function list),
    and every tool says why and what to do."""
    results = stdio_calls(proxy.dsn("bruno"), [("list_tables", {}), COUNT, ("explain", {"sql": "SELECT 1"})])
    for result in results:
        answer = _error(result)
        assert 'user "bruno" has the default profile' in answer and 'profile = "agent"' in answer, answer
    with psycopg.connect(proxy.dsn("bruno"), autocommit=True) as other:  # (any other client of the login: as before)
        assert other.execute("SELECT count(*) FROM orders").fetchone() == (100,)



def test_multi_statement_escape_from_the_read_only_transaction_is_refused(proxy: ProxyProcess) -> None:
    """The reference PostgreSQL MCP server's read-only transaction was escaped with `COMMIT; DROP SCHEMA ...` in
    one simple-protocol message. Here the text travels as one Parse: refused whole. Through the proxy its policy
    (the agent profile's) refuses the DROP or DELETE first, or PostgreSQL refuses the several commands; straight to
    initech's database as its role, which may write, only PostgreSQL's "multiple commands" refusal stands."""
    escapes = [
        ("query", {"sql": "COMMIT; DROP SCHEMA globex CASCADE"}),
        ("query", {"sql": "COMMIT; DROP SCHEMA `globex` CASCADE", "dialect": "mysql"}),
        ("explain", {"sql": "SELECT 1; COMMIT; DROP SCHEMA globex CASCADE"}),
        ("query", {"sql": "ROLLBACK; BEGIN READ WRITE; DROP SCHEMA globex CASCADE; COMMIT"}),
    ]
    results = stdio_calls(proxy.dsn("gina"), [*escapes, COUNT])
    for result in results[:-1]:
        refusal = r"ERROR (42501|25006): pgtenant: .*\(rule (agent_statement|agent_setting)\)"
        assert re.search(refusal, _error(result)), text(result)
    assert _rows(results[-1]) == [[40]]
    assert proxy.cluster.execute("SELECT count(*) FROM globex.orders", dbname="saas") == [(40,)]
    escapes = [
        ("query", {"sql": "COMMIT; DELETE FROM orders"}),
        ("query", {"sql": "COMMIT; DELETE FROM `orders`", "dialect": "mysql"}),
        ("query", {"sql": "SELECT 1; COMMIT; BEGIN; DELETE FROM orders; COMMIT"}),
        ("explain", {"sql": "SELECT 1; COMMIT; DELETE FROM orders"}),
    ]
    for result in stdio_calls(proxy.dsn("ivan"), escapes):
        assert re.search(r"ERROR 42601: cannot insert multiple commands|rule read_only", _error(result)), text(result)
    results = stdio_calls(_direct(proxy), [*escapes, ("query", {"sql": "SELECT 1; COMMIT; BEGIN; SELECT 2"})])
    assert all("ERROR 42601" in _error(r) and "multiple commands" in text(r) for r in results)
    assert _initech_rows(proxy) == 7


WRITES = ["DELETE FROM orders", "UPDATE orders SET amount = 0", "INSERT INTO orders VALUES (99, 1) RETURNING id",
          "SELECT * FROM orders FOR UPDATE", "EXPLAIN ANALYZE DELETE FROM orders",
          "WITH d AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM d"]


def test_writes_are_tool_errors_even_where_the_tenant_may_write(proxy: ProxyProcess) -> None:
    """Through the proxy the agent profile refuses them; straight to initech's database as its role (which may
    write), the door's own read-only transaction does, and a READ WRITE setting does not outlive its call."""
    (shared,) = stdio_calls(proxy.dsn("alice"), [("query", {"sql": "DELETE FROM orders"})])
    assert "ERROR 25006" in _error(shared) and "pgtenant rule: read_only" in text(shared)
    for sql, result in zip(WRITES, stdio_calls(proxy.dsn("ivan"), [("query", {"sql": sql}) for sql in WRITES]),
                           strict=True):
        assert re.search(r"ERROR (25006|42501): pgtenant: .*\(rule (read_only|agent_statement)\)", _error(result)), \
            (sql, text(result))
    assert _initech_rows(proxy) == 7
    writes = WRITES
    results = stdio_calls(_direct(proxy), [
        *[("query", {"sql": sql}) for sql in writes],
        ("query", {"sql": "SET TRANSACTION READ WRITE"}),  # runs alone, then rolled back: the next is read-only
        ("query", {"sql": "DELETE FROM orders RETURNING id"}),
        ("query", {"sql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"}),
        ("query", {"sql": "DELETE FROM orders RETURNING id"}),
        COUNT,
    ])
    for result in results[: len(writes)]:
        assert "ERROR 25006" in _error(result) and "read-only transaction" in text(result)
    assert "returns no rows" in _error(results[len(writes)])
    assert "ERROR 25006" in _error(results[len(writes) + 1])
    assert "ERROR 25006" in _error(results[len(writes) + 3])
    assert _rows(results[-1]) == [[7]] and _initech_rows(proxy) == 7


def test_cross_tenant_references_are_tool_errors(proxy: ProxyProcess) -> None:
    results = stdio_calls(proxy.dsn("alice"), [
        ("query", {"sql": "SELECT * FROM globex.orders"}),
        ("query", {"sql": "SELECT * FROM initech.public.orders"}),
        ("describe_table", {"table_name": "globex.orders"}),
        ("sample_rows", {"table_name": "globex.orders"}),
        ("query", {"sql": "SELECT * FROM `globex`.`orders`", "dialect": "mysql"}),
    ])
    assert "ERROR 42P01" in _error(results[0])
    assert "ERROR 42501" in _error(results[1]) and "pgtenant rule: cross_database" in text(results[1])
    assert "no table or view" in _error(results[2]) and "no table or view" in _error(results[3])
    assert "ERROR 42P01" in _error(results[4])
    (schema_tenant,) = stdio_calls(proxy.dsn("gina"), [("query", {"sql": "SELECT count(*) FROM public.orders"})])
    assert "ERROR 42P01" in _error(schema_tenant)


# Attack-suite style, through the query tool, per strategy: (sql, "deny" | "ok" | "any"). Whatever happens, no
# other tenant's name appears in an answer (unless the attack spelled it), and after each case the session answers
# with the tenant's own context and rows.
ATTACKS = {
    "alice": [
        ("SELECT set_config('pgtenant.tenant_id', 'bigco', false), count(*) FROM orders", "deny"),
        ("SET pgtenant.tenant_id = 'bigco'", "deny"),
        ("SET ROLE pgtenant_backend", "deny"),
        ("RESET ROLE", "deny"),
        ("SET SESSION AUTHORIZATION DEFAULT", "deny"),
        ("DO $$ BEGIN PERFORM set_config('pgtenant.tenant_id', 'bigco', false); END $$", "deny"),
        ("COPY orders TO STDOUT", "deny"),
        ("COPY (SELECT * FROM orders) TO '/tmp/pgtenant-mcp-leak'", "deny"),
        ("SELECT * FROM dblink('dbname=saas', 'SELECT * FROM orders') AS t(id int)", "deny"),
        ("SELECT pg_read_file('/etc/passwd')", "deny"),
        ("LOCK orders IN ACCESS EXCLUSIVE MODE", "deny"),
        ("PREPARE TRANSACTION 'x'", "deny"),
        ("SELECT id FROM orders WHERE tenant_id <> 'acme'", "ok"),
        ("SELECT count(*) FROM ONLY public.orders o WHERE o.tenant_id = 'bigco' OR true", "ok"),
        ("SELECT nspname FROM pg_catalog.pg_namespace", "ok"),
        ("SELECT datname FROM pg_catalog.pg_database", "ok"),
        ("SELECT relname FROM pg_catalog.pg_class WHERE relname = 'orders'", "ok"),
        ("SELECT current_setting('pgtenant.tenant_id')", "ok"),
    ],
    "gina": [
        ("SELECT * FROM public.orders", "deny"),
        ("SELECT * FROM saas.public.orders", "deny"),
        ("SELECT * FROM globex.orders o JOIN public.orders p USING (id)", "deny"),
        ("SELECT set_config('search_path', 'public', false), count(*) FROM orders", "any"),
        ("SET search_path = public, globex", "any"),
        ("SELECT nspname FROM pg_catalog.pg_namespace", "ok"),
        ("SELECT DISTINCT table_schema FROM information_schema.tables", "ok"),
        ("SELECT datname FROM pg_catalog.pg_database", "ok"),
        ("SELECT * FROM pg_catalog.pg_tables WHERE schemaname <> 'globex'", "any"),
    ],
    "ivan": [
        ("SELECT * FROM saas.public.orders", "deny"),
        ("SELECT * FROM dblink('dbname=saas', 'SELECT 1') AS t(x int)", "deny"),
        ("CREATE TEMP TABLE t AS SELECT * FROM orders", "deny"),
        ("TRUNCATE orders", "deny"),
        ("SELECT pg_terminate_backend(pg_backend_pid())", "any"),
        ("SELECT datname FROM pg_catalog.pg_database", "ok"),
        ("SELECT nspname FROM pg_catalog.pg_namespace", "ok"),
    ],
}
HEALTH = {
    "alice": ("SELECT current_setting('pgtenant.tenant_id'), count(*), count(*) FILTER (WHERE tenant_id <> 'acme') "
              "FROM orders", [["acme", 200, 0]]),
    "gina": ("SELECT current_schemas(false), count(*) FROM orders", [[["globex"], 40]]),
    "ivan": ("SELECT current_database(), count(*) FROM orders", [["initech", 7]]),
}
OTHERS = {"alice": ("bigco", "globex", "initech"), "gina": ("acme", "bigco", "initech"),
          "ivan": ("acme", "bigco", "globex", "saas")}


@pytest.mark.parametrize("user", sorted(ATTACKS))
def test_attack_cases_through_the_query_tool(proxy: ProxyProcess, user: str) -> None:
    health_sql, healthy = HEALTH[user]
    calls: list[Call] = []
    for sql, _ in ATTACKS[user]:
        calls += [("query", {"sql": sql}), ("query", {"sql": health_sql})]
    results = stdio_calls(proxy.dsn(user), calls)
    for (sql, expect), attack, health in zip(ATTACKS[user], results[::2], results[1::2], strict=True):
        answer = text(attack)
        if expect != "any":
            assert attack.is_error == (expect == "deny"), (sql, answer)
        if attack.is_error:
            assert "ERROR" in answer, (sql, answer)
        for name in OTHERS[user]:
            assert name not in answer or name in sql, (sql, name, answer)
        if expect == "ok" and "tenant_id" in sql and "FROM orders" in sql:
            assert _data(attack)["rows"] in ([], [[0]]), (sql, answer)
        assert _rows(health) == healthy, (sql, text(health))


# --------------------------------------------------------------------------------------------------------- HTTP


def test_http_needs_a_valid_token_and_each_token_acts_as_its_own_login(proxy: ProxyProcess, tmp_path: Path) -> None:
    agents = {"acme-bot": proxy.dsn("alice"), "globex-bot": proxy.dsn("gina")}
    with http_server(tmp_path / "mcp", agents) as server:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        basic = {"Authorization": f"Basic {server.tokens['acme-bot']}"}
        for headers in ({}, {"Authorization": "Bearer pgtmcp_wrong"}, basic):
            answer = httpx2.post(server.url, json=body, headers=headers, timeout=30)
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"].startswith('Bearer realm="pgtenant-mcp"')
        assert httpx2.get(server.url.replace("/mcp", "/"), timeout=30).status_code == 401
        with pytest.raises(Exception) as refused:  # the SDK client without a token gets nowhere
            http_calls(server.url, None, [("list_tables", {})])
        assert "Server returned an error response" in _flat(refused.value)
        acme = http_calls(server.url, server.tokens["acme-bot"], [("list_tables", {}), COUNT])
        globex = http_calls(server.url, server.tokens["globex-bot"], [
            ("list_tables", {}), COUNT, ("query", {"sql": "COMMIT; DROP SCHEMA globex CASCADE"})])
        assert {t["schema"] for t in _data(acme[0])["tables"]} == {"public"} and _rows(acme[1]) == [[200]]
        assert {t["schema"] for t in _data(globex[0])["tables"]} == {"globex"} and _rows(globex[1]) == [[40]]
        assert "ERROR 42501" in _error(globex[2])
        # Behind a TLS-terminating reverse proxy the Host is the public name: the token decides, not the Host.
        proxied = httpx2.post(server.url, json=body, timeout=30, headers={
            "Authorization": f"Bearer {server.tokens['acme-bot']}", "Host": "mcp.example.com",
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"})
        assert proxied.status_code == 200, proxied.text
        assert "list_tables" in proxied.text
    log = server.log()
    # The first refusal from 127.0.0.1 is logged, the next ones (the SDK client's last) counted until the stop.
    assert log.count("mcp_request_refused") == 1
    (summary,) = [json.loads(line) for line in log.splitlines() if "mcp_requests_refused" in line]
    assert summary["refused"] >= 4 and summary["last_reason"] == "missing_token"
    assert not any(token in log for token in server.tokens.values())
    assert proxy.cluster.execute("SELECT count(*) FROM globex.orders", dbname="saas") == [(40,)]


# Waits for the lock _held_orders takes (no CPU; the agent profile may not pg_sleep): it ends only if cancelled.
SLEEPER = "SELECT count(*) AS mcp_gone_{} FROM orders"


@contextlib.contextmanager
def _held_orders(proxy: ProxyProcess) -> Iterator[None]:
    """acme's orders (saas.public.orders) locked by the superuser: the agent's statements on it wait."""
    with proxy.cluster.connect(dbname="saas", autocommit=False) as conn:
        conn.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        yield


def _tool_call(sql: str, call_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": sql}}}


def _send_call(url: str, token: str, sql: str) -> socket.socket:
    """A query call POSTed on a raw connection whose answer is never read: closing it is the client giving up."""
    host, port = url.split("/")[2].split(":")
    body = json.dumps(_tool_call(sql)).encode()
    head = (f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(head + body)
    return conn


def _sleeping(proxy: ProxyProcess) -> int:
    """The door's statements of these tests that PostgreSQL is running (waiting for the lock)."""
    return proxy.cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%mcp_gone_%' "
                                 "AND state = 'active' AND pid <> pg_backend_pid()")[0][0]


def test_calls_whose_client_went_away_are_dropped_or_cancelled(proxy: ProxyProcess, tmp_path: Path) -> None:
    """One call runs, two wait for the agent's login; their clients close the connections (an HTTP timeout): the
    running statement is cancelled on PostgreSQL, the waiting ones never run, the agent's next call answers."""
    agents = {"acme-bot": proxy.dsn("alice")}
    with _held_orders(proxy), http_server(tmp_path / "mcp", agents, "--statement-timeout", "300") as server:
        token = server.tokens["acme-bot"]
        running = _send_call(server.url, token, SLEEPER.format(0))
        until(lambda: _sleeping(proxy) == 1, 30, what="the first call's statement running")
        waiting = [_send_call(server.url, token, SLEEPER.format(i)) for i in (1, 2)]
        for conn in (running, *waiting):
            conn.close()
        until(lambda: _sleeping(proxy) == 0, 30, what="the abandoned statement cancelled")
        until(lambda: server.log().count("mcp_call_abandoned") == 3, 30, what="the three calls abandoned")
        abandoned = [json.loads(line) for line in server.log().splitlines() if "mcp_call_abandoned" in line]
        assert sorted(entry["running"] for entry in abandoned) == [False, False, True]
        # Waiting calls leave the queue: were they still in it, this one would wait for two 600 s sleeps.
        (answer,) = http_calls(server.url, token, [("query", {"sql": "SELECT 1 AS x"})])
        assert _rows(answer) == [[1]]
        assert _sleeping(proxy) == 0


def test_at_most_max_waiting_calls_wait_for_an_agents_login(proxy: ProxyProcess, tmp_path: Path) -> None:
    """--max-waiting 2: one call runs, two wait, the next is refused at once with a busy tool error the model can
    act on; another agent's login is not affected; once the queue is gone the agent's calls run again."""
    agents = {"acme-bot": proxy.dsn("alice"), "globex-bot": proxy.dsn("gina")}
    with (_held_orders(proxy), http_server(tmp_path / "mcp", agents, "--statement-timeout", "300",
                                             "--max-waiting", "2") as server):
        token = server.tokens["acme-bot"]
        held = [_send_call(server.url, token, SLEEPER.format(0))]
        until(lambda: _sleeping(proxy) == 1, 30, what="the first call's statement running")
        held += [_send_call(server.url, token, SLEEPER.format(i)) for i in (1, 2)]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}

        def refused() -> dict[str, Any] | None:
            try:  # until both waiting calls are in the queue, this one waits too (and is dropped at its timeout)
                answer = httpx2.post(server.url, json=_tool_call("SELECT 1 AS x"), headers=headers, timeout=5)
            except httpx2.TimeoutException:
                return None
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()["result"]
            return result

        result = until(refused, 60, what="a call beyond --max-waiting refused")
        assert result["isError"] is True
        assert "busy" in result["content"][0]["text"] and "retry" in result["content"][0]["text"]
        (other,) = http_calls(server.url, server.tokens["globex-bot"], [COUNT])
        assert _rows(other) == [[40]]
        for conn in held:
            conn.close()
        until(lambda: _sleeping(proxy) == 0, 30, what="the abandoned statement cancelled")
        (answer,) = http_calls(server.url, token, [("query", {"sql": "SELECT 1 AS x"})])
        assert _rows(answer) == [[1]]


def test_a_flood_of_refused_requests_writes_a_bounded_log(proxy: ProxyProcess, tmp_path: Path) -> None:
    """500 requests with a wrong token: every one is a 401, one is logged, the rest are counted in a summary."""
    with http_server(tmp_path / "mcp", {"acme-bot": proxy.dsn("alice")}) as server:
        with httpx2.Client(timeout=30) as client:
            codes = {client.post(server.url, json=_tool_call("SELECT 1"),
                                 headers={"Authorization": f"Bearer pgtmcp_wrong{i}"}).status_code
                     for i in range(500)}
        assert codes == {401}
        during = server.log()
    assert during.count("mcp_request_refused") == 1
    (summary,) = [json.loads(line) for line in server.log().splitlines() if "mcp_requests_refused" in line]
    assert summary["refused"] == 499 and summary["peer"] == "127.0.0.1"


# ------------------------------------------------------------------------------------------- docs/reporting.md


def _doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", REPORTING.read_text(), re.S)


def _as_fixture(text: str, proxy: ProxyProcess, http_port: int) -> str:
    """The doc's example login (acme_agent on 127.0.0.1:6432) pointed at the fixture's alice, its port at a free one."""
    return (text.replace("port=6432", f"port={proxy.port}").replace("user=acme_agent", "user=alice")
            .replace("agent-password", proxy.password("alice")).replace("8765", str(http_port)))


def test_the_documented_commands_work_as_written(proxy: ProxyProcess, tmp_path: Path) -> None:
    http_port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    lines = [line.strip() for block in _doc_blocks("sh") for line in block.splitlines() if line.strip()]
    stdio_line = next(line for line in lines if line.startswith("PGPASSWORD="))
    mint, chmod, serve = (next(line for line in lines if line.startswith(p))
                          for p in ("pgtenant mcp-token", "chmod", "pgtenant mcp --http"))
    stdio_json, http_json = (json.loads(_as_fixture(block, proxy, http_port))["mcpServers"]["acme-data"]
                             for block in _doc_blocks("json"))

    async def stdio(params: StdioServerParameters) -> list[CallToolResult]:
        async with Client(params) as client:
            return [await client.call_tool("list_tables", {}), await client.call_tool(*COUNT)]

    # The stdio command line, through a shell as typed, and Claude Desktop's entry as the client would launch it.
    for params in (StdioServerParameters(command="bash", args=["-c", _as_fixture(stdio_line, proxy, http_port)],
                                         env=env, cwd=str(tmp_path)),
                   StdioServerParameters(command=stdio_json["command"], args=stdio_json["args"],
                                         env={**env, **stdio_json["env"]}, cwd=str(tmp_path))):
        listed, count = asyncio.run(stdio(params))
        assert {t["schema"] for t in _data(listed)["tables"]} == {"public"} and _rows(count) == [[200]]

    minted = subprocess.run(["bash", "-c", f"{_as_fixture(mint, proxy, http_port)} && {chmod}"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60, check=True)
    token = minted.stderr.strip().splitlines()[-1]
    assert (tmp_path / "mcp-tokens.toml").stat().st_mode & 0o777 == 0o600
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(["bash", "-c", f"exec {_as_fixture(serve, proxy, http_port)}"], cwd=tmp_path,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        until(lambda: server.poll() is None and _listening(http_port), 30, what="the documented --http server")
        assert http_json["url"] == f"http://127.0.0.1:{http_port}/mcp"
        assert http_json["headers"]["Authorization"].startswith("Bearer pgtmcp_")
        listed, count = http_calls(http_json["url"], token, [("list_tables", {}), COUNT])
        assert {t["schema"] for t in _data(listed)["tables"]} == {"public"} and _rows(count) == [[200]]
    finally:
        server.terminate()
        server.wait(15)
    assert token not in (tmp_path / "serve.log").read_text()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
