"""proxy/mcp/tools.py through the SDK's own client, in process, with a recorded stand-in for the pgtenant login."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcp import Client
from mcp_types import CallToolResult

from proxy.mcp import catalog
from proxy.mcp.door import DoorError, Rows
from proxy.mcp.tools import Limits, build_server


@dataclass
class FakeDoor:
    """Answers by statement: `answer(sql, params)` returns Rows or raises DoorError; every call is recorded."""

    answer: Callable[[str, Any], Rows]
    sent: list[tuple[str, Any, int]] = field(default_factory=list)

    async def run(self, sql: str, params: Any = None, *, limit: int, gone: Any = None) -> Rows:
        self.sent.append((sql, params, limit))
        return self.answer(sql, params)


ORDERS = Rows([("oid", "int8"), ("schema", "name"), ("name", "name"), ("kind", "text"), ("comment", "text")],
              [(16386, "public", 'we"ird', "table", "all orders")])


def _catalog(sql: str, params: Any) -> Rows:
    if sql == catalog.FIND_TABLE:
        return ORDERS if params == ["orders"] else Rows(ORDERS.columns, [])
    if sql == catalog.COLUMNS:
        return Rows([("name", "name"), ("type", "text")], [("id", "integer"), ("amount", "numeric")])
    if sql == catalog.CONSTRAINTS:
        return Rows([("name", "name"), ("kind", "text"), ("definition", "text")],
                    [("orders_pkey", "primary key", "PRIMARY KEY (id)")])
    if sql == catalog.LIST_TABLES:
        return Rows([("schema", "name"), ("name", "name")], [("public", "orders")])
    if sql.startswith("EXPLAIN") and "bad" not in sql:
        return Rows([("QUERY PLAN", "text")], [("Seq Scan on orders",), ("  Filter: x",)])
    if "bad" in sql:
        return_position = sql.index("bad") + 1
        raise DoorError('syntax error at or near "bad"', "42601", position=return_position)
    if "sleep" in sql:
        raise DoorError("canceling statement due to statement timeout", "57014")
    if "refuse" in sql:
        raise DoorError("pgtenant: no (rule some_rule)", "42501", hint="do it differently", rule="some_rule")
    return Rows([("n", "int4")], [(1,), (2,)], truncated=True)


SMALL = Limits(max_rows=2)


def _calls(door: FakeDoor, *calls: tuple[str, dict[str, Any]], limits: Limits = SMALL) -> list[CallToolResult]:
    async def go() -> list[CallToolResult]:
        async with Client(build_server(lambda _ctx: door, limits)) as client:  # type: ignore[arg-type,return-value]
            return [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(go())


def test_the_five_tools_are_listed_read_only() -> None:
    async def go() -> Any:
        async with Client(build_server(lambda _ctx: FakeDoor(_catalog), Limits())) as client:  # type: ignore[arg-type]
            return (await client.list_tools()).tools

    tools = {t.name: t for t in asyncio.run(go())}
    assert set(tools) == {"list_tables", "describe_table", "sample_rows", "query", "explain"}
    assert all(t.annotations and t.annotations.read_only_hint and not t.annotations.destructive_hint
               for t in tools.values())
    assert "mysql" in str(tools["query"].input_schema["properties"]["dialect"])


def test_list_and_describe_answer_from_the_catalog_queries() -> None:
    door = FakeDoor(_catalog)
    listed, described, missing = _calls(door, ("list_tables", {}), ("describe_table", {"table_name": "orders"}),
                                        ("describe_table", {"table_name": "nope"}))
    assert listed.structured_content == {"tables": [{"schema": "public", "name": "orders"}]}
    assert listed.content[0].text == '{"tables":[{"schema":"public","name":"orders"}]}'  # type: ignore[union-attr]
    assert described.structured_content == {
        "schema": "public", "name": 'we"ird', "kind": "table", "comment": "all orders",
        "columns": [{"name": "id", "type": "integer"}, {"name": "amount", "type": "numeric"}],
        "constraints": [{"name": "orders_pkey", "kind": "primary key", "definition": "PRIMARY KEY (id)"}]}
    assert [params for _, params, _ in door.sent[1:4]] == [["orders"], [16386], [16386]]
    assert missing.is_error and "no table or view 'nope'" in missing.content[0].text  # type: ignore[union-attr]


def test_sample_rows_quotes_the_catalog_name_and_caps_the_count() -> None:
    door = FakeDoor(_catalog)
    (result,) = _calls(door, ("sample_rows", {"table_name": "orders", "rows": 500}),
                       limits=Limits(sample_rows=7))
    assert door.sent[-1] == ('SELECT * FROM "public"."we""ird" LIMIT 7', None, 7)
    assert not result.is_error


def test_query_translates_sends_once_and_reports_the_cut() -> None:
    door = FakeDoor(_catalog)
    (result,) = _calls(door, ("query", {"sql": "SELECT TOP 5 [n] FROM t", "dialect": "tsql"}))
    assert door.sent == [('SELECT "n" FROM t LIMIT 5', None, 2)]
    content = result.structured_content
    assert content is not None and content["sql"] == 'SELECT "n" FROM t LIMIT 5' and content["truncated"] is True
    assert "max_rows = 2" in content["note"]


def test_query_in_postgresql_sends_the_text_as_written() -> None:
    door = FakeDoor(_catalog)
    (result,) = _calls(door, ("query", {"sql": "SELECT 1; SELECT 2"}))
    assert door.sent == [("SELECT 1; SELECT 2", None, 2)]
    assert "sql" not in (result.structured_content or {})


def test_refusals_and_bad_dialects_are_tool_errors_the_model_can_read() -> None:
    door = FakeDoor(_catalog)
    refused, unknown, broken = _calls(door, ("query", {"sql": "refuse me"}),
                                      ("query", {"sql": "SELECT 1", "dialect": "klingon"}),
                                      ("explain", {"sql": "SELECT * FROM", "dialect": "mysql"}))
    text = refused.content[0].text  # type: ignore[union-attr]
    assert refused.is_error and "ERROR 42501" in text and "pgtenant rule: some_rule" in text and "HINT: do it" in text
    assert unknown.is_error and "unknown dialect 'klingon'" in unknown.content[0].text  # type: ignore[union-attr]
    assert broken.is_error and "cannot translate" in broken.content[0].text  # type: ignore[union-attr]
    assert [sql for sql, _, _ in door.sent] == ["refuse me"]  # nothing untranslatable was sent


def test_explain_never_becomes_explain_analyze() -> None:
    door = FakeDoor(_catalog)
    (result,) = _calls(door, ("explain", {"sql": "ANALYZE SELECT 1"}))
    assert door.sent[-1][0] == "EXPLAIN (ANALYZE false, FORMAT TEXT) ANALYZE SELECT 1"  # a syntax error there
    assert result.structured_content == {"plan": "Seq Scan on orders\n  Filter: x"}


def test_error_positions_count_from_the_models_statement_and_translations_are_shown() -> None:
    door = FakeDoor(_catalog)
    planned, translated = _calls(door, ("explain", {"sql": "SELECT bad"}),
                                 ("query", {"sql": "SELECT `bad`", "dialect": "mysql"}))
    assert "POSITION: character 8 of" in _text(planned)  # "SELECT bad": the tool's EXPLAIN prefix not counted
    assert "SQL sent (the PostgreSQL it was translated to): SELECT \"bad\"" in _text(translated)
    assert "POSITION: character 9 of" in _text(translated)  # in the PostgreSQL sent, which the error shows


def _text(result: CallToolResult) -> str:
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


def test_a_statement_timeout_says_which_limit_and_what_to_do() -> None:
    (result,) = _calls(FakeDoor(_catalog), ("query", {"sql": "SELECT pg_sleep(60)"}),
                       limits=Limits(statement_timeout=2.5))
    assert "ERROR 57014" in _text(result) and "statement timeout (2.5 s)" in _text(result)
