"""Names of other tenants' schemas (schema.py): answered exactly as PostgreSQL answers for a schema that does not
exist, after every check a missing schema would meet first, with PostgreSQL's position (in characters)."""

from __future__ import annotations

import pytest
from policy_corpus import DATABASE_HIDING, POLICIES

from proxy.errors import policy_denied
from proxy.policy import Allow, Deny, decide

SCHEMA = POLICIES["schema"]


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message", "position"),
    [
        ("SELECT * FROM tenant_globex.zz", "42P01", 'relation "tenant_globex.zz" does not exist', 15),
        ("SELECT 'é' AS a FROM tenant_globex.zz", "42P01", 'relation "tenant_globex.zz" does not exist', 22),
        ('SELECT * FROM "TENANT_GLOBEX".zz', "42P01", 'relation "TENANT_GLOBEX.zz" does not exist', 15),
        ("SELECT NULL::tenant_globex.t", "3F000", 'schema "tenant_globex" does not exist', 14),
        ("SELECT 1 OPERATOR(tenant_globex.+) 1", "3F000", 'schema "tenant_globex" does not exist', 10),
        ("SELECT 'tenant_globex.zz'::regclass", "3F000", 'schema "tenant_globex" does not exist', 8),
        ("COPY tenant_globex.zz TO STDOUT", "3F000", 'schema "tenant_globex" does not exist', 0),
        ("SELECT 1; SELECT * FROM tenant_globex.zz", "42P01", 'relation "tenant_globex.zz" does not exist', 25),
    ],
)
def test_a_hidden_schema_is_answered_as_a_missing_one(sql: str, sqlstate: str, message: str, position: int) -> None:
    policy = SCHEMA if "'" in sql and "regclass" in sql else DATABASE_HIDING
    if '"TENANT_GLOBEX"' in sql:
        policy = SCHEMA  # not a schema of this tenant either
    decision = decide(policy, sql)
    assert isinstance(decision, Deny), decision
    assert (decision.sqlstate, decision.message, decision.hint, decision.position) == (
        sqlstate, message, "", position), decision
    assert decision.rule == "foreign_schema"  # for the logs and metrics
    fields = policy_denied(decision)
    assert fields.fields() == {"S": "ERROR", "V": "ERROR", "C": sqlstate, "M": message,
                               **({"P": str(position)} if position else {})}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT tenant_globex.f()",  # not allow-listed, as no_such.f() is not: the same refusal
        "DELETE FROM tenant_globex.orders",  # a read-only role: refused as a write, as for no_such.orders
    ],
)
def test_checks_a_missing_schema_meets_first_come_first(sql: str) -> None:
    hidden = decide(SCHEMA, sql)
    missing = decide(SCHEMA, sql.replace("tenant_globex", "no_such_sch"))
    assert isinstance(hidden, Deny) and isinstance(missing, Deny)
    assert (hidden.sqlstate, hidden.rule) == (missing.sqlstate, missing.rule)
    assert hidden.rule != "foreign_schema"
    assert hidden.message.replace("tenant_globex", "no_such_sch") == missing.message


def test_a_schema_nothing_hides_is_left_to_postgresql() -> None:
    assert isinstance(decide(DATABASE_HIDING, "SELECT * FROM no_such_sch.zz"), Allow)
