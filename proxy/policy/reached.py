"""Routines PostgreSQL runs without a call: one database's catalog snapshot of them, and where they are reached."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.policy.castsource import SEP, may_run
from proxy.policy.tree import Node, names_of

# Kinds of a snapshot row (kind, key, "schema.function"): how a statement reaches a routine outside pg_catalog and
# information_schema that no extension owns.
ATTRIBUTE = "attribute"  # key: a function of one argument: `t.f` / `(t).f` is f(t) when t has no column f
FIELD = "field"  # key: a function of one scalar argument: only `(x).f` / `t.c.f` reach it (`t.f` names a row)
OPERATOR = "operator"  # key: an operator symbol whose code is the function
# key: a name of the target type of a cast done by the function: its typname, `elem[]` for an array, a domain's over
# it (policy/castsource.py); and those of arrays of them, for the element-wise cast of an array to one
CAST = "cast"
SHADOW = "shadow"  # key: a built-in's name the function overloads or shadows (an unqualified call may pick it)
VIEW = "view"  # key: "schema.view" of a view whose definition calls the function
# key: a type name (pg_type.typname) whose values are checked by the function: a domain whose CHECK or DEFAULT calls
# it, a domain over one, an array, range or composite type (a table's row type) of one; a value read as that type
# runs it (`'x'::dom`, `CAST(x AS dom)`, a column `c dom` of a new table)
DOMAIN = "domain"  # (its key: "schema.type"; the bare type name finds it too)
CAST_FROM = "castfrom"  # key: "schema.function" of a CAST row; function: the schema of a source type of its casts
# key: a CAST row's key and function joined by castsource.SEP; function: a name of a source type the cast runs for
# (castsource.ANY: any, castsource.PARAM: a built-in type); a CAST row without any runs for any type
CAST_SOURCE = "castsource"
KINDS = (ATTRIBUTE, FIELD, OPERATOR, CAST, SHADOW, VIEW, DOMAIN, CAST_FROM, CAST_SOURCE)

HOW = {ATTRIBUTE: "attribute notation", FIELD: "attribute notation", OPERATOR: "operator", CAST: "a cast to type",
       SHADOW: "the unqualified call",
       VIEW: "view", DOMAIN: "a constraint or default of type"}

# Built-ins that write a value of a type that is not built in through that type's cast to json, when it has one done
# by a function (PostgreSQL's json_categorize_type, json.c / jsonb.c: "a cast to json (note: not to jsonb)", for a
# value at any depth of a row or an array): reached as a cast to json (`CAST` key "json").
JSON_OUTPUT = frozenset({
    "to_json", "to_jsonb", "array_to_json", "row_to_json", "json_agg", "json_agg_strict", "jsonb_agg",
    "jsonb_agg_strict", "json_object_agg", "json_object_agg_strict", "json_object_agg_unique",
    "json_object_agg_unique_strict", "jsonb_object_agg", "jsonb_object_agg_strict", "jsonb_object_agg_unique",
    "jsonb_object_agg_unique_strict", "json_build_object", "json_build_array", "jsonb_build_object",
    "jsonb_build_array",
})
# ... and the SQL/JSON constructors (raw parse node tags), which run the same code (JSON_OBJECT, JSON_ARRAY,
# JSON_OBJECTAGG, JSON_ARRAYAGG, JSON_SCALAR)
JSON_NODES = frozenset({"JsonObjectConstructor", "JsonArrayConstructor", "JsonArrayQueryConstructor",
                        "JsonObjectAgg", "JsonArrayAgg", "JsonScalarExpr"})
JSON = "json"  # the cast target they look up


@dataclass(frozen=True)
class Reached:
    """One database's snapshot (`dbcheck.reached_routines`): which names reach which routines; compared by its rows."""

    rows: frozenset[tuple[str, str, str]] = frozenset()
    by_kind: dict[str, dict[str, tuple[str, ...]]] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        rows = frozenset((str(k), str(key), str(f)) for k, key, f in self.rows)
        object.__setattr__(self, "rows", rows)
        by: dict[str, dict[str, list[str]]] = {kind: {} for kind in KINDS}
        for kind, key, function in sorted(rows):
            by.setdefault(kind, {}).setdefault(key, []).append(function)
        frozen = {kind: {key: tuple(fs) for key, fs in keys.items()} for kind, keys in by.items()}
        for kind in (VIEW, DOMAIN):  # a view or type named without its schema may be any of that name
            for key, fs in list(frozen[kind].items()):
                bare = key.rpartition(".")[2]
                if bare != key:
                    frozen[kind][bare] = tuple(sorted({*frozen[kind].get(bare, ()), *fs}))
        object.__setattr__(self, "by_kind", frozen)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def without(self, schemas: frozenset[str]) -> Reached:
        """The snapshot less what lives in `schemas` (other tenants' schemas, never on this tenant's search_path, and
        names in them are refused: their functions and operators are not found unqualified, their views not read,
        their types not named). A domain goes with its type's schema (its function may live elsewhere); a cast is
        found by its types wherever its function lives, so it stays unless its function and every source type of
        its casts live there (red team 20a/wp-sd1: a schema tenant's `to_json(1)` refused, naming another tenant's
        schema's cast function)."""
        if not schemas:
            return self
        sources: dict[str, set[str]] = {}
        for kind, key, schema in self.rows:
            if kind == CAST_FROM:
                sources.setdefault(key, set()).add(schema)

        def kept_row(row: tuple[str, str, str]) -> bool:
            kind, key, function = row
            if kind == CAST:
                return function.partition(".")[0] not in schemas or not sources.get(function) \
                    or not sources[function] <= schemas
            if kind in (CAST_FROM, CAST_SOURCE):
                return True
            return (key if kind in (VIEW, DOMAIN) else function).partition(".")[0] not in schemas

        kept = frozenset(row for row in self.rows if kept_row(row))
        return self if kept == self.rows else Reached(kept)

    def functions(self, kind: str, key: str) -> tuple[str, ...]:
        """The routines `key` reaches as `kind` ((): none)."""
        return self.by_kind[kind].get(key, ())

    def all_cast_functions(self) -> tuple[str, ...]:
        """The routines of every cast of the database (a row cast field by field may run any of them)."""
        return tuple(sorted({f for functions in self.by_kind[CAST].values() for f in functions}))

    def cast_functions(self, target: str, sources: frozenset[str] | None) -> tuple[str, ...]:
        """The routines of the casts to `target` (a `CAST` key) that may run for a value whose type's names are
        `sources` (None: any type; castsource.UNTYPED: an untyped literal)."""
        functions = self.by_kind[CAST].get(target, ())
        if sources is None or not functions:
            return functions
        by = self.by_kind[CAST_SOURCE]
        return tuple(f for f in functions if may_run(by.get(target + SEP + f), sources))


NOTHING = Reached()


def union(snapshots: Iterable[Reached]) -> Reached:
    """Every database's snapshot in one (what a judge without a tenant counts)."""
    rows: set[tuple[str, str, str]] = set()
    for s in snapshots:
        rows |= s.rows
    return Reached(frozenset(rows))


def json_output(names: tuple[str, ...]) -> bool:
    """Whether the call `names` is a JSON-writing built-in (`JSON_OUTPUT`, unqualified or pg_catalog's)."""
    return bool(names) and names[-1] in JSON_OUTPUT and (len(names) == 1 or names[-2] == "pg_catalog")


def operator_symbols(expr: Node) -> tuple[str, ...]:
    """The operator symbols an A_Expr body runs (BETWEEN: <= and >=; IN / DISTINCT / NULLIF: its own name)."""
    names = names_of(expr.get("name"))
    kind = expr.get("kind", "")
    if kind.startswith("AEXPR_BETWEEN") or kind.startswith("AEXPR_NOT_BETWEEN"):
        return ("<=", ">=", ">", "<")
    return names[-1:] if names else ()
