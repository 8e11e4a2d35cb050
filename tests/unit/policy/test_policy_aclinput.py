"""aclitem input from text (red team round 3 R7): every place where a literal or parameter takes an ACL value's type."""

from __future__ import annotations

import pytest
from policy_corpus import POLICIES

from proxy.policy import Deny, decide

ACL_TEXT = [
    "SELECT 1 FROM (SELECT relacl AS a FROM pg_class) s WHERE a @> '{nosuchrole=r/postgres}'",
    "SELECT 1 FROM pg_class WHERE relacl[1] = 'nosuchrole=r/postgres'",
    "SELECT coalesce(relacl, '{nosuchrole=r/postgres}') FROM pg_class",
    "SELECT relacl FROM pg_class UNION ALL SELECT '{nosuchrole=r/postgres}'",
    "SELECT * FROM pg_class UNION ALL SELECT '{nosuchrole=r/postgres}'",
    "SELECT array_append(relacl, 'nosuchrole=r/postgres') FROM pg_class",
    "SELECT pg_catalog.array_position(relacl, $1) FROM pg_class",
    "SELECT acldefault('r', 10) @> '{nosuchrole=r/postgres}'",
    "SELECT makeaclitem(10, 10, 'SELECT', false) = 'nosuchrole=r/postgres'",
    "SELECT CASE WHEN true THEN relacl ELSE '{nosuchrole=r/postgres}' END FROM pg_class",
    "SELECT CASE relacl WHEN '{nosuchrole=r/postgres}' THEN 1 END FROM pg_class",
    "SELECT 1 FROM pg_namespace n(a, b, c, d) WHERE d @> '{nosuchrole=r/postgres}'",
    "WITH w(x) AS (SELECT relacl FROM pg_class) SELECT 1 FROM w WHERE x = '{nosuchrole=r/postgres}'",
    "WITH w AS (SELECT datacl AS x FROM pg_database) SELECT 1 FROM w WHERE x = '{nosuchrole=r/postgres}'",
    "SELECT 1 FROM pg_class c WHERE (c).relacl = '{nosuchrole=r/postgres}'",
    "SELECT '{nosuchrole=r/postgres}' IN (SELECT relacl FROM pg_class)",
    "SELECT ('x', '{nosuchrole=r/postgres}') IN (SELECT relname, relacl FROM pg_class)",
    "SELECT 1 FROM pg_class WHERE relacl IN ('{nosuchrole=r/postgres}')",
    "SELECT 1 FROM pg_class WHERE relacl IS DISTINCT FROM $1",
    "SELECT nullif(relacl, '{nosuchrole=r/postgres}') FROM pg_class",
    "SELECT relacl || 'nosuchrole=r/postgres' FROM pg_class",
    "SELECT 1 FROM pg_class WHERE relacl @> ARRAY['nosuchrole=r/postgres']",
    "SELECT 1 FROM pg_class WHERE relacl @> ARRAY['nosuchrole=r/postgres']::unknown[]",
    "SELECT 1 FROM pg_proc WHERE proacl = ARRAY[makeaclitem(10, 10, 'EXECUTE', false), 'nosuchrole=X/postgres']",
    "VALUES (NULL::aclitem[]), ('{nosuchrole=r/postgres}')",
    "SELECT x FROM unnest((SELECT relacl FROM pg_class LIMIT 1)) u(x) WHERE x = 'nosuchrole=r/postgres'",
    "SELECT (SELECT relacl FROM pg_class LIMIT 1) = '{nosuchrole=r/postgres}'",
    "SELECT 1 FROM pg_class WHERE (relname, relacl) = ('x', '{nosuchrole=r/postgres}')",
    "SELECT greatest(initprivs, '{nosuchrole=r/postgres}') FROM pg_init_privs",
    # a temporary table or view with an ACL column: a later INSERT, UPDATE or COPY reads text into it
    "CREATE TEMP TABLE tt AS SELECT relacl FROM pg_class",
    "CREATE TEMP TABLE tt AS SELECT * FROM pg_namespace",
    "CREATE TEMP TABLE tt AS SELECT n.* FROM pg_namespace n",
    "SELECT relacl INTO TEMP tt FROM pg_class",
    "CREATE TEMP VIEW tv AS SELECT nspacl AS a FROM pg_namespace",
    "CREATE TEMP TABLE tt AS SELECT acldefault('n', 10) AS d",
]

NOT_ACL_TEXT = [
    "SELECT relname FROM pg_class WHERE relname = 'orders'",
    "SELECT pg_catalog.array_to_string(c.relacl, E'\\n') FROM pg_class c WHERE c.relname = 'x'",
    "SELECT relacl::text FROM pg_class WHERE relacl::text LIKE '%a%'",
    "SELECT n.nspname, (aclexplode(nspacl)).privilege_type FROM pg_namespace n WHERE n.nspname = 'public'",
    "SELECT NULL::aclitem[] AS relacl",
    "SELECT 1 FROM (VALUES (1, 'a')) v(id, name), pg_class WHERE name = 'a'",
    "SELECT relname FROM pg_class UNION SELECT 'x'",
    "SELECT relacl FROM pg_class UNION ALL SELECT relacl FROM pg_class WHERE relname = 'x'",
    "CREATE TEMP TABLE tt AS SELECT relname, relacl::text AS acl FROM pg_class",
    "SELECT coalesce(array_length(relacl, 1), 0) FROM pg_class WHERE relkind = 'r'",
    # pg_dump 15's default ACLs: an empty array names no role
    "SELECT oid, tableoid, defaclrole, defaclnamespace, defaclobjtype, defaclacl, CASE WHEN defaclnamespace = 0 THEN "
    "acldefault(CASE WHEN defaclobjtype = 'S' THEN 's'::\"char\" ELSE defaclobjtype END, defaclrole) ELSE '{}' END AS "
    "acldefault FROM pg_default_acl",
    "SELECT coalesce(relacl, '{ }') FROM pg_class",
]


@pytest.mark.parametrize("policy", ["shared", "schema", "database"])
@pytest.mark.parametrize("sql", ACL_TEXT)
def test_text_read_as_an_acl_value_is_refused(policy: str, sql: str) -> None:
    decision = decide(POLICIES[policy], sql)
    assert isinstance(decision, Deny) and decision.rule == "aclitem_input", decision


@pytest.mark.parametrize("sql", NOT_ACL_TEXT)
def test_text_beside_other_values_is_left_alone(sql: str) -> None:
    decision = decide(POLICIES["shared"], sql)
    assert getattr(decision, "rule", None) != "aclitem_input", decision
