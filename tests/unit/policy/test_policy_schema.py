"""Names of other tenants' schemas (schema.py): answered exactly as PostgreSQL answers for a schema that does not
exist, after every check a missing schema would meet first, with PostgreSQL's position (in characters)."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import DATABASE_HIDING, POLICIES

from proxy.errors import policy_denied
from proxy.policy import Allow, Decision, Deny, Rewrite, TenantPolicy, decide
from proxy.policy.hiding import reserved_name, unseen
from proxy.policy.model import UNSEEN_SCHEMA

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
def test_a_foreign_schema_is_answered_as_a_missing_one(sql: str, sqlstate: str, message: str, position: int) -> None:
    """Schema strategy: every schema not the tenant's is answered by the proxy as PostgreSQL answers a missing one."""
    decision = decide(SCHEMA, sql)
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
    """Where nothing is hidden, a missing schema is PostgreSQL's alone; where something is, a missing one is renamed
    as a hidden one is (red team 9a8 N2)."""
    assert isinstance(decide(POLICIES["database"], "SELECT * FROM no_such_sch.zz"), Allow)
    decision = decide(DATABASE_HIDING, "SELECT * FROM no_such_sch.zz")
    assert isinstance(decision, Rewrite) and decision.names == ((reserved_name("no_such_sch"), "no_such_sch"),)


def _sent_as_missing(policy: TenantPolicy, template: str, hidden: str = "tenant_globex",
                     missing: str = "tenant_glebox") -> Decision:
    """`template` naming a hidden schema is decided as naming a missing one of the same length (issue 14): sent
    with a reserved name in its place (the missing one's decision with that name), or refused as the missing one
    is, with the client's name."""
    h, m = decide(policy, template.format(s=hidden)), decide(policy, template.format(s=missing))
    if isinstance(m, Deny):
        assert h == dataclasses.replace(m, message=m.message.replace(missing, hidden),
                                        hint=m.hint.replace(missing, hidden)), (h, m)
        return h
    assert isinstance(h, Rewrite) and h.rules[-1] == "hidden_schema", h
    (reserved, name), = h.names
    assert name == hidden and reserved == reserved_name(hidden), h
    assert UNSEEN_SCHEMA in h.effects, h  # (marked: it sets the session's guard, red team 9a6 G3)
    if unseen(policy, missing):  # renamed alike (red team 9a8 N2): the same decision with its own reserved name
        assert isinstance(m, Rewrite) and m.names == ((reserved_name(missing), missing),), (h, m)
        assert (h.sql.replace(reserved, "R"), h.rules, h.effects, h.changes, h.moved) == (
            m.sql.replace(m.names[0][0], "R"), m.rules, m.effects, m.changes, m.moved), (h, m)
        return h
    # (another session's pg_temp_N is renamed whether it exists or not; pg_temp_xx is none: sent as written)
    sent = template.format(s=missing) if isinstance(m, Allow) else m.sql
    assert h.sql == sent.replace(missing, f'"{reserved}"'), (h, m)
    assert UNSEEN_SCHEMA not in m.effects, m
    assert (h.rules[:-1], h.effects - {UNSEEN_SCHEMA}, h.changes) == (
        getattr(m, "rules", ()), m.effects, m.changes), (h, m)
    return h


