"""What a statement changes in its session: temporary relations, search_path, transaction boundaries."""

from __future__ import annotations

from proxy.policy.classify import option_value
from proxy.policy.functions import is_builtin
from proxy.policy.model import (
    ADVISORY_LOCK,
    ADVISORY_UNLOCK,
    CLOSE_CURSOR,
    COMMIT,
    DEALLOCATE,
    DECLARE_CURSOR,
    DISCARD_ALL,
    DISCARD_TEMP,
    DROP_TEMP,
    EXPORT_SNAPSHOT,
    HOLD_CURSOR,
    LISTEN,
    MAY_USE_SEQUENCES,
    PIN,
    READS_SEQUENCES,
    RELEASE,
    RESET_SETTINGS,
    ROLLBACK,
    ROLLBACK_TO,
    SAVEPOINT,
    SET_PATH,
    SET_TIMEOUT,
    SETTING,
    SQL_PREPARE,
    TEMP_TABLE,
    TEMP_VIEW,
    UNLISTEN,
    Change,
    Deny,
    SessionContext,
)
from proxy.policy.rules import deny, temp_relation_limit
from proxy.policy.tree import Node, const_text, names_of, tag_of
from proxy.policy.walk import Call, RelRef

_TRANSACTION = {
    "TRANS_STMT_COMMIT": COMMIT,
    "TRANS_STMT_ROLLBACK": ROLLBACK,
    "TRANS_STMT_SAVEPOINT": SAVEPOINT,
    "TRANS_STMT_RELEASE": RELEASE,
    "TRANS_STMT_ROLLBACK_TO": ROLLBACK_TO,
}


def _created(kind: str, body: Node) -> tuple[Node, str, Node] | None:
    """(new relation's RangeVar, "table" | "view", the node holding ON COMMIT / IF NOT EXISTS) of a statement that
    creates a relation when it runs (EXPLAIN only with ANALYZE; DECLARE and PREPARE do not run it)."""
    if kind == "CreateStmt":
        return body.get("relation", {}), "table", body
    if kind == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_TABLE":
        into = body.get("into", {})
        return into.get("rel", {}), "table", {**into, "if_not_exists": body.get("if_not_exists")}
    if kind == "SelectStmt":
        while body.get("larg") and "intoClause" not in body:  # SELECT ... INTO ... UNION ...: the first arm's
            body = body["larg"]
        into = body.get("intoClause")
        return (into.get("rel", {}), "table", into) if into else None
    if kind == "ViewStmt":
        return body.get("view", {}), "view", {}
    if kind == "ExplainStmt" and option_value(body.get("options"), "analyze"):  # (ANALYZE off only plans)
        query = body.get("query", {})
        inner = tag_of(query)
        return _created(inner, query[inner]) if inner else None
    return None


# Constraints that make a relation of their own (an index, an identity column's sequence), and serial types.
_MAKE_RELATIONS = frozenset({"CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION", "CONSTR_IDENTITY"})
_SERIALS = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
_LIKE_IDENTITY = 32  # CREATE_TABLE_LIKE_IDENTITY: LIKE copies the identity columns (each with a new sequence)


def _made_with(body: Node) -> int:
    """Relations CREATE TABLE makes besides the table: an index per PRIMARY KEY / UNIQUE / EXCLUDE constraint, a
    sequence per serial or identity column (a LIKE ... INCLUDING IDENTITY counts as one)."""
    made = 0
    for element in body.get("tableElts") or ():
        column = element.get("ColumnDef")
        if column is not None:
            names = names_of(column.get("typeName", {}).get("names"))
            made += bool(names) and names[-1].lower() in _SERIALS
            items = column.get("constraints") or ()
        else:
            like = element.get("TableLikeClause")
            made += like is not None and bool(like.get("options", 0) & _LIKE_IDENTITY)
            items = (element,)
        made += sum(item.get("Constraint", {}).get("contype") in _MAKE_RELATIONS for item in items)
    return made


