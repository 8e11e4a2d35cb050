"""The agent profile's rules: read-only statements only, no escape from the read-only transaction, a stricter
function list, and every top-level query capped at `max_rows` rows by an AST-level LIMIT (verified like any rewrite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from proxy.policy.catalog import CATALOG_SCHEMAS
from proxy.policy.model import ADMIT, TenantPolicy
from proxy.policy.rewrite import Plan, _Planner, _statement_tokens, _Text, reads_filtered_catalog
from proxy.policy.rules import fail
from proxy.policy.settings import setting_milliseconds
from proxy.policy.sqltext import Edit, TextError, Tok
from proxy.policy.tree import Node, Statement, boolean_option, const_text, reorder
from proxy.policy.walk import Analysis

# What an agent may run besides queries: plans, settings it may change, transactions and cursors over its queries.
_ALLOWED = frozenset({
    "SelectStmt", "ExplainStmt", "VariableShowStmt", "VariableSetStmt", "TransactionStmt", "DeclareCursorStmt",
    "FetchStmt", "ClosePortalStmt", "DeallocateStmt", "DiscardStmt",
})
_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TruncateStmt", "CopyStmt"})
# Settings whose value the agent profile pins (the server connection starts with them, or has the server's own; the
# client cannot move them, RESET returns to them): read-only, and the timeouts that bound what a session holds (an
# idle transaction keeps its snapshot, the xmin horizon of every tenant of the database).
PINNED_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only", "statement_timeout",
                             "idle_in_transaction_session_timeout", "transaction_timeout"})
# Built-ins an agent may not call, though the default allow-list has them: they wait, lock, or change settings.
DENIED_FUNCTIONS = frozenset({"pg_sleep", "pg_sleep_for", "pg_sleep_until", "set_config", "pg_notify", "nextval",
                              "setval", "txid_current", "pg_current_xact_id", "pg_current_snapshot",
                              "txid_current_snapshot", "pg_export_snapshot", "pg_stat_reset"})
DENIED_PREFIXES = ("pg_advisory_", "pg_try_advisory_", "lo_", "dblink", "pg_stat_reset")
LIMIT_ALIAS = "_pgt_limit"  # the derived table a query with a LIMIT the proxy cannot lower in place is wrapped in


def check_statement(policy: TenantPolicy, kind: str, body: Node) -> None:
    """Refuse what an agent may not run (after the tenant gate, which refuses writes and DO first)."""
    if kind in _WRITES:
        raise fail("read_only", "the agent profile is read-only")
    if kind not in _ALLOWED:
        raise fail("agent_statement", f"{_kind_name(kind)} is not available to the agent profile")
    if kind == "SelectStmt":
        if body.get("intoClause"):
            raise fail("agent_statement", "SELECT INTO creates a table; the agent profile is read-only")
        if _locks(body):
            raise fail("read_only", "SELECT ... FOR UPDATE/SHARE locks rows; the agent profile is read-only")
    elif kind == "ExplainStmt":
        for opt in body.get("options") or ():
            d = opt.get("DefElem", {})
            if d.get("defname") == "analyze" and boolean_option(d.get("arg")):
                raise fail("agent_statement", "EXPLAIN ANALYZE runs the statement without the agent's row limit")
        inner = body.get("query", {})
        if next(iter(inner), "") != "SelectStmt":
            raise fail("agent_statement", "the agent profile explains queries only")
    elif kind == "DeclareCursorStmt":
        if _locks(body.get("query", {}).get("SelectStmt", {})):
            raise fail("read_only", "a cursor FOR UPDATE/SHARE locks rows; the agent profile is read-only")
    elif kind == "TransactionStmt":
        _check_read_write(body.get("options"), "a read-write transaction")
    elif kind == "VariableSetStmt":
        name = (body.get("name") or "").lower()
        if body.get("kind") == "VAR_SET_MULTI":
            _check_read_write(body.get("args"), f"SET {name.upper()} READ WRITE")
        elif name == "statement_timeout" and _lower_timeout(policy, body):
            return  # (a smaller timeout than the agent's, as the MCP door sets: allowed)
        elif name in PINNED_SETTINGS and (name == "transaction_read_only"
                                          or body.get("kind") not in ("VAR_RESET", "VAR_SET_DEFAULT")):
            # (RESET and SET ... TO DEFAULT return to the server connection's startup value, the agent's own; a
            # reset transaction_read_only would be off on PostgreSQL 15)
            raise fail("agent_setting", f'setting "{name}" is pinned by the agent profile')


def _lower_timeout(policy: TenantPolicy, body: Node) -> bool:
    """SET [LOCAL] statement_timeout to a literal above 0 and at most the agent's own (PostgreSQL's units)."""
    args = body.get("args") or []
    if body.get("kind") != "VAR_SET_VALUE" or len(args) != 1 or not policy.agent_timeout_ms:
        return False
    value = setting_milliseconds(const_text(args[0]) or "")  # (as PostgreSQL rounds it: "0.4" or "100us" is 0)
    return value is not None and 0 < value <= policy.agent_timeout_ms


def check_function(names: tuple[str, ...], builtin: bool) -> None:
    """The agent's function list: the default allow-list's built-ins, less those that wait, lock or change state."""
    name = names[-1]
    if not builtin:
        raise fail("agent_function", f"function {'.'.join(names)}() is not a built-in; the agent profile calls "
                   "built-ins only")
    if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
        raise fail("agent_function", f"function {name}() is not available to the agent profile")


def _kind_name(kind: str) -> str:
    return {"DoStmt": "DO", "CreateStmt": "CREATE TABLE", "CreateTableAsStmt": "CREATE TABLE AS",
            "ViewStmt": "CREATE VIEW", "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE", "LockStmt": "LOCK",
            "DropStmt": "DROP", "ListenStmt": "LISTEN", "NotifyStmt": "NOTIFY"}.get(kind, kind.removesuffix("Stmt"))


def _locks(select: Node) -> bool:
    return bool(select.get("lockingClause"))


def _check_read_write(options: list[Node] | None, what: str) -> None:
    for opt in options or ():
        d = opt.get("DefElem", {})
        if d.get("defname") in PINNED_SETTINGS and const_text(d.get("arg") or {}) not in ("1", "true", "on"):
            raise fail("agent_setting", f"{what} is not available to the agent profile")


def admission(policy: TenantPolicy, kind: str, node: Node, analysis: Analysis, guarded: bool = False) -> frozenset[str]:
    """ADMIT for a query the planner's estimate decides on (proxy/admission.py): every SELECT and cursor query but a
    plain catalog lookup (`_plain_lookup`) and one that reads a catalog the proxy filters for the tenant (a temporary
    view: `reads_filtered_catalog`; `guarded`: its rewrite put in an object guard's catalog subquery, red team 9a8
    N5), whose estimate counts other tenants' objects (red team 9a7 H4/H8): it runs without its EXPLAIN, bounded by
    its statement_timeout and the agent's row cap."""
    if kind not in ("SelectStmt", "DeclareCursorStmt") or _plain_lookup(node, analysis) or guarded or (
            reads_filtered_catalog(policy, analysis)):
        return frozenset()
    return frozenset({ADMIT})


