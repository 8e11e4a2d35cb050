"""The catalog queries behind list_tables/describe_table: sent through pgtenant, so they see what the tenant sees."""

from __future__ import annotations

# Relations the login may read (tables, views, materialized views, partitioned and foreign tables), outside the
# system schemas. pgtenant decides what the catalog shows: a schema or database of another tenant never appears.
LIST_TABLES = """
SELECT n.nspname AS schema, c.relname AS name,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' END AS kind,
       pg_catalog.obj_description(c.oid, 'pg_class') AS comment
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
   AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
 ORDER BY 1, 2
"""

# One relation by name (as PostgreSQL resolves it: search_path, quoting), if the login may read it.
FIND_TABLE = """
SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' END AS kind,
       pg_catalog.obj_description(c.oid, 'pg_class') AS comment
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
"""

COLUMNS = """
SELECT a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default,
       pg_catalog.col_description(a.attrelid, a.attnum) AS comment
  FROM pg_catalog.pg_attribute a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = %s::oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

# Primary, unique and foreign keys (and checks), as PostgreSQL prints their definitions. PostgreSQL 18 lists NOT
# NULL as constraints too ('n'): left out, as before 18, since each column says whether it is nullable.
CONSTRAINTS = """
SELECT conname AS name,
       CASE contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique' WHEN 'f' THEN 'foreign key'
                    WHEN 'c' THEN 'check' WHEN 'x' THEN 'exclusion' ELSE contype::text END AS kind,
       pg_catalog.pg_get_constraintdef(oid) AS definition
  FROM pg_catalog.pg_constraint
 WHERE conrelid = %s::oid AND contype <> 'n'
 ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'f' THEN 2 ELSE 3 END, conname
"""
