"""The MCP tools (list_tables, describe_table, sample_rows, query, explain), whatever the transport."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from proxy import logs
from proxy.errors import QUERY_CANCELED
from proxy.mcp import catalog
from proxy.mcp.defaults import MAX_WAITING
from proxy.mcp.dialect import DIALECTS, DialectError, to_postgres
from proxy.mcp.door import Abandoned, Door, DoorError, Rows
from proxy.mcp.http import gone_of
from proxy.mcp.results import records, table

SERVER_NAME = "pgtenant"
CATALOG_ROWS = 10_000  # a tenant's tables, a table's columns: far more than any real schema, still bounded
INSTRUCTIONS = (
    "Read-only SQL access to one tenant's data in PostgreSQL, through pgtenant. Everything you see is already "
    "scoped to this tenant: never add tenant filters, and you cannot reach other tenants' data. Start with "
    "list_tables and describe_table, then query (PostgreSQL syntax, or pass `dialect`). Each call runs exactly "
    "one statement in a read-only transaction that is rolled back; errors name the SQLSTATE, the pgtenant rule "
    "and a hint: read them and change the statement."
)
EXPLAIN = "EXPLAIN (ANALYZE false, FORMAT TEXT) "
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

Dialect = Annotated[str | None, Field(
    description="The SQL dialect `sql` is written in, when not PostgreSQL: translated to PostgreSQL before it is "
    f"sent (one of: {', '.join(DIALECTS)}). Omit for PostgreSQL.")]


@dataclass(frozen=True)
class Limits:
    """How much a tool returns: `max_rows` for query, `sample_rows` the most sample_rows returns."""

    max_rows: int = 200
    sample_rows: int = 20
    explain_lines: int = 500
    statement_timeout: float = 30.0  # seconds; 0 = none
    max_waiting: int = MAX_WAITING  # over HTTP: calls that may wait for an agent's login while one runs


# Which login a call runs as: the only one (stdio) or the one its bearer token maps to (HTTP).
DoorFor = Callable[[Context], Door]


def build_server(door_for: DoorFor, limits: Limits) -> MCPServer:
    """An MCPServer with the five tools; `door_for` gives each call its pgtenant login."""
    # The SDK logs each failed call at INFO (the model gets it as a tool error; the proxy audits the statement).
    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, warn_on_duplicate_tools=False,
                                  log_level="WARNING")

    async def run(ctx: Context, sql: str, params: list[Any] | None, limit: int, *, translated: str | None = None,
                  prefix: int = 0) -> Rows:
        """`sql` through the login; an error names the PostgreSQL text a dialect became, and positions count from
        the model's statement (not from a `prefix` the tool put in front of it)."""
        request: Any = ctx.request_context.request
        gone = gone_of(request.scope) if request is not None else None  # over HTTP only (stdio: one client)
        try:
            return await door_for(ctx).run(sql, params, limit=limit, gone=gone)
        except Abandoned as exc:
            logs.get_logger("pgtenant.mcp").info("mcp_call_abandoned", running=exc.running)
            raise ToolError(str(exc)) from None
        except DoorError as exc:
            if exc.position is not None:
                exc.position = exc.position - prefix if exc.position > prefix else None
            message = str(exc)
            if exc.sqlstate == QUERY_CANCELED and "statement timeout" in exc.message:
                message += (f"\nThe statement ran longer than the MCP server's statement timeout "
                            f"({limits.statement_timeout:g} s): aggregate, filter or LIMIT it, and check its plan "
                            "with explain.")
            if translated is not None:
                message += f"\nSQL sent (the PostgreSQL it was translated to): {translated}"
            raise ToolError(message) from None

    @server.tool(annotations=READ_ONLY)
    async def list_tables(ctx: Context) -> CallToolResult:
        """The tables and views this tenant may read: schema, name, kind and comment."""
        return _answer({"tables": records(await run(ctx, catalog.LIST_TABLES, None, CATALOG_ROWS))})

    @server.tool(annotations=READ_ONLY)
    async def describe_table(
        ctx: Context,
        table_name: Annotated[str, Field(description="A table or view, optionally schema-qualified, written as in "
                                         "SQL (quote mixed-case names: \"Orders\")")],
    ) -> CallToolResult:
        """A table's columns (name, type, nullable, default, comment), keys and constraints, and its comment."""
        found = await run(ctx, catalog.FIND_TABLE, [table_name], 1)
        if not found.rows:
            raise ToolError(f"no table or view {table_name!r} that this tenant may read; list_tables shows them")
        (info,) = records(found)
        oid = info.pop("oid")
        info["columns"] = records(await run(ctx, catalog.COLUMNS, [oid], CATALOG_ROWS))
        info["constraints"] = records(await run(ctx, catalog.CONSTRAINTS, [oid], CATALOG_ROWS))
        return _answer(info)

    @server.tool(annotations=READ_ONLY)
    async def sample_rows(
        ctx: Context,
        table_name: Annotated[str, Field(description="A table or view, as for describe_table")],
        rows: Annotated[int, Field(ge=1, description=f"How many rows (at most {limits.sample_rows})")] = 5,
    ) -> CallToolResult:
        """A few rows of a table or view, to see what its values look like."""
        found = await run(ctx, catalog.FIND_TABLE, [table_name], 1)
        if not found.rows:
            raise ToolError(f"no table or view {table_name!r} that this tenant may read; list_tables shows them")
        (info,) = records(found)
        n = min(rows, limits.sample_rows)
        sql = f"SELECT * FROM {_ident(info['schema'])}.{_ident(info['name'])} LIMIT {n}"
        return _answer(table(await run(ctx, sql, None, n), limit=n, limit_name="sample_rows"))

    @server.tool(annotations=READ_ONLY)
    async def query(
        ctx: Context,
        sql: Annotated[str, Field(description="Exactly one read-only SQL statement (SELECT, WITH, VALUES, TABLE, "
                                  "SHOW, EXPLAIN)")],
        dialect: Dialect = None,
    ) -> CallToolResult:
        """Run one read-only SQL statement on this tenant's data and return its rows (the first max_rows)."""
        text = _translate(sql, dialect)
        shown = text if text != sql else None
        out = table(await run(ctx, text, None, limits.max_rows, translated=shown), limit=limits.max_rows,
                    limit_name="max_rows")
        if text != sql:
            out["sql"] = text  # what was sent, so the model learns the PostgreSQL form
        return _answer(out)

    @server.tool(annotations=READ_ONLY)
    async def explain(
        ctx: Context,
        sql: Annotated[str, Field(description="Exactly one statement to plan (it is not run)")],
        dialect: Dialect = None,
    ) -> CallToolResult:
        """PostgreSQL's plan for one statement (not run); cost and row estimates unless the tenant shares tables
        with others (then pgtenant withholds them: they count every tenant's rows)."""
        text = _translate(sql, dialect)
        # Options in parentheses: the statement cannot turn this into EXPLAIN ANALYZE (that would run it).
        result = await run(ctx, EXPLAIN + text, None, limits.explain_lines, translated=text if text != sql else None,
                           prefix=len(EXPLAIN))
        out: dict[str, Any] = {"plan": "\n".join(str(row[0]) for row in result.rows)}
        if result.truncated:
            out["note"] = f"The plan is cut after {limits.explain_lines} lines."
        if text != sql:
            out["sql"] = text
        return _answer(out)

    return server


def _answer(data: dict[str, Any]) -> CallToolResult:
    """Structured content, and the same as compact JSON text (the SDK's default indents: thrice the tokens)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _translate(sql: str, dialect: str | None) -> str:
    try:
        return to_postgres(sql, dialect)
    except DialectError as exc:
        raise ToolError(str(exc)) from None


def _ident(name: str) -> str:
    """A name from the catalog as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
