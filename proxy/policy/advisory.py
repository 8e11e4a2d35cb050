"""Advisory locks (database strategy): keys fixed for the statement, and a run-time cap on the locks a session holds.

PostgreSQL keeps one entry of its shared lock table per advisory lock key a backend holds (however often it took
it), in the table every database of the server uses (red team round 4 F7: `SELECT count(pg_advisory_lock(g)) FROM
generate_series(…) g` filled it and every other tenant's statements failed with "out of shared memory"). So:

* an advisory lock call's key arguments must be fixed for the statement's run (constants, parameters, casts,
  operators and a few immutable functions of them such as `hashtext`): one run of the statement -- whatever number
  of rows it runs the call for, through a view, a cursor or `EXECUTE` -- then adds at most one entry per call
  written (rule `advisory_lock_key`); a statement may write at most `limits.max_advisory_locks` of them;
* the first argument of every lock call is wrapped in a guard (`guards.advisory_key`) that counts the backend's
  advisory locks in `pg_lock_status()` before the statement takes its own, and fails the statement when they would
  exceed `limits.max_advisory_locks` (PostgreSQL counts: unlocks that did not run, `WHERE false`, rollbacks, other
  statements' locks are all seen as they are).

Transaction-level locks (`pg_advisory_xact_lock`) use the same table until the transaction ends: counted alike.

The two-key class INSTANCE_LOCK is the tenant registry's (its instance slots, held by each proxy instance in the
registry's database; red team 8b F2): a literal first key of that class is refused (rule `registry_reserved`), any
other first key is checked by the guard at run time.
"""

from __future__ import annotations

from proxy.policy.guards import ADVISORY_LOCKS
from proxy.policy.model import TenantPolicy
from proxy.policy.rules import fail
from proxy.policy.tree import Node, names_of, walk_dicts
from proxy.policy.walk import Analysis
from proxy.registrynames import INSTANCE_LOCK

# Immutable functions a lock key may be computed with (from fixed values only).
KEY_FUNCTIONS: frozenset[str] = frozenset(
    {
        "hashtext", "hashtextextended", "hashint2", "hashint4", "hashint8", "hashint4extended", "hashint8extended",
        "hashbpchar", "hashchar", "hashname", "hashoid", "abs", "length", "char_length", "octet_length", "lower",
        "upper", "md5", "substr", "substring", "left", "right", "ascii", "int2", "int4", "int8", "text", "btrim",
        "ltrim", "rtrim", "replace", "mod",
    }
)


def is_lock(names: tuple[str, ...] | list[str]) -> bool:
    """True for the (qualified) name of an advisory lock function."""
    return bool(names) and names[-1] in ADVISORY_LOCKS and (len(names) == 1 or names[0] == "pg_catalog")


def lock_calls(analysis: Analysis) -> list[tuple[str, list[Node], bool]]:
    """(name, arguments, named) of the statement's advisory lock calls."""
    return [(c.names[-1], c.args, c.named) for c in analysis.calls if is_lock(c.names)]


def count(node: Node) -> int:
    """The advisory lock calls in a statement's tree."""
    return sum(1 for d in walk_dicts(node) if "FuncCall" in d and is_lock(names_of(d["FuncCall"].get("funcname"))))


def check(policy: TenantPolicy, analysis: Analysis) -> None:
    """Refuse advisory lock calls whose key may differ from one row to the next, and statements with more lock
    calls than a session may hold."""
    calls = lock_calls(analysis)
    if not calls:
        return
    limit = policy.max_advisory_locks
    if len(calls) > limit:
        raise fail("advisory_lock_limit", f"the statement takes {len(calls)} advisory locks, more than "
                   f"limits.max_advisory_locks = {limit}")
    for name, args, named in calls:
        if named:
            raise fail("advisory_lock_key", f"{name}() must be called with positional arguments")
        if not all(fixed(a) for a in args):
            raise fail("advisory_lock_key", f"the key of {name}() may differ from one row to the next (a column, a "
                       "subquery or a volatile function): each would take a lock of its own")
        if len(args) == 2 and integer_literal(args[0]) == INSTANCE_LOCK:
            raise fail("registry_reserved", f"the advisory lock class {INSTANCE_LOCK} is the proxy's own (its "
                       "instance slots)")


def integer_literal(node: Node) -> int | None:
    """The value of an integer literal (or an all-digit string literal), under any casts; else None."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")  # type: ignore[assignment]
    const = node.get("A_Const") if isinstance(node, dict) else None
    if not isinstance(const, dict):
        return None
    if "ival" in const:
        return int(const["ival"].get("ival", 0))
    text = str(const.get("sval", {}).get("sval", "")).strip() if "sval" in const else ""
    return int(text) if text.isdigit() else None


def fixed(node: Node) -> bool:
    """True when the expression `node` has one value for the whole run of its statement: constants, parameters,
    casts, operators and KEY_FUNCTIONS of them."""
    if not isinstance(node, dict):
        return False
    if "A_Const" in node or "ParamRef" in node:
        return True
    if "TypeCast" in node:
        return fixed(node["TypeCast"].get("arg"))  # type: ignore[arg-type]
    if "A_Expr" in node:
        expr = node["A_Expr"]
        if expr.get("kind") not in ("AEXPR_OP", None):
            return False
        return all(fixed(expr[side]) for side in ("lexpr", "rexpr") if expr.get(side) is not None)
    if "FuncCall" in node:
        call = node["FuncCall"]
        names = names_of(call.get("funcname"))
        if not names or names[-1] not in KEY_FUNCTIONS or (len(names) > 1 and names[0] != "pg_catalog"):
            return False
        if any(call.get(k) for k in ("agg_star", "agg_distinct", "agg_filter", "agg_order", "over", "agg_within_group",
                                     "func_variadic")):
            return False
        return all(fixed(a) for a in call.get("args") or ())
    return False