def statement_changes(kind: str, body: Node, index: int) -> list[Change]:
    """The changes statement `index` of its string makes to the session when it succeeds, but for search_path
    values (`settings.search_path_change`, `settings.set_config_path`: they come with a rewrite)."""
    out: list[Change] = []
    created = _created(kind, body)
    if created is not None:
        rv, what, options = created
        on_commit = options.get("oncommit") or options.get("onCommit")
        out.append(Change(index, TEMP_TABLE if what == "table" else TEMP_VIEW, rv.get("relname", ""),
                          flag=on_commit == "ONCOMMIT_DROP", if_not_exists=bool(options.get("if_not_exists")),
                          relations=1 + _made_with(body) if kind == "CreateStmt" else 1))
    elif kind == "DropStmt":
        for obj in body.get("objects", ()):
            out.append(Change(index, DROP_TEMP, names_of(obj.get("List", {}).get("items"))[-1]))
    elif kind == "DiscardStmt":
        if body.get("target") in ("DISCARD_ALL", "DISCARD_TEMP"):
            out.append(Change(index, DISCARD_TEMP))
        if body.get("target") == "DISCARD_ALL":
            out += [Change(index, SET_PATH), Change(index, SET_TIMEOUT), Change(index, DISCARD_ALL)]
    elif kind == "VariableSetStmt" and body.get("kind") == "VAR_RESET_ALL":
        out += [Change(index, SET_PATH), Change(index, SET_TIMEOUT), Change(index, RESET_SETTINGS)]
    elif kind in _HELD:
        out += _HELD[kind](body, index)
    elif kind == "TransactionStmt":
        op = _TRANSACTION.get(body.get("kind", ""))
        if op is not None:
            out.append(Change(index, op, body.get("savepoint_name", "")))
    return out


_CURSOR_OPT_HOLD = 0x20  # DeclareCursorStmt.options: WITH HOLD


def _declare(body: Node, index: int) -> list[Change]:
    hold = body.get("options", 0) & _CURSOR_OPT_HOLD
    return [Change(index, HOLD_CURSOR if hold else DECLARE_CURSOR, body.get("portalname", ""))]


def _close(body: Node, index: int) -> list[Change]:
    return [Change(index, CLOSE_CURSOR, body.get("portalname") or "")]


def _prepare(body: Node, index: int) -> list[Change]:
    return [Change(index, SQL_PREPARE, body.get("name", ""))]


def _deallocate(body: Node, index: int) -> list[Change]:
    return [Change(index, DEALLOCATE, "" if body.get("isall") else body.get("name") or "")]


def _listen(body: Node, index: int) -> list[Change]:
    return [Change(index, LISTEN, body.get("conditionname", ""))]


def _unlisten(body: Node, index: int) -> list[Change]:
    return [Change(index, UNLISTEN, body.get("conditionname") or "*")]


# Statements that leave state on the server connection (what pins a pooled session), by kind.
_HELD = {"DeclareCursorStmt": _declare, "ClosePortalStmt": _close, "PrepareStmt": _prepare,
         "DeallocateStmt": _deallocate, "ListenStmt": _listen, "UnlistenStmt": _unlisten}
# Session-level advisory lock functions (the _xact_ ones end with their transaction), and their unlocks.
_LOCKS = frozenset({"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
                    "pg_try_advisory_lock_shared"})
_UNLOCKS = frozenset({"pg_advisory_unlock", "pg_advisory_unlock_shared"})
# Functions whose effect stays with the server connection and cannot be followed: the session pins for good.
STATEFUL_FUNCTIONS = frozenset({"setseed"})
# Functions that give the session sequence state (what currval()/lastval() read): pinned (reason "sequence") so no
# other client lands on that server while it has it; the reset at release (DISCARD ALL) clears it.
SEQUENCE_FUNCTIONS = frozenset({"nextval", "setval"})
_SEQUENCE_READS = frozenset({"currval", "lastval"})  # they read what nextval()/setval() left in the session
_USES = frozenset({MAY_USE_SEQUENCES})
_READS = frozenset({READS_SEQUENCES})
_USES_AND_READS = _USES | _READS
UNKNOWN_KEY = "?"  # an advisory lock whose key is not written as constants (only pg_advisory_unlock_all frees it)