# redteam-guards-1 F7: the forms where a hidden schema still answered differently from a missing one. Each is what
# PostgreSQL answers for a schema that does not exist (checked against PostgreSQL 15 and 18).
@pytest.mark.parametrize("policy", [SCHEMA], ids=["schema"])
@pytest.mark.parametrize(
    ("sql", "sqlstate", "message", "position"),
    [
        ("SELECT {s}.zz.id", "42P01", 'missing FROM-clause entry for table "zz"', 8),
        ("SELECT ({s}.zz.*)", "42P01", 'missing FROM-clause entry for table "zz"', 9),
        ("SELECT 'a' COLLATE {s}.c", "3F000", 'schema "{s}" does not exist', 12),
        ("CREATE TEMP TABLE lk (LIKE {s}.zz)", "3F000", 'schema "{s}" does not exist', 28),
        # a view's query is sent wrapped (SELECT * FROM (<query>) "_pgt"): PostgreSQL's position is in that text
        ("CREATE TEMP VIEW v AS SELECT * FROM {s}.zz", "42P01", 'relation "{s}.zz" does not exist', 52),
    ],
)
def test_more_forms_of_a_hidden_schema(policy: object, sql: str, sqlstate: str, message: str, position: int) -> None:
    decision = decide(policy, sql.format(s="tenant_globex"))  # type: ignore[arg-type]
    assert isinstance(decision, Deny) and decision.rule == "foreign_schema", decision
    assert (decision.sqlstate, decision.message, decision.position) == (
        sqlstate, message.format(s="tenant_globex"), position)


@pytest.mark.parametrize("sql", ["SELECT * FROM pg_temp_64.x", "SELECT pg_temp_3.zz.id",
                                 "SELECT 'a' COLLATE pg_toast_temp_3.c"])
def test_another_sessions_temp_schema_is_answered_as_a_missing_one(sql: str) -> None:
    """Another session's temporary schema answers `permission denied`, a missing one `does not exist`: sent as a
    reserved missing name (shared, database), refused as a missing schema (schema strategy)."""
    schema = sql.split(" ")[-1].split(".")[0]
    for policy in (POLICIES["shared"], POLICIES["database"]):
        _sent_as_missing(policy, sql.replace(schema, "{s}"), schema, "pg_temp_x"[: len(schema)].ljust(len(schema),
                                                                                                      "x"))
    decision = decide(SCHEMA, sql)
    assert isinstance(decision, Deny) and decision.rule == "foreign_schema", decision
    assert "does not exist" in decision.message or "missing FROM-clause" in decision.message, decision


@pytest.mark.parametrize("policy", [SCHEMA, DATABASE_HIDING, POLICIES["shared"]])
def test_a_qualified_column_of_a_visible_schema_is_left_alone(policy: object) -> None:
    decision = decide(policy, "SELECT pg_catalog.pg_am.amname FROM pg_catalog.pg_am")  # type: ignore[arg-type]
    assert not isinstance(decision, Deny), decision


@pytest.mark.parametrize("schema", ["tenant_globex", "nosuch_schema", "tenant_acme"])
def test_a_qualified_column_whose_schema_is_not_its_from_items_is_refused_alike(schema: str) -> None:
    """PostgreSQL's answer for a missing schema differs between majors (HINT or DETAIL), for a hidden one it is
    `permission denied`: one refusal for every schema."""
    for policy in (SCHEMA, DATABASE_HIDING):
        decision = decide(policy, f"SELECT {schema}.zz.id FROM zz")
        assert isinstance(decision, Deny) and decision.rule == "qualified_column", decision
    assert not isinstance(decide(DATABASE_HIDING, "SELECT public.zz.id FROM public.zz"), Deny)


def test_a_reg_literal_is_answered_as_the_servers_major_answers() -> None:
    """regclassin of a name in a missing schema: `schema "s" does not exist` before PostgreSQL 16, `relation "s.t"
    does not exist` since (told by the statistics views' column lists read from the server)."""
    import dataclasses

    columns = dict(SCHEMA.catalog_columns)
    columns["pg_stat_all_tables"] = (*columns.get("pg_stat_all_tables", ()), "last_seq_scan")
    newer = dataclasses.replace(SCHEMA, catalog_columns=columns)
    for sql in ("SELECT 'tenant_globex.zz'::regclass", "SELECT COALESCE(NULL::regclass, 'tenant_globex.zz')"):
        old, new = decide(SCHEMA, sql), decide(newer, sql)
        assert isinstance(old, Deny) and (old.sqlstate, old.message) == (
            "3F000", 'schema "tenant_globex" does not exist'), old
        assert isinstance(new, Deny) and (new.sqlstate, new.message, new.position) == (
            "42P01", 'relation "tenant_globex.zz" does not exist', old.position), new
    decision = decide(newer, "SELECT 'tenant_globex'::regnamespace")
    assert isinstance(decision, Deny) and decision.sqlstate == "3F000", decision


