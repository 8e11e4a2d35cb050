"""Routines PostgreSQL runs without a call: one database's catalog snapshot of them, and where they are reached."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.policy.tree import Node, names_of

# Kinds of a snapshot row (kind, key, "schema.function"): how a statement reaches a routine outside pg_catalog and
# information_schema that no extension owns.
ATTRIBUTE = "attribute"  # key: a function of one argument: `t.f` / `(t).f` is f(t) when t has no column f
FIELD = "field"  # key: a function of one scalar argument: only `(x).f` / `t.c.f` reach it (`t.f` names a row)
OPERATOR = "operator"  # key: an operator symbol whose code is the function
CAST = "cast"  # key: the target type (pg_type.typname) of a cast done by the function
SHADOW = "shadow"  # key: a built-in's name the function overloads or shadows (an unqualified call may pick it)
VIEW = "view"  # key: "schema.view" of a view whose definition calls the function
KINDS = (ATTRIBUTE, FIELD, OPERATOR, CAST, SHADOW, VIEW)

HOW = {ATTRIBUTE: "attribute notation", FIELD: "attribute notation", OPERATOR: "operator", CAST: "a cast to type",
       SHADOW: "the unqualified call",
       VIEW: "view"}


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
        if frozen[VIEW]:  # a view named without its schema may be any of that name
            for key, fs in list(frozen[VIEW].items()):
                bare = key.rpartition(".")[2]
                frozen[VIEW][bare] = tuple(sorted({*frozen[VIEW].get(bare, ()), *fs}))
        object.__setattr__(self, "by_kind", frozen)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def without(self, schemas: frozenset[str]) -> Reached:
        """The snapshot less what lives in `schemas` (other tenants' schemas, never on this tenant's search_path:
        their functions and operators are not found unqualified, their views not read); a cast is found by its
        types wherever its function lives, so casts stay."""
        if not schemas:
            return self
        kept = frozenset(row for row in self.rows
                         if row[0] == CAST or (row[1] if row[0] == VIEW else row[2]).partition(".")[0] not in schemas)
        return self if kept == self.rows else Reached(kept)

    def functions(self, kind: str, key: str) -> tuple[str, ...]:
        """The routines `key` reaches as `kind` ((): none)."""
        return self.by_kind[kind].get(key, ())


NOTHING = Reached()


def union(snapshots: Iterable[Reached]) -> Reached:
    """Every database's snapshot in one (what a judge without a tenant counts)."""
    rows: set[tuple[str, str, str]] = set()
    for s in snapshots:
        rows |= s.rows
    return Reached(frozenset(rows))


def operator_symbols(expr: Node) -> tuple[str, ...]:
    """The operator symbols an A_Expr body runs (BETWEEN: <= and >=; IN / DISTINCT / NULLIF: its own name)."""
    names = names_of(expr.get("name"))
    kind = expr.get("kind", "")
    if kind.startswith("AEXPR_BETWEEN") or kind.startswith("AEXPR_NOT_BETWEEN"):
        return ("<=", ">=", ">", "<")
    return names[-1:] if names else ()