# Statements whose query runs later, and again (EXECUTE, FETCH, each read of the view), not when they complete.
# statements that store an expression run later: a PREPARE, a cursor, a view; a table's DEFAULT / CHECK (run at each
# INSERT/UPDATE: red team round 6 F4), an index expression, a domain's default / check, a rule, a trigger's WHEN
_DEFERRED = frozenset({"PrepareStmt", "DeclareCursorStmt", "ViewStmt", "CreateStmt", "AlterTableStmt", "IndexStmt",
                       "CreateDomainStmt", "AlterDomainStmt", "RuleStmt", "CreateTrigStmt"})


def runs_now(kind: str) -> bool:
    """Whether a set_config() in a statement of `kind` runs with the statement (not at each EXECUTE/FETCH/read)."""
    return kind not in _DEFERRED


def deferred_setting(kind: str, change: Change) -> Change:
    """A session setting set_config() makes: recorded (and replayed) when its statement runs it; inside a PREPARE,
    a cursor, a view or a table's DEFAULT/CHECK it takes effect at each EXECUTE/FETCH/read/INSERT, which the proxy
    does not follow (also after a RESET ALL that forgot the recorded value: red team rounds 4 F8 and 6 F4), so the
    session pins for good instead."""
    return Change(change.at, PIN, "setting") if kind in _DEFERRED and change.op == SETTING else change


def call_changes(call: Call, index: int) -> list[Change]:
    """What a function call leaves on the server connection: session advisory locks and their unlocks (keyed by
    their arguments as written; `_shared` and exclusive locks of one key are told apart), setseed(), nextval() and
    setval()."""
    names = call.names
    name = names[-1]
    if not is_builtin(names):
        # a tenant's own function (extra_allowed_functions): what it leaves on the server is not known
        return [Change(index, PIN, "function")]
    if len(names) > 1 and names[0] != "pg_catalog":
        return []
    if name == "pg_advisory_unlock_all":
        return [Change(index, ADVISORY_UNLOCK, "*")]
    if name in STATEFUL_FUNCTIONS:
        return [Change(index, PIN, name)]
    if name in SEQUENCE_FUNCTIONS:
        return [Change(index, PIN, "sequence")]
    if name not in _LOCKS and name not in _UNLOCKS:
        return []
    args = [const_text(a) for a in call.args]
    shared = "shared:" if name.endswith("_shared") else ""
    key = UNKNOWN_KEY if None in args or call.named else shared + ",".join(a or "" for a in args)
    # (an unlock of a key not written as constants frees nothing the proxy knows of, but is a change all the same:
    # a decision with it is never reused for the same text with other integers, policy/shape.py)
    return [Change(index, ADVISORY_LOCK if name in _LOCKS else ADVISORY_UNLOCK, key)]


def refusal(context: SessionContext, changes: tuple[Change, ...] | list[Change],
            max_temp_relations: int) -> tuple[SessionContext, Deny | None]:
    """The context after a statement's changes, and the denial when they take the session past what it may hold:
    more than `max_temp_relations` temporary relations, a second exported snapshot in one transaction. Checked
    where the statement is decided and at each Bind of a prepared one (decided once, run again and again)."""
    after = context
    for change in changes:
        if change.op == EXPORT_SNAPSHOT and after.exported:
            return after, deny("snapshot_export_once", "this transaction has already exported a snapshot")
        after = after.apply(change)
    if any(c.op in (TEMP_TABLE, TEMP_VIEW) for c in changes) and after.temp_relations > max_temp_relations:
        return after, temp_relation_limit(after.temp_relations, max_temp_relations)
    return after, None


def sequence_effects(refs: list[RelRef], calls: list[Call]) -> frozenset[str]:
    """A statement's part in what currval()/lastval() read on its server (proxy/sequences.py): it may set it unseen
    (MAY_USE_SEQUENCES: it reads a relation, which may be a view whose query calls nextval(), or calls nextval(),
    setval() or a function that is not a built-in), and it reads it (READS_SEQUENCES: currval(), lastval())."""
    uses = any(not ref.cte for ref in refs)
    reads = False
    for call in calls:
        names = call.names
        builtin = is_builtin(names) and (len(names) < 2 or names[0] == "pg_catalog")
        if builtin and names[-1] in _SEQUENCE_READS:
            reads = True
        elif not builtin or names[-1] in SEQUENCE_FUNCTIONS:
            uses = True
    if uses:
        return _USES_AND_READS if reads else _USES
    return _READS if reads else frozenset()