def test_a_database_tenants_search_path_never_gets_a_hidden_schema() -> None:
    """A database tenant whose database holds a hidden schema (a schema tenant's, the tenant registry's): a SET of
    search_path naming it reaches PostgreSQL without it (as a missing schema is skipped), and reads of the setting
    give the client's value back; without hidden schemas the path goes through as set."""
    from proxy.policy import Rewrite
    from proxy.policy.settings import marked_entry

    decision = decide(DATABASE_HIDING, "SET search_path = tenant_globex, public")
    assert isinstance(decision, Rewrite), decision
    assert marked_entry("tenant_globex, public") in decision.sql and "tenant_globex," not in decision.sql
    assert isinstance(decide(DATABASE_HIDING, "SHOW search_path"), Rewrite)
    assert isinstance(decide(POLICIES["database"], "SET search_path = tenant_globex, public"), Allow)
    assert isinstance(decide(POLICIES["database"], "SHOW search_path"), Allow)


# The DDL phase oracle (issue 14): when PostgreSQL answers a missing schema, a hidden one is answered. In the shared
# and database strategies PostgreSQL answers both (the hidden name is sent as a reserved missing one: hiding.py); in
# the schema strategy the proxy answers every foreign schema alike, in the phase PostgreSQL would.
SHARED_HIDING = POLICIES["shared_hiding"]


@pytest.mark.parametrize(
    ("sql", "at_run"),
    [
        ("SELECT * FROM tenant_globex.zz", False),
        ("EXPLAIN SELECT * FROM tenant_globex.zz", False),
        ("DECLARE c CURSOR FOR SELECT * FROM tenant_globex.zz", False),
        ("CREATE TEMP TABLE t AS SELECT * FROM tenant_globex.zz", False),
        ("CREATE TEMP VIEW v AS SELECT * FROM tenant_globex.zz", True),
        ("PREPARE p AS SELECT * FROM tenant_globex.zz", True),
        ("COPY tenant_globex.zz TO STDOUT", True),
        ("COPY (SELECT * FROM tenant_globex.zz) TO STDOUT", True),
        ('CREATE TEMP TABLE t (x text COLLATE tenant_globex."C")', True),
    ],
)
def test_a_statement_analyzed_when_it_runs_is_refused_when_it_runs(sql: str, at_run: bool) -> None:
    """PostgreSQL analyzes SELECT/INSERT/UPDATE/DELETE/MERGE, DECLARE, EXPLAIN, CREATE TABLE AS and CALL at Parse,
    every other statement at Execute: a Parse of one of those succeeds for a missing schema, so for a foreign one."""
    decision = decide(SCHEMA, sql)
    assert isinstance(decision, Deny) and decision.rule == "foreign_schema", decision
    assert decision.at_run is at_run and decision.before is None, decision
    for policy in (SHARED_HIDING, DATABASE_HIDING):
        _sent_as_missing(policy, sql.replace("tenant_globex", "{s}"))


