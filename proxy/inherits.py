"""Inheritance parents that hold a tenant-scoped child's rows: PostgreSQL applies only the parent's row security."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

# Every ancestor (pg_inherits, recursively) of the given relations, with the first of them below it. `SELECT … FROM
# parent` (without ONLY) reads every descendant's rows and applies the PARENT's row security to them, not the
# child's: a parent that is not itself scoped returns a scoped child's rows of every tenant. A partitioned table's
# partitions have its columns, so it is scoped as they are (discovered with them); `FROM ONLY parent` reads its own.
# A relation with a tenant column anywhere (a schema no tenant uses included: `arch.old_notes` under
# `public.arch_base`, red team 21w W6) seeds the walk too; its ancestors that lack every such column hold its rows.
# So does a foreign table without any tenant column, a child or a partition (red team 22d R3): PostgreSQL checks only
# the parent's privilege for rows read through it and scans the foreign table with the READER's user mapping (one
# FOR PUBLIC: anyone's), so every ancestor returns whatever its stored credentials read remotely, every tenant's
# rows included. A foreign table with a tenant column is scoped as the proxy already takes one (the column seed).
_ANCESTORS = """
WITH RECURSIVE seed(oid, by_column) AS (
  SELECT c.oid, false FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN ROWS FROM (pg_catalog.unnest(%(schemas)s::text[]), pg_catalog.unnest(%(names)s::text[])) AS t(s, r)
      ON t.s = n.nspname AND t.r = c.relname
  UNION ALL
  SELECT c.oid, false FROM pg_catalog.pg_class c
   WHERE c.relkind = 'f' AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                        AND a.attname = ANY(%(columns)s::text[]) AND a.attnum > 0 AND NOT a.attisdropped)
  UNION ALL
  SELECT DISTINCT a.attrelid, true FROM pg_catalog.pg_attribute a
   WHERE a.attname = ANY(%(columns)s::text[]) AND a.attnum > 0 AND NOT a.attisdropped
     AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = a.attrelid)
), up(parent, child, by_column) AS (
  SELECT i.inhparent, s.oid, s.by_column FROM seed s JOIN pg_catalog.pg_inherits i ON i.inhrelid = s.oid
  UNION
  SELECT i.inhparent, up.child, up.by_column FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.parent
)
SELECT pn.nspname, p.relname, cn.nspname, c.relname
  FROM up JOIN pg_catalog.pg_class p ON p.oid = up.parent JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
  JOIN pg_catalog.pg_class c ON c.oid = up.child JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
 WHERE NOT up.by_column OR NOT EXISTS (
       SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = up.parent AND a.attname = ANY(%(columns)s::text[])
          AND a.attnum > 0 AND NOT a.attisdropped)
 ORDER BY up.by_column, 1, 2, 3, 4
"""


def holders(conn: psycopg.Connection, scoped: Iterable[tuple[str, str]],
            columns: Iterable[str] = ()) -> dict[tuple[str, str], tuple[str, str]]:
    """The ancestors of the `scoped` relations that are not scoped themselves, and the ancestors without any of the
    tenant `columns` of a relation with one of them wherever it lives, each with a descendant whose rows of every
    tenant it returns (read without ONLY); and every ancestor of a foreign table without any of the `columns`,
    with it (it reads with stored credentials)."""
    rels = sorted({(str(s), str(t)) for s, t in scoped})
    cols = sorted({str(c) for c in columns})
    if not rels and not cols:
        return {}
    rows = conn.execute(_ANCESTORS, {"schemas": [r[0] for r in rels], "names": [r[1] for r in rels],
                                     "columns": cols}).fetchall()
    known: set[tuple[str, str]] = set(rels)
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for ps, pt, cs, ct in rows:
        parent = (str(ps), str(pt))
        if parent not in known and parent not in out:
            out[parent] = (str(cs), str(ct))
    return out


# The stored query trees (pg_node_tree: `ev_action`, `ev_qual`) of the rules of the given relations (a view's or
# materialized view's `_RETURN` and any other rule), and the oids of the given relations.
_TREES = """
SELECT w.ev_class::int8, w.ev_action::text, w.ev_qual::text
  FROM pg_catalog.pg_rewrite w WHERE w.ev_class = ANY(%s::oid[])