# What can make a query's work unbounded without a table of the tenant's: a function call (a set-returning one in a
# target list, repeat(), …), a function or a subquery in FROM (VALUES lists cross joined), a join, a subquery
# expression, a CTE (a recursive one runs forever) — red team 6 F2.
_UNBOUNDED = frozenset({"FuncCall", "RangeFunction", "RangeTableFunc", "JsonTable", "RangeSubselect", "JoinExpr",
                        "SubLink", "withClause"})


def _plain_lookup(node: Node, analysis: Analysis) -> bool:
    """A query that reads at most one relation, a system catalog's (pg_catalog, information_schema, an unqualified
    pg_* name), once, with no function call, join, subquery or CTE: its work is bounded by the catalog's size (and
    its rows by the cap), so it goes without the EXPLAIN round trip. Everything else is admitted by its estimate."""
    if len(analysis.refs) > 1:
        return False
    for ref in analysis.refs:
        schema = ref.rv.get("schemaname")
        catalog = schema in CATALOG_SCHEMAS or (schema is None and ref.rv.get("relname", "").startswith("pg_"))
        if ref.cte or not catalog:
            return False
    return not _has_any(node, _UNBOUNDED)  # (walked last: most agent queries read a table of the tenant's)


def single_admitted(effects: list[frozenset[str]]) -> None:
    """A statement admitted by its estimate is the only one of its query string (its EXPLAIN is of it alone)."""
    if len(effects) > 1 and any(ADMIT in e for e in effects):
        raise fail("agent_statement", "send one query per message: the agent profile admits each by its plan")


