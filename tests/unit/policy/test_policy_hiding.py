"""Hidden schemas sent as reserved missing names (hiding.py): which names are renamed, the reserved names, the
verification, positions and names mapped back."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import DATABASE_HIDING, POLICIES

from proxy.policy import Deny, Rewrite, decide
from proxy.policy.hiding import Renamed, position_back, rename, restored

SHARED_HIDING = POLICIES["shared_hiding"]


def _renamed(sql: str) -> Renamed:
    out = rename(SHARED_HIDING, sql)
    assert out is not None, sql
    return out


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM tenant_globex.zz",
        "SELECT * FROM TENANT_GLOBEX.zz",
        'SELECT * FROM "tenant_globex".zz',
        'SELECT * FROM U&"tenant\\005fglobex".zz',
        'SELECT * FROM U&"tenant!005fglobex" UESCAPE \'!\'.zz',
        "SELECT * FROM tenant_globex /* c */ . zz",
        "SELECT tenant_globex.f(1)",
        "SELECT NULL::tenant_globex.t",
        "SELECT 1 OPERATOR(tenant_globex.+) 1",
        "SELECT 'a' COLLATE tenant_globex.\"C\"",
        "SELECT tenant_globex.zz.id",
        "SELECT (tenant_globex.zz.*)",
        "CREATE TEMP TABLE t (LIKE tenant_globex.zz)",
        "CREATE TEMP TABLE t (x text, EXCLUDE USING btree (x tenant_globex.text_ops WITH =))",
        "SELECT * FROM zz TABLESAMPLE tenant_globex.bernoulli(1)",
        "COPY tenant_globex.zz TO STDOUT",
        "LOCK TABLE tenant_globex.zz",
        "SELECT * FROM pg_temp_3.zz",
    ],
)
def test_every_way_of_writing_the_schema_is_renamed(sql: str) -> None:
    renamed = _renamed(sql)
    low = renamed.sql.lower()
    assert "tenant_globex" not in low and "tenant\\005f" not in low and "tenant!005f" not in low, renamed
    assert "pg_temp_3" not in low, renamed
    (reserved, name), = renamed.names
    assert name in ("tenant_globex", "pg_temp_3") and reserved.startswith("pg_") and reserved[3].isdigit()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT tenant_globex.id FROM zz tenant_globex",  # a FROM item's alias
        "SELECT tenant_globex.* FROM zz tenant_globex",
        "SET tenant_globex.x = 1",  # a setting's prefix
        "SHOW tenant_globex.x",
        "SELECT 1; SET tenant_globex.x = 1",
        "UPDATE zz SET tenant_globex.f = 1",  # a column's field
        "SELECT x.tenant_globex.zz",  # not the first name
        "SELECT 'tenant_globex.zz'",  # a value (run-time guards)
        "SELECT * FROM tenant_globex",  # a table of that name
        "SELECT * FROM tenant_globez.zz",  # not hidden
    ],
)
def test_a_name_that_is_not_a_hidden_schema_stays(sql: str) -> None:
    assert rename(SHARED_HIDING, sql) is None


def test_the_schema_strategy_is_not_renamed() -> None:
    assert rename(dataclasses.replace(POLICIES["schema"], hidden_schemas=frozenset({"tenant_globex"})),
                  "SELECT * FROM tenant_globex.zz") is None


def test_reserved_names_keep_positions_and_never_meet_the_clients_text() -> None:
    first = _renamed("SELECT * FROM tenant_globex.zz")
    reserved = first.names[0][0]
    assert len(reserved) == len("tenant_globex") and first.moved == ()
    assert first.sql.index(reserved) == "SELECT * FROM tenant_globex.zz".index("tenant_globex")
    # the same name again: the same reserved name (a cached decision and the session's map agree)
    assert _renamed("SELECT 1 FROM tenant_globex.yy").names[0][0] == reserved
    # a client's text holding it (in any case) gets another one
    again = _renamed(f"SELECT '{reserved.upper()}' FROM tenant_globex.zz")
    other = again.names[0][0]
    assert other != reserved and other not in again.sql.replace(other, "", 1) and len(other) == len(reserved)
    # two spellings of different lengths, and two hidden names: distinct, none a part of another
    policy = dataclasses.replace(SHARED_HIDING, hidden_schemas=frozenset({"tenant_globex", "tenant_initech"}))
    both = rename(policy, 'SELECT * FROM tenant_globex.a, "tenant_globex".b, tenant_initech.c')
    assert both is not None and len(both.names) == 3
    names = [r for r, _ in both.names]
    assert all(a == b or (a not in b and b not in a) for a in names for b in names)


def test_a_short_name_moves_positions_which_map_back() -> None:
    policy = dataclasses.replace(SHARED_HIDING, hidden_schemas=frozenset({"ab"}))
    sql = "SELECT * FROM ab.zz, nosuch"
    renamed = rename(policy, sql)
    assert renamed is not None
    (reserved, _), = renamed.names
    assert len(reserved) == 4 and renamed.moved == ((14 + 4, 2),)
    assert position_back(renamed.sql.index("nosuch") + 1, renamed.moved) == sql.index("nosuch") + 1
    assert position_back(renamed.sql.index(reserved) + 1, renamed.moved) == sql.index("ab") + 1
    decision = decide(policy, "SELECT * FROM ab.zz; SELECT pg_sleep_for('1s')")  # the proxy's own refusal
    assert isinstance(decision, Deny) and decision.statement == (2, 2)


def test_a_refusal_names_what_the_client_wrote() -> None:
    decision = decide(SHARED_HIDING, "SELECT * FROM tenant_globex.zz, zz; SELECT tenant_globex.zz.id FROM zz")
    assert isinstance(decision, Deny) and decision.rule == "qualified_column", decision
    assert "tenant_globex" in decision.message and "pg_" not in decision.message, decision
    assert restored("relation pg_1abc.t", (("pg_1abc", "s"),)) == "relation s.t"


def test_the_decision_is_a_rewrite_carrying_the_names() -> None:
    for policy in (SHARED_HIDING, DATABASE_HIDING):
        decision = decide(policy, "SELECT * FROM tenant_globex.zz")
        assert isinstance(decision, Rewrite) and decision.rules == ("hidden_schema",), decision
        assert decision.names and decision.names[0][1] == "tenant_globex"
    assert decide(POLICIES["database"], "SELECT * FROM tenant_globex.zz").__class__.__name__ == "Allow"