"""
# (a foreign table's own rows are its remote ones, read with stored credentials: never "only its own" — review 22 F2)
_OIDS = """
SELECT c.oid::int8, n.nspname, c.relname
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS t(s, r)
    ON t.s = n.nspname AND t.r = c.relname
 WHERE c.relkind <> 'f'
"""
_RTE_NODES = frozenset({"RTE", "RANGETBLENTRY"})  # a RangeTblEntry as PostgreSQL 15 / 16+ writes it


def _tokens(text: str) -> list[str]:
    """The tokens of a pg_node_tree text as PostgreSQL's pg_strtok reads them: `(`, `)`, `{`, `}` alone; anything
    else up to white space or one of those, a backslash keeping the next character in the token (kept escaped,
    so an escaped brace is never structure)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n\r":
            i += 1
        elif c in "(){}":
            out.append(c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in " \t\n\r(){}":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j])
            i = j
    return out


def relation_inh(tree: str | None) -> dict[int, bool] | None:
    """Every relation a stored query tree reads as a range table entry (`:rtekind 0`, RTE_RELATION, its `:relid`), and
    whether any entry of it has
    `:inh true` (read with its inheritance children; `FROM ONLY t` is `:inh false`: its own rows only); None when
    the text is not the node tree expected. A node's fields are `:name value` pairs: the token after a field name is
    its value whatever it looks like (a CTE's name `:inh` included); a Const's datum spans more tokens."""
    out: dict[int, bool] = {}
    if tree is None:
        return out
    stack: list[dict] = []  # {"node": bool, "name": str | None, "key": str | None, "fields": dict}
    for tok in _tokens(tree):
        top = stack[-1] if stack else None
        if tok in ("{", "("):
            if top is not None and top["node"] and top["key"] is not None:
                top["fields"][top["key"]] = None  # a structured value
                top["key"] = None
            stack.append({"node": tok == "{", "name": None, "key": None, "fields": {}})
        elif tok in ("}", ")"):
            if top is None or top["node"] != (tok == "}") or top["key"] is not None:
                return None
            stack.pop()
            if top["node"] and top["name"] in _RTE_NODES:
                kind, relid, inh = (top["fields"].get(k) for k in (":rtekind", ":relid", ":inh"))
                if kind is None:
                    return None
                if kind != "0":
                    continue  # not RTE_RELATION (a subquery, join, CTE, function, values ...): no relation of its own
                if relid is None or not relid.isdigit() or inh not in ("true", "false"):
                    return None
                out[int(relid)] = out.get(int(relid), False) or inh == "true"
        elif top is None or not top["node"]:
            continue  # a list's item, or a bare value (`<>`)
        elif top["name"] is None:
            top["name"] = tok
        elif top["key"] is not None:
            top["fields"][top["key"]] = tok
            top["key"] = None
        elif tok.startswith(":"):
            top["key"] = tok
        # else: a further token of the last value (a Const's `4 [ 1 0 0 0 ]`)
    return out if not stack else None


def only_reads(conn: psycopg.Connection, relations: Iterable[int],
               parents: Iterable[tuple[str, str]]) -> dict[int, frozenset[tuple[str, str]]]:
    """For each of the `relations` (views, materialized views: oids), the `parents` its rules' stored query trees
    read only as `ONLY parent` (every range table entry of it `:inh false`: the parent's own rows, none of a
    child's). A parent its trees also read without ONLY, or do not read as a range table entry at all (pg_depend
    has it from elsewhere), or trees not read as expected: not one of them."""
    oids, wanted = sorted(set(relations)), sorted(set(parents))
    if not oids or not wanted:
        return {}
    names = {int(o): (str(s), str(t)) for o, s, t in
             conn.execute(_OIDS, ([w[0] for w in wanted], [w[1] for w in wanted])).fetchall()}
    seen: dict[int, dict[int, bool] | None] = {}
    for rel, action, qual in conn.execute(_TREES, (oids,)).fetchall():
        got = seen.setdefault(int(rel), {})
        for tree in (action, qual):
            found = relation_inh(tree)
            if got is None or found is None:
                seen[int(rel)] = got = None
                continue
            for relid, inh in found.items():
                got[relid] = got.get(relid, False) or inh
    return {rel: frozenset(names[o] for o, inh in got.items() if o in names and not inh)
            for rel, got in seen.items() if got is not None}
