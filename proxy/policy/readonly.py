"""Which statements provably only read (PostgreSQL's grammar decides): what may run on a read replica."""

from __future__ import annotations

from proxy.policy import castsource
from proxy.policy.builtins import BUILTIN_FUNCTIONS
from proxy.policy.context import SEQUENCE_FUNCTIONS, STATEFUL_FUNCTIONS
from proxy.policy.functions import SYSTEM_FUNCTION_SCHEMAS
from proxy.policy.reached import (
    ATTRIBUTE,
    CAST,
    DOMAIN,
    FIELD,
    JSON,
    JSON_NODES,
    NOTHING,
    OPERATOR,
    SHADOW,
    VIEW,
    Reached,
    json_output,
    operator_symbols,
)
from proxy.policy.settings import NOT_REPLAYABLE
from proxy.policy.tree import Node

# Built-in functions a read-only routing never sends to a replica: they write, leave state that pins the session to
# its server (proxy/policy/context.py), read the session's own sequence state, or fail in recovery.
PRIMARY_FUNCTIONS = frozenset({
    "nextval", "setval", "currval", "lastval", "set_config", "pg_notify", "txid_current", "txid_current_if_assigned",
    "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_current_wal_lsn", "pg_current_wal_insert_lsn",
    "pg_export_snapshot", *STATEFUL_FUNCTIONS, *SEQUENCE_FUNCTIONS,
})
_PRIMARY_PREFIXES = ("pg_advisory_", "pg_try_advisory_", "lo_")
_WRITING_NODES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "intoClause", "lockingClause"})


def verdict(stmts: list[Node], transactions: bool = False, reached: Reached = NOTHING) -> str:
    """"y" when the statements (tagged parse nodes: {"SelectStmt": {...}}) provably only read, else "".
    `transactions`: whether they write nothing, a read-write BEGIN or SET TRANSACTION included (what
    read-your-writes asks of a transaction's requests). `reached`: the database's routines run without a call
    (policy/reached.py): a statement reaching any of them, or reading a view that calls one, is not read-only."""

    open_rw = False  # a BEGIN without READ ONLY, not (yet) followed by SET TRANSACTION READ ONLY
    for stmt in stmts:
        kind, node = next(iter(stmt.items())) if len(stmt) == 1 else ("", {})
        if kind == "TransactionStmt" and node.get("kind") in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            open_rw = not transactions and not _sets_read_only(node.get("options", ()))
        elif kind == "TransactionStmt" and node.get("kind") in _ENDS:  # what the text did in it only read
            if not node.get("chain"):  # (AND CHAIN opens the next one with the ended one's characteristics)
                open_rw = False
        elif kind == "TransactionStmt" and node.get("kind") in _SAVEPOINTS:
            continue
        elif kind == "VariableSetStmt" and node.get("name") == "TRANSACTION":
            if not transactions and not _sets_read_only(node.get("args", ())):
                return ""
            open_rw = False
        elif kind == "VariableSetStmt":  # a session setting: replayed on whichever server the session gets
            if not _session_setting(node, reached):
                return ""
        elif kind == "ExplainStmt":
            if not _reads(node.get("query", {}), reached):
                return ""
        elif kind not in ("SelectStmt", "VariableShowStmt") or not _reads(stmt, reached):
            return ""
    return "y" if stmts and not open_rw else ""


_ENDS = frozenset({"TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"})
_SAVEPOINTS = frozenset({"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"})
# Settings a SET sent to a replica could fail on or that change what a transaction may do.
_NOT_ON_REPLICA = frozenset({"transaction_read_only", "default_transaction_read_only", "transaction_isolation",
                             "default_transaction_isolation", "role", "session_authorization",
                             "transaction_deferrable", "default_transaction_deferrable"})


def _session_setting(node: dict, reached: Reached) -> bool:
    """A plain SET/RESET of a session setting (not SET TRANSACTION, SET SESSION CHARACTERISTICS, RESET ALL, SET ...
    FROM CURRENT, a transaction-mode or role setting, nor one that pins the session: seed): it writes nothing, runs
    as well on a replica, and the session replays it on whichever server it gets next."""
    name = node.get("name", "")
    return (node.get("kind") in ("VAR_SET_VALUE", "VAR_SET_DEFAULT", "VAR_RESET") and name.islower()
            and name not in _NOT_ON_REPLICA and name not in NOT_REPLAYABLE and _reads(node, reached))


