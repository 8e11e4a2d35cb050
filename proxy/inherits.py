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
_ANCESTORS = """
WITH RECURSIVE seed(oid, by_column) AS (
  SELECT c.oid, false FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN ROWS FROM (pg_catalog.unnest(%(schemas)s::text[]), pg_catalog.unnest(%(names)s::text[])) AS t(s, r)
      ON t.s = n.nspname AND t.r = c.relname
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
    tenant it returns (read without ONLY)."""
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