@pytest.mark.parametrize(
    ("sql", "before"),
    [
        ("SELECT 1; SELECT * FROM tenant_globex.zz", "SELECT 1; "),
        ("SET application_name = 'x'; CREATE TEMP VIEW v AS SELECT * FROM tenant_globex.zz; SELECT 2",
         "SET application_name = 'x'; "),
    ],
)
def test_the_statements_before_a_foreign_schema_run_first(sql: str, before: str) -> None:
    """In a Query PostgreSQL runs each statement before it analyzes the next: those ahead of the one naming a missing
    schema run, so those ahead of a foreign one run too (as a Query of their own)."""
    decision = decide(SCHEMA, sql)
    assert isinstance(decision, Deny) and decision.before is not None, decision
    assert decision.before.sql == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT * FROM {s}.zz",
        "SET application_name = 'x'; CREATE TEMP VIEW v AS SELECT * FROM {s}.zz; SELECT 2",
        "SELECT count(*) FROM orders;\nSELECT * FROM {s}.zz",
        "SELECT * FROM {s}.zz; DO $$ BEGIN END $$",  # a later refusal of the proxy's own comes first
        "SELECT 1; COPY {s}.zz TO STDOUT; CHECKPOINT",
        "EXPLAIN SELECT * FROM {s}.zz",
        "EXPLAIN (VERBOSE) SELECT * FROM {s}.zz",
        "CREATE TEMP VIEW v AS SELECT * FROM {s}.zz",
        "SELECT * FROM orders, {s}.zz",
        "SELECT * FROM orders; SELECT * FROM {s}.zz",
        "SELECT 'é' FROM orders, {s}.zz",
        "CREATE TEMP TABLE t (LIKE {s}.zz); INSERT INTO t DEFAULT VALUES",
        "CREATE TEMP VIEW v AS SELECT * FROM {s}.zz; SELECT * FROM v",
        "PREPARE p AS SELECT * FROM {s}.zz; EXECUTE p",
        "CREATE TEMP RECURSIVE VIEW v (a) AS SELECT 1 FROM {s}.zz",  # red team 8a F11: refused alike
        "SELECT ARRAY['x'::regclass] || 16385, * FROM {s}.zz",
        "SELECT current_setting('search_path'), * FROM {s}.zz",  # F9: the rewrite before the name, alike
        "SELECT {s}.zz.id",
        "SELECT * FROM {s}.zz, {s}.yy",
    ],
)
def test_a_hidden_schema_is_decided_as_a_missing_one(sql: str) -> None:
    """Shared and database strategies: the statement is sent as the same statement naming a missing schema would be
    (its rewrite, its session changes, the statements before it), with a reserved name that cannot exist in place
    of the hidden one; a refusal of the proxy's own is the missing one's."""
    for policy in (SHARED_HIDING, DATABASE_HIDING):
        _sent_as_missing(policy, sql)


def test_an_agents_string_with_a_hidden_schema_is_refused_as_with_a_missing_one() -> None:
    """An agent's statement admitted by its estimate must be alone in its string, whatever schema it names."""
    agent = dataclasses.replace(POLICIES["shared_agent"], hidden_schemas=frozenset({"tenant_globex"}))
    for sql in ("SELECT 1; SELECT * FROM {s}.zz", "SELECT * FROM orders; SELECT * FROM {s}.zz",
                "SELECT * FROM {s}.zz"):
        _sent_as_missing(agent, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 OPERATOR(saas.{s}.+) 1",  # red team 9a G1: the current database first, then a hidden schema
        "SELECT 'a' COLLATE saas.{s}.\"C\"",
        "SELECT * FROM zz TABLESAMPLE saas.{s}.bernoulli(10)",
        "SELECT * FROM zz ORDER BY 1 USING OPERATOR(saas.{s}.<)",
        "SET CONSTRAINTS saas.{s}.c DEFERRED",  # G11: PostgreSQL looked the hidden schema up
    ],
)
def test_a_three_part_name_is_another_databases_whatever_schema_follows(sql: str) -> None:
    for policy in (SHARED_HIDING, DATABASE_HIDING, SCHEMA):
        for name in ("tenant_globex", "tenant_glebox"):
            decision = decide(policy, sql.format(s=name))
            assert isinstance(decision, Deny) and decision.rule == "cross_database", decision


def test_set_constraints_names_a_schema() -> None:
    """G11: `SET CONSTRAINTS s.c` is renamed where s is hidden, refused as missing in the schema strategy."""
    renamed = decide(SHARED_HIDING, "SET CONSTRAINTS tenant_globex.c DEFERRED")
    assert isinstance(renamed, Rewrite) and renamed.names[0][1] == "tenant_globex", renamed
    refused = decide(SCHEMA, "SET CONSTRAINTS tenant_globex.c DEFERRED")
    assert isinstance(refused, Deny) and refused.message == 'schema "tenant_globex" does not exist', refused