def _sets_read_only(options: object) -> bool:
    """Whether a BEGIN / START TRANSACTION / SET TRANSACTION option list leaves the transaction read-only and runnable
    on a standby: PostgreSQL applies the options in order (`READ ONLY, READ WRITE` is read-write: the last one wins),
    and a standby refuses SERIALIZABLE (0A000)."""
    read_only = False
    for opt in options if isinstance(options, list) else ():
        d = opt.get("DefElem", {})
        name, arg = d.get("defname"), d.get("arg", {}).get("A_Const", {})
        if name == "transaction_read_only":
            read_only = arg.get("ival", {}).get("ival") == 1
        elif name == "transaction_isolation" and arg.get("sval", {}).get("sval", "").lower() == "serializable":
            return False
    return read_only


def _reads(node: object, reached: Reached = NOTHING) -> bool:
    """No writing node, no function outside the read-only built-ins, no routine of `reached` run without a call nor
    view calling one read, anywhere in `node`."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _WRITING_NODES:
                    return False
                if key == "FuncCall" and not _read_only_function(value.get("funcname", ())):
                    return False
                if reached and key in _REACHING and _reaches(reached, key, value):
                    return False
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _read_only_function(funcname: list) -> bool:
    names = [n.get("String", {}).get("sval", "") for n in funcname]
    if not names or (len(names) == 2 and names[0] not in SYSTEM_FUNCTION_SCHEMAS) or len(names) > 2:
        return False
    name = names[-1]
    return name in BUILTIN_FUNCTIONS and name not in PRIMARY_FUNCTIONS and not name.startswith(_PRIMARY_PREFIXES)


_REACHING = frozenset({"ColumnRef", "A_Indirection", "A_Expr", "SortBy", "SubLink", "TypeCast", "FuncCall",
                       "RangeVar", "CaseExpr", "JoinExpr", "typeName", "TypeName", *JSON_NODES})


def _reaches(reached: Reached, tag: str, body: Node) -> bool:
    """Whether the node runs a routine of `reached` (allowed or not) or reads a view whose query calls one."""
    by = reached.by_kind
    if tag == "ColumnRef":
        fields = body.get("fields", ())
        return len(fields) > 1 and fields[-1].get("String", {}).get("sval", "") in by[ATTRIBUTE]
    if tag == "A_Indirection":
        names = [item.get("String", {}).get("sval", "") for item in body.get("indirection", ())
                 if isinstance(item, dict)]
        return any(n in by[ATTRIBUTE] or n in by[FIELD] for n in names)
    if tag == "A_Expr":
        return any(symbol in by[OPERATOR] for symbol in operator_symbols(body))
    if tag == "SubLink" and body.get("subLinkType") == "ANY_SUBLINK" and not body.get("operName"):
        return "=" in by[OPERATOR]  # x IN (SELECT ...): x = ANY (...)
    if tag in ("SortBy", "SubLink"):
        names = body.get("useOp" if tag == "SortBy" else "operName") or ()
        return bool(names) and names[-1].get("String", {}).get("sval", "") in by[OPERATOR]
    if tag == "TypeCast":  # (a parameter's type is not followed here: any)
        cast = castsource.written(body)
        sources = None if cast.param or (cast.via and cast.via in by[SHADOW]) else cast.sources
        return bool(reached.cast_functions(cast.target, sources)
                    or (cast.fields and reached.all_cast_functions()))  # (a row cast field by field)
    if tag == "FuncCall":
        names = body.get("funcname") or ()
        name = names[-1].get("String", {}).get("sval", "") if len(names) == 1 else ""
        if JSON in by[CAST] and json_output(tuple(n.get("String", {}).get("sval", "") for n in names)):
            return True  # it writes a value through its type's cast to json
        return name in by[SHADOW]  # (`text(x)` never runs a cast's function)
    if tag in JSON_NODES:
        return JSON in by[CAST]
    if tag in ("typeName", "TypeName"):  # a type whose values a domain constraint of it checks
        names = body.get("names") or () if isinstance(body, dict) else ()
        return bool(names) and names[-1].get("String", {}).get("sval", "") in by[DOMAIN]
    if tag == "CaseExpr":  # CASE x WHEN y: x = y
        return bool(body.get("arg")) and "=" in by[OPERATOR]
    if tag == "JoinExpr":  # JOIN ... USING (c) / NATURAL JOIN: a.c = b.c
        return bool(body.get("usingClause") or body.get("isNatural")) and "=" in by[OPERATOR]
    if tag == "RangeVar":
        name = body.get("relname", "")
        schema = body.get("schemaname")
        return (f"{schema}.{name}" if schema else name) in by[VIEW]
    return False