def _has_any(node: object, tags: frozenset[str]) -> bool:
    if isinstance(node, dict):
        return not tags.isdisjoint(node) or any(_has_any(v, tags) for v in node.values())
    if isinstance(node, list):
        return any(_has_any(v, tags) for v in node)
    return False


# --- the row cap ------------------------------------------------------------------------------------------------


def query_of(kind: str, body: Node) -> Node | None:
    """The top-level query of a statement the cap applies to: a SELECT (VALUES, TABLE, set operations, WITH) and a
    cursor's query; None for the rest (EXPLAIN returns a plan, not rows)."""
    if kind == "SelectStmt":
        return body
    if kind == "DeclareCursorStmt":
        return body.get("query", {}).get("SelectStmt")
    return None


def cap(policy: TenantPolicy, data: bytes, stmt: Statement, max_rows: int, out: Plan) -> None:
    """Give the statement's top-level query a LIMIT of at most `max_rows`, in the text and in the tree: none
    (or LIMIT ALL / NULL) gets `max_rows`; any other LIMIT / FETCH FIRST (a constant, a parameter, an expression,
    WITH TIES) stays inside `SELECT * FROM (<query>) "_pgt_limit" LIMIT max_rows`, which keeps a smaller one and
    lowers a larger one. A constant is treated as a parameter would be: the decision never depends on an integer
    literal's value (the decision cache shares it between texts that differ only in their integers, policy/shape.py).
    """
    select = query_of(stmt.kind, stmt.body)
    if select is None:
        return
    count = select.get("limitCount")
    option = select.get("limitOption", "LIMIT_OPTION_DEFAULT")
    const = (count or {}).get("A_Const")
    planner = _Planner(policy, _Text(data, stmt.start, stmt.end), out)
    toks = _statement_tokens(data, stmt)
    if count is None and option == "LIMIT_OPTION_DEFAULT":
        _last(planner, toks[-1].end, f" LIMIT {max_rows}")
        limit = {"A_Const": {"ival": {"ival": max_rows}}}

        def set_limit() -> None:
            select["limitCount"] = limit
            select["limitOption"] = "LIMIT_OPTION_COUNT"
            reorder(select, "SelectStmt")

        planner.mutate(set_limit)
        planner.rule("agent_limit")
        return
    if option == "LIMIT_OPTION_COUNT" and const is not None:
        at = const.get("location", -1)
        if at < 0 and int(const.get("ival", {}).get("ival", 0)) <= max_rows:
            return  # FETCH FIRST ROW ONLY: one row, no literal
        one = [t for t in toks if t.start == at] if const.get("isnull") else []
        if one and one[0].name in ("ALL", "NULL_P"):  # LIMIT ALL / LIMIT NULL: no limit at all
            planner.edit(one[0].start, one[0].end, str(max_rows))

            def lower() -> None:
                const.clear()
                const["ival"] = {"ival": max_rows}

            planner.mutate(lower)
            planner.rule("agent_limit")
            return
    _wrap(planner, stmt, toks, select, max_rows)


# The cap is outermost: its insertions at the statement's ends go before (opening) and after (closing) whatever
# other rewrites insert at the same place (a search_path read as the statement's last expression ends there too).
_FIRST, _LAST = -1, 1 << 40


def _last(planner: _Planner, at: int, text: str) -> None:
    planner.plan.edits.append(Edit(at, at, text, _LAST))


