"""Inheritance parents that hold a tenant-scoped child's rows: PostgreSQL applies only the parent's row security."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

# Every ancestor (pg_inherits, recursively) of the given relations, with the first of them below it. `SELECT … FROM
# parent` (without ONLY) reads every descendant's rows and applies the PARENT's row security to them, not the
# child's: a parent that is not itself scoped returns a scoped child's rows of every tenant. A partitioned table's
# partitions have its columns, so it is scoped as they are (discovered with them); `FROM ONLY parent` reads its own.
_ANCESTORS = """
WITH RECURSIVE up(parent, child) AS (
  SELECT i.inhparent, c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS t(s, r)
      ON t.s = n.nspname AND t.r = c.relname
    JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid
  UNION
  SELECT i.inhparent, up.child FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.parent
)
SELECT pn.nspname, p.relname, cn.nspname, c.relname
  FROM up JOIN pg_catalog.pg_class p ON p.oid = up.parent JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
  JOIN pg_catalog.pg_class c ON c.oid = up.child JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
 ORDER BY 1, 2, 3, 4
"""


def holders(conn: psycopg.Connection, scoped: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """The ancestors of the `scoped` relations that are not scoped themselves, each with a scoped descendant whose
    rows of every tenant it returns (read without ONLY)."""
    rels = sorted({(str(s), str(t)) for s, t in scoped})
    if not rels:
        return {}
    rows = conn.execute(_ANCESTORS, ([r[0] for r in rels], [r[1] for r in rels])).fetchall()
    known: set[tuple[str, str]] = set(rels)
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for ps, pt, cs, ct in rows:
        parent = (str(ps), str(pt))
        if parent not in known and parent not in out:
            out[parent] = (str(cs), str(ct))
    return out