def _wrap(planner: _Planner, stmt: Statement, toks: list[Tok], select: Node, max_rows: int) -> None:
    first = 0
    if stmt.kind == "DeclareCursorStmt":  # DECLARE name [options] CURSOR [WITH[OUT] HOLD] FOR <query>
        first = next((i + 1 for i, t in enumerate(toks) if t.name == "FOR"), len(toks))
        if first >= len(toks):
            raise TextError("expected FOR <query> in DECLARE")
    planner.plan.edits.append(Edit(toks[first].start, toks[first].start, "SELECT * FROM (", _FIRST))
    _last(planner, toks[-1].end, f') "{LIMIT_ALIAS}" LIMIT {max_rows}')
    holder = stmt.body if stmt.kind == "DeclareCursorStmt" else stmt.node
    key = "query" if stmt.kind == "DeclareCursorStmt" else "SelectStmt"

    def wrap() -> None:
        inner = holder[key] if stmt.kind == "SelectStmt" else holder[key]["SelectStmt"]
        outer = {
            "targetList": [{"ResTarget": {"val": {"ColumnRef": {"fields": [{"A_Star": {}}]}}}}],
            "fromClause": [{"RangeSubselect": {"subquery": {"SelectStmt": inner},
                                               "alias": {"aliasname": LIMIT_ALIAS}}}],
            "limitCount": {"A_Const": {"ival": {"ival": max_rows}}},
            "limitOption": "LIMIT_OPTION_COUNT",
            "op": "SETOP_NONE",
        }
        if stmt.kind == "SelectStmt":
            holder[key] = outer
        else:
            holder[key] = {"SelectStmt": outer}

    planner.mutate(wrap)
    planner.rule("agent_limit")


def capped(node: Node, max_rows: int) -> bool:
    """The verifier's check (independent of `cap`): the statement's top-level query returns at most `max_rows` rows
    (a constant LIMIT of at most that, not WITH TIES)."""
    kind = next(iter(node), "")
    select = query_of(kind, node[kind]) if kind else None
    if select is None:
        return True
    count = select.get("limitCount") or {}
    const = count.get("A_Const") or {}
    if select.get("limitOption") != "LIMIT_OPTION_COUNT" or "ival" not in const:
        return False
    return int(const["ival"].get("ival", 0)) <= max_rows  # (a negative LIMIT is PostgreSQL's error)


def agent_policy(base: TenantPolicy, max_rows: int, timeout_ms: int = 0) -> TenantPolicy:
    """The agent profile's policy over a tenant's: read-only, no temporary tables, rows capped at `max_rows`, a
    statement_timeout of at most `timeout_ms`."""
    return replace(base, allow_writes=False, allow_ddl_temp=False, agent_max_rows=max_rows,
                   agent_timeout_ms=timeout_ms)


class AgentPolicies:
    """A tenant registry's policy lookup, seen by the agent users of one `max_rows` (None: users of the default
    profile) and the users of one statement_timeout limit (`limit_ms`, 0: none; policy/timeouts.py): the tenant's
    current policy under them (made once per tenant policy, so a session's Parse memo holds until a reload)."""

    __slots__ = ("_base", "_policy", "limit_ms", "max_rows", "policies", "timeout_ms")

    def __init__(self, policies: Callable[[str], TenantPolicy | None], max_rows: int | None, timeout_ms: int = 0,
                 limit_ms: int = 0) -> None:
        self.policies = policies
        self.max_rows = max_rows
        self.timeout_ms = timeout_ms
        self.limit_ms = limit_ms
        self._base: TenantPolicy | None = None
        self._policy: TenantPolicy | None = None

    def __call__(self, tenant: str) -> TenantPolicy | None:
        base = self.policies(tenant)
        if base is None:
            return None
        if base is not self._base or self._policy is None:
            policy = base if self.max_rows is None else agent_policy(base, self.max_rows, self.timeout_ms)
            if self.limit_ms:
                policy = replace(policy, statement_timeout_ms=self.limit_ms)
            self._base, self._policy = base, policy
        return self._policy
