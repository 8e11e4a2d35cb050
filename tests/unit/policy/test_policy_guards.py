"""Run-time guards (guards.py, guarding.py): which conversions get one, its exact form, and the verifier's refusal of
an unguarded or altered one."""

from __future__ import annotations

import dataclasses

import pytest
from policy_corpus import DATABASE_HIDING, POLICIES

from proxy.policy import Allow, Deny, Rewrite, decide, engine, guards, settings
from proxy.policy import guarding as guarding_module
from proxy.policy.sqltext import Edit
from proxy.policy.tree import parse_json

SHARED, SCHEMA, DATABASE = POLICIES["shared"], POLICIES["schema"], POLICIES["database"]

CONVERSIONS = [
    "SELECT attrelid::regclass FROM pg_attribute",
    "SELECT CAST(c.oid AS regclass) FROM pg_class c",
    "SELECT regclass '16385'",
    "SELECT 16385::regclass, '16385'::regtype",
    "SELECT $1::regnamespace",
    "SELECT ('tenant_' || 'globex')::regnamespace",
    "SELECT to_regtype($1)",
    "SELECT pg_catalog.to_regclass(n) FROM (VALUES ('x')) v(n)",
    "SELECT regclass(relname::text) FROM pg_class",
    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute",
    "SELECT pg_get_viewdef(c.oid, true) FROM pg_class c",
    "SELECT obj_description(c.oid, 'pg_class'), col_description(c.oid, 1) FROM pg_class c",
    "SELECT pg_get_constraintdef(oid) FROM pg_constraint",
    "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef",
    "SELECT max(oid)::regclass FROM pg_class",
    "SELECT generate_series(16384, 16400)::regtype",
    "SELECT proargtypes::regtype[] FROM pg_proc",
    "SELECT oidvectortypes(proargtypes) FROM pg_proc",
    "SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c",
    "SELECT pg_relation_size(c.oid) FROM pg_class c",
    "SELECT pg_filenode_relation(0, relfilenode) FROM pg_class",
    "SELECT currval(16385), pg_sequence_last_value($1), currval(concat('public.', 'zz'))",  # regclass arguments (G4)
]
ROLE_CONVERSIONS = [
    "SELECT 'someone'::regrole",
    "SELECT to_regrole($1)",
    "SELECT pg_get_userbyid(relowner) FROM pg_class",
    "SELECT pg_has_role($1, 'MEMBER')",
    "SELECT has_table_privilege('someone', 'pg_class', 'SELECT')",
    "SELECT acldefault('r', relowner) FROM pg_class",
]


@pytest.mark.parametrize("policy_name", ["shared", "schema", "database_hiding"])
@pytest.mark.parametrize("sql", CONVERSIONS + ROLE_CONVERSIONS)
def test_every_conversion_gets_a_guard(policy_name: str, sql: str) -> None:
    policy = DATABASE_HIDING if policy_name == "database_hiding" else POLICIES[policy_name]
    decision = decide(policy, sql)
    assert isinstance(decision, Rewrite), decision
    assert "object_guard" in decision.rules, decision
    parse_json(decision.sql)


@pytest.mark.parametrize("sql", [c for c in CONVERSIONS if "_size(" not in c])
def test_a_database_of_its_own_needs_no_namespace_guard(sql: str) -> None:
    """Nothing in the database is hidden from a database tenant: only role names are guarded."""
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Allow | Rewrite), decision
    assert not isinstance(decision, Rewrite) or "object_guard" not in decision.rules, decision


@pytest.mark.parametrize("sql", [c for c in CONVERSIONS if "_size(" in c])
def test_a_database_tenant_is_told_no_shared_catalogs_size(sql: str) -> None:
    """A shared catalog's size is the cluster's (pg_database's grows with every database): guarded (red team 7 F3)."""
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision
    assert "relisshared" in decision.sql, decision.sql


@pytest.mark.parametrize("sql", ROLE_CONVERSIONS)
def test_role_names_are_guarded_in_a_database_of_its_own_too(sql: str) -> None:
    decision = decide(DATABASE, sql)
    assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision


@pytest.mark.parametrize(
    ("policy_name", "sql"),
    [
        ("schema", "SELECT 'orders'::regclass, 'tenant_acme.orders'::regclass, to_regclass('ref.x')"),
        ("shared", "SELECT 'sales.orders'::regclass, 'pg_class'::regclass, 'pg_catalog.int4'::regtype"),
        ("shared", "SELECT NULL::regclass, has_table_privilege('orders', 'SELECT')"),
        ("shared", "SELECT pg_has_role(current_user, 'MEMBER'), has_table_privilege(session_user, 'orders', 'SELECT')"),
    ],
)
def test_names_checked_when_decided_need_no_guard(policy_name: str, sql: str) -> None:
    decision = decide(POLICIES[policy_name], sql)
    rules = decision.rules if isinstance(decision, Rewrite) else ()
    assert not isinstance(decision, Deny) and "object_guard" not in rules, decision


def test_a_literal_naming_another_schema_is_guarded_outside_the_schema_strategy() -> None:
    """Refusing only the names of other tenants' schemas would tell them apart from missing ones."""
    for schema in ("tenant_globex", "no_such_schema"):
        decision = decide(SHARED, f"SELECT '{schema}.orders'::regclass")
        assert isinstance(decision, Rewrite) and "object_guard" in decision.rules
    assert decide(SCHEMA, "SELECT 'tenant_globex.orders'::regclass").rule == "foreign_schema"  # type: ignore[union-attr]
    assert decide(SCHEMA, "SELECT 'no_such_schema.orders'::regclass").rule == "foreign_schema"  # type: ignore[union-attr]


def test_the_client_expression_appears_once() -> None:
    """Evaluated once: the client's text is inside the guard exactly once (volatile, aggregate, SRF alike)."""
    for expr in ("random()::int", "max(oid)", "generate_series(1, 3)", "$1", "nextval('s')"):
        policy = POLICIES["shared_rw"] if "nextval" in expr else SHARED  # (a read-only role may not advance s)
        decision = decide(policy, f"SELECT ({expr})::regclass FROM pg_class")
        assert isinstance(decision, Rewrite)
        assert decision.sql.count(expr) == 1, decision.sql


def test_aggregates_windows_and_set_returning_functions_use_the_array_form() -> None:
    for expr in ("max(oid)", "count(*)", "row_number() OVER ()", "generate_series(1, 3)", "unnest(ARRAY[1])"):
        decision = decide(SCHEMA, f"SELECT ({expr})::regclass FROM pg_class")
        assert isinstance(decision, Rewrite) and "pg_catalog.array_position(" in decision.sql, (expr, decision)
    for expr in ("oid", "oid + 1", "(SELECT max(oid) FROM pg_class)", "random()::int"):
        decision = decide(SCHEMA, f"SELECT ({expr})::regclass FROM pg_class")
        assert isinstance(decision, Rewrite) and "array_position" not in decision.sql, (expr, decision)


def test_the_result_type_is_the_clients() -> None:
    for regtype in guards.CAST_KINDS:
        decision = decide(SCHEMA, f"SELECT x::{regtype} FROM (VALUES (1)) v(x)")
        assert isinstance(decision, Rewrite)
        assert f"::pg_catalog.{regtype} FROM" in decision.sql, (regtype, decision.sql)


def test_a_parameter_keeps_a_type_postgresql_can_infer() -> None:
    decision = decide(SCHEMA, "SELECT $1::regclass")
    assert isinstance(decision, Rewrite) and "($1)::pg_catalog.text" in decision.sql


def test_current_setting_of_a_value_is_guarded_and_set_config_still_refused() -> None:
    decision = decide(SHARED, "SELECT current_setting($1::VARCHAR)")
    assert isinstance(decision, Rewrite) and "setting_guard" in decision.rules
    assert "pg_catalog.regexp_replace($1::VARCHAR, '^pgtenant\\.(?!tenant_id$).*$'" in decision.sql
    assert isinstance(decide(SHARED, "SELECT current_setting('work_mem')"), Allow)
    denied = decide(SHARED, "SELECT set_config($1, 'x', false)")
    assert isinstance(denied, Deny) and denied.rule == "reserved_setting"


def test_own_setting_is_spared_by_the_setting_guard() -> None:
    custom = dataclasses.replace(SHARED, tenant_setting="app.tenant_id")
    template = guards.setting_name(custom)
    assert "(?!" not in template.prefix + template.suffix  # no exception needed: every pgtenant.* is reserved
    assert "(?!tenant_id$)" in (guards.setting_name(SHARED).prefix + guards.setting_name(SHARED).suffix)


# -- the verifier ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "tamper"),
    [
        ("SELECT attrelid::regclass FROM pg_attribute", lambda s: "SELECT attrelid::regclass FROM pg_attribute"),
        ("SELECT attrelid::regclass FROM pg_attribute",
         lambda s: s.replace("relnamespace = ANY", "relnamespace <> ANY")),
        ("SELECT format_type(atttypid, NULL) FROM pg_attribute",
         lambda s: s.replace("pgt_g_c__type", "pgt_g_c__class")),
        ("SELECT to_regtype($1)", lambda s: s.replace("'S'", "'X'")),
        ("SELECT current_setting($1)", lambda s: s.replace("(?!tenant_id$)", "")),
        ("SELECT pg_get_userbyid(relowner) FROM pg_class", lambda s: s.replace("'unknown (OID='", "'x'")),
    ],
)
def test_verifier_refuses_an_unguarded_or_altered_conversion(
    monkeypatch: pytest.MonkeyPatch, sql: str, tamper: object
) -> None:
    good = decide(SCHEMA, sql)
    assert isinstance(good, Rewrite)
    real_apply = engine.apply_edits

    def tampered(data: bytes, edits: list[Edit]) -> str:
        return tamper(real_apply(data, edits))  # type: ignore[operator]

    monkeypatch.setattr(engine, "apply_edits", tampered)
    decision = decide(SCHEMA, sql)
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified", decision


@pytest.mark.parametrize("sql", ["SELECT 16385::regclass", "SELECT format_type($1, NULL)",
                                 "SELECT pg_get_userbyid(10)", "SELECT to_regclass($1)",
                                 "SELECT current_setting($1)", "SELECT proargtypes::regtype[] FROM pg_proc"])
def test_verifier_refuses_when_no_guard_was_planned(monkeypatch: pytest.MonkeyPatch, sql: str) -> None:
    """The independent walk refuses an unguarded conversion even when the statement is otherwise allowed."""
    monkeypatch.setattr(guarding_module, "plan", lambda *args, **kwargs: None)
    decision = decide(SCHEMA, sql)
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified", decision


def test_a_forged_guard_cannot_carry_a_conversion() -> None:
    """A client's subquery named like a guard is not one: what it holds is checked, and refused."""
    decision = decide(SCHEMA, "SELECT (SELECT x::regclass FROM (SELECT 1 AS x) pgt_g_c__class__oid__regclass)")
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified"


def test_explain_without_costs_off_is_refused_by_the_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.policy import rewrite

    monkeypatch.setattr(rewrite._Planner, "costs_off", lambda self, body: None)
    decision = decide(SHARED, "EXPLAIN SELECT 1")
    assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified"


@pytest.mark.parametrize("sql", ["EXPLAIN (COSTS) SELECT 1", "EXPLAIN (COSTS ON) SELECT 1",
                                 "EXPLAIN (FORMAT JSON, COSTS 1) SELECT 1"])
def test_explain_costs_on_is_refused_in_the_shared_strategy(sql: str) -> None:
    decision = decide(SHARED, sql)
    assert isinstance(decision, Deny) and decision.rule == "explain_costs" and decision.sqlstate == "42501"
    assert isinstance(decide(SCHEMA, sql), Allow)


@pytest.mark.parametrize(("sql", "expected"), [
    ("EXPLAIN SELECT 1", "EXPLAIN (COSTS OFF) SELECT 1"),
    ("explain verbose SELECT 1", "explain (verbose, COSTS OFF) SELECT 1"),
    ("EXPLAIN (FORMAT JSON, VERBOSE) SELECT 1", "EXPLAIN (FORMAT JSON, VERBOSE, COSTS OFF) SELECT 1"),
    ("EXPLAIN (COSTS OFF) SELECT 1", None),
])
def test_explain_gets_costs_off_in_the_shared_strategy(sql: str, expected: str | None) -> None:
    decision = decide(SHARED, sql)
    if expected is None:
        assert isinstance(decision, Allow)
    else:
        assert isinstance(decision, Rewrite) and decision.sql == expected


@pytest.mark.parametrize("name", ["pg_current_snapshot", "txid_current", "pg_current_xact_id", "mxid_age",
                                  "pg_snapshot_xmin", "pg_xact_commit_timestamp", "txid_status"])
def test_cluster_activity_readers_are_refused_everywhere(name: str) -> None:
    for policy in (SHARED, SCHEMA, DATABASE):
        decision = decide(policy, f"SELECT {name}(NULL)")
        assert isinstance(decision, Deny) and decision.rule == "cluster_activity", (name, policy.strategy)


def test_template_lookup_by_name() -> None:
    for policy in (SHARED, SCHEMA, DATABASE_HIDING):
        for template in (guards.carrier(policy, "class", guards.PARSE, "regclass"),
                         guards.carrier(policy, "role", guards.EXACT, "oid", param=True),
                         guards.array_form(policy, "type", "regtype"), guards.array_cast(policy, "proc", "regproc"),
                         guards.userbyid(policy), guards.vectortypes(policy)):
            assert guards.template_named(policy, template.ident) == template
            assert guards.ident_of(template.tree) == template.ident
    assert guards.template_named(SHARED, "pgt_g_c__nope__oid__oid") is None
    assert guards.template_named(SHARED, "pgt_g_x") is None


# -- column replacements only where the statement can read them ---------------------------------------------------


@pytest.mark.parametrize(("sql", "full"), [
    ("SELECT relname FROM pg_class WHERE relkind = 'r'", False),
    ("SELECT c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace", False),
    ("SELECT relname, reltuples FROM pg_class", True),
    ("SELECT * FROM pg_class", True),
    ("SELECT c.* FROM pg_class c", True),
    ("SELECT c FROM pg_class c", True),
    ("SELECT row_to_json(c) FROM pg_class c", True),
    ("SELECT relname FROM pg_class NATURAL JOIN (SELECT 1 AS x) s", True),
    ("SELECT a FROM pg_class AS c (a, b, d)", True),
    ("SELECT x.relacl FROM (SELECT c.relname, c.relacl FROM pg_class c) x", True),
    ("SELECT relname FROM pg_class JOIN (SELECT NULL::aclitem[] AS relacl) s USING (relacl)", True),
    ("TABLE pg_class", True),
    ("SELECT * FROM (SELECT relname FROM pg_class) s", False),
    ("WITH t AS (SELECT relname FROM pg_class) SELECT DISTINCT *, 1 FROM t", False),
    ("SELECT (c).relname FROM pg_class c", True),
])
def test_catalog_values_are_replaced_when_the_statement_can_read_them(sql: str, full: bool) -> None:
    decision = decide(SHARED, sql)
    assert isinstance(decision, Rewrite), decision
    assert ("pgt_scrub" in decision.sql) == full, decision.sql
    assert ("aclexplode" in decision.sql) == full, decision.sql


def test_verifier_refuses_a_plain_catalog_filter_where_values_must_be_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.policy.catalog import Filter

    monkeypatch.setattr(Filter, "needed_for", lambda self, usage, rv: self.lean())
    assert isinstance(decide(SHARED, "SELECT relname FROM pg_class"), Rewrite)
    for sql in ("SELECT relname, reltuples FROM pg_class", "SELECT * FROM pg_class", "SELECT c FROM pg_class c"):
        decision = decide(SHARED, sql)
        assert isinstance(decision, Deny) and decision.rule == "rewrite_unverified", (sql, decision)


def test_to_regtypemod_of_a_value_is_refused_where_schemas_are_hidden() -> None:
    for policy in (SHARED, SCHEMA, DATABASE_HIDING):
        decision = decide(policy, "SELECT to_regtypemod($1)")
        assert isinstance(decision, Deny) and decision.rule == "unchecked_object_name", decision
        assert not isinstance(decide(policy, "SELECT to_regtypemod('varchar(10)')"), Deny)
    assert not isinstance(decide(DATABASE, "SELECT to_regtypemod($1)"), Deny)


def test_a_literal_name_given_to_a_naming_function_is_checked_in_the_schema_strategy() -> None:
    """pg_input_is_valid('x', 'tenant_globex.t') reports 'permission denied' for another tenant's schema, unlike a
    missing one: such literals are decided like a cast's."""
    for sql in (
        "SELECT pg_input_is_valid('x', 'tenant_globex.mood')",
        "SELECT has_table_privilege('tenant_globex.orders', 'SELECT')",
        "SELECT pg_relation_size('tenant_globex.orders')",
    ):
        decision = decide(SCHEMA, sql)
        assert isinstance(decision, Deny) and decision.rule == "foreign_schema", (sql, decision)
    for sql in ("SELECT pg_input_is_valid('x', 'int4')", "SELECT pg_relation_size('tenant_acme.orders')"):
        assert not isinstance(decide(SCHEMA, sql), Deny), sql


def test_a_naming_function_of_an_aggregate_uses_the_array_form() -> None:
    for policy in (SHARED, SCHEMA):
        decision = decide(policy, "SELECT format_type(max(atttypid), NULL) FROM pg_attribute")
        assert isinstance(decision, Rewrite) and "pg_catalog.array_position(" in decision.sql, decision


@pytest.mark.parametrize(
    ("text", "elements"),
    [
        ("{a,b}", ["a", "b"]),
        (' { a.b , "c d" ,NULL, "NULL"} ', ["a.b", "c d", None, "NULL"]),
        ('{"a\\"b.c"}', ['a"b.c']),
        ("{}", []),
        ("{{a},{b}}", None),  # more than one dimension: read at run time
        ("[1:2]={a,b}", None),  # bounds: ditto
        ('{a"b}', None),
        ("{a,}", None),
        ("{a\\,b}", None),
    ],
)
def test_array_literal_elements_as_array_in_reads_them(text: str, elements: list[str | None] | None) -> None:
    assert guards.array_elements(text) == elements


@pytest.mark.parametrize(
    ("policy_name", "text", "checked"),
    [
        ("shared", "{orders,pg_catalog.pg_class,public.events,NULL}", True),
        ("shared", "{orders,tenant_globex.orders}", False),  # another schema: read at run time
        ("shared", "{orders,16385}", False),  # an OID: visibility checked at run time
        ("shared", "{pg_temp_3.x}", False),  # another session's temporary schema
        ("schema", "{orders,tenant_acme.orders,ref.rates}", True),
        ("schema", "{orders,tenant_globex.orders}", False),  # not refused when decided: guarded
        ("schema", "{{orders}}", False),
    ],
)
def test_array_literal_names_checked_when_decided(policy_name: str, text: str, checked: bool) -> None:
    assert guards.literal_checked(POLICIES[policy_name], "class", guards.PARSE, text) is checked


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ARRAY[NULL::regclass] @> '{tenant_globex.orders}'",
        "SELECT NULLIF(NULL::regclass[], '{tenant_globex.orders}')",
        "SELECT CASE NULL::regclass[] WHEN '{tenant_globex.orders}' THEN 1 END",
        "SELECT ROW(NULL::regclass[], 1) = ROW('{tenant_globex.orders}', 1)",
        "SELECT NULL::regclass[] BETWEEN '{tenant_globex.orders}' AND '{pg_class}'",
        "SELECT width_bucket(NULL::regclass, '{tenant_globex.orders}')",
        "SELECT array_position('{tenant_globex.orders}', NULL::regclass)",
        "SELECT ARRAY[NULL::regclass] = $1",
        "SELECT to_tsvector('tenant_globex.cfg', 'a')",
        "SELECT ts_headline('tenant_globex.cfg', 'a', to_tsquery('a'))",
        "SELECT jsonb_to_tsvector($1, '{}', '[\"all\"]')",
        "SELECT to_tsvector(16385, 'a')",
    ],
)
def test_names_read_by_an_input_function_are_guarded(sql: str) -> None:
    """redteam-guards-2 G6: each such literal or parameter goes through a guard (the verifier accepts nothing else)."""
    decision = decide(POLICIES["shared_hiding"], sql)
    assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision
    assert "pgt_g_" in decision.sql


def test_a_scalar_beside_a_reg_value_is_compared_as_an_oid() -> None:
    """Only an array of a reg* type makes a comparison read names: a scalar one resolves to oid = oid (oidin)."""
    for sql in ("SELECT NULL::regclass = 'x.y'", "SELECT NULL::regclass IS DISTINCT FROM 'x.y'",
                "SELECT CASE NULL::regclass WHEN 'x.y' THEN 1 END"):
        assert isinstance(decide(POLICIES["shared_hiding"], sql), Allow), sql


def test_ts_headline_guards_its_first_argument_only_where_it_is_a_configuration() -> None:
    policy = POLICIES["shared_hiding"]
    assert isinstance(decide(policy, "SELECT ts_headline('a b', to_tsquery($2), $3)"), Allow)  # a document
    assert isinstance(decide(policy, "SELECT ts_headline($1, $2, to_tsquery($3), $4)"), Rewrite)  # a configuration


def test_ts_headline_with_an_untyped_first_parameter_is_refused() -> None:
    """ts_headline($1, body, query): PostgreSQL resolves $1 as a configuration (its value read by regconfigin) or a
    document by the other arguments' types (self-red-team of G6): the client writes which."""
    policy = POLICIES["shared_hiding"]
    denied = decide(policy, "SELECT ts_headline($1, body, q) FROM docs")
    assert isinstance(denied, Deny) and denied.rule == "rewrite_unsupported", denied
    assert isinstance(decide(policy, "SELECT ts_headline($1::text, to_tsquery($2), $3)"), Allow)
    assert isinstance(decide(policy, "SELECT ts_headline($1::regconfig, 'a', to_tsquery($2))"), Rewrite)


@pytest.mark.parametrize(
    ("policy_name", "sql", "outcome"),
    [
        ("shared_hiding", "SET default_text_search_config = 'pg_catalog.english'", "sent"),
        ("shared_hiding", "SET default_text_search_config TO english", "sent"),
        ("shared_hiding", "SET LOCAL default_text_search_config = 'public.mine'", "sent"),  # on the search_path
        # red team 9a3 J5, 9a5: a hidden schema and a missing one are answered alike by the proxy (22023 at run)
        ("shared_hiding", "SET default_text_search_config = 'tenant_globex.cfg'", "missing"),
        ("shared_hiding", "SET default_text_search_config = ' TENANT_GLOBEX . cfg'", "missing"),
        ("shared_hiding", "SET default_text_search_config = E'\"tenant_globex\".cfg'", "missing"),
        ("shared_hiding", "SET default_text_search_config = $$tenant_globex.cfg$$", "missing"),
        ("shared_hiding", "SET default_text_search_config = 'nosuch.cfg'", "missing"),
        # red team 9a4 K1: the value as a quoted identifier; K2: three names, the first the database's
        ("shared_hiding", 'SET default_text_search_config TO "tenant_globex.cfg"', "missing"),
        ("shared_hiding", 'SET LOCAL default_text_search_config = U&"tenant\\005fglobex.cfg"', "missing"),
        ("shared_hiding", 'SET default_text_search_config TO "nosuch.cfg"', "missing"),
        ("shared_hiding", "SET default_text_search_config = 'saas.tenant_globex.cfg'", "missing"),
        ("shared_hiding", "SET default_text_search_config = 'SAAS . \"tenant_globex\".cfg'", "missing"),
        ("shared_hiding", "SELECT set_config('default_text_search_config', 'saas.tenant_globex.cfg', false)",
         "missing"),
        ("shared_hiding", "SET default_text_search_config = 'saas.nosuch.cfg'", "missing"),
        ("database_hiding", 'SET default_text_search_config TO "tenant_globex.cfg"', "missing"),
        ("database_hiding", "SET default_text_search_config = 'saas.tenant_globex.cfg'", "missing"),
        ("shared_hiding", "SELECT set_config('default_text_search_config', 'tenant_globex.cfg', false)", "missing"),
        ("shared_hiding", "SELECT set_config('default_text_search_config', $1, false)", "refused"),
        ("shared_hiding", "SET default_text_search_config = 'pg_temp_3.cfg'", "refused"),  # existing or not
        ("shared_hiding", "SET default_text_search_config = 'pg_toast.cfg'", "refused"),
        ("schema", "SET default_text_search_config = 'ref.cfg'", "sent"),
        ("schema", "SET default_text_search_config = 'tenant_globex.cfg'", "refused"),
        ("schema", "SET default_text_search_config = 'nosuch.cfg'", "refused"),
        ("database", "SET default_text_search_config = 'anywhere.cfg'", "sent"),
        ("database_hiding", "SET default_text_search_config = 'tenant_globex.cfg'", "missing"),
        ("database_hiding", "SET default_text_search_config = 'nosuch.cfg'", "missing"),
        # red team 9a5 F4, F10: escapes in the value or in the setting's name (decoded as PostgreSQL reads them)
        ("shared_hiding", "SET default_text_search_config = E'\\x74enant_globex.cfg'", "missing"),
        ("shared_hiding", "SET default_text_search_config = E'\\164enant_globex.cfg'", "missing"),
        ("shared_hiding", 'SET U&"default\\005ftext_search_config" = \'tenant_globex.cfg\'', "missing"),
        ("shared_hiding", "SELECT set_config(E'default\\x5ftext_search_config', 'tenant_globex.cfg', false)",
         "missing"),
        ("database_hiding", "SELECT set_config(U&'default_text_search_confi\\0067', 'tenant_globex.cfg', true)",
         "missing"),
        # red team 9a5 F1, F7, F8, F9, F14: wherever the call is, stored or evaluated later
        ("shared_hiding", "PREPARE z AS SELECT set_config('default_text_search_config', 'tenant_globex.cfg', false)",
         "missing"),
        ("shared_hiding", "DECLARE c CURSOR FOR SELECT set_config('default_text_search_config', 'nosuch.cfg', false)",
         "missing"),
        ("shared_hiding", "CREATE TEMP VIEW v AS SELECT set_config('default_text_search_config', 'tenant_globex.cfg', "
         "false)", "missing"),
        ("database_hiding", "CREATE TEMP TABLE d (a text DEFAULT set_config('default_text_search_config', "
         "'tenant_globex.cfg', false))", "missing"),
        ("shared_hiding", "CREATE TEMP TABLE c (a text CHECK (set_config('default_text_search_config', "
         "'tenant_globex.cfg', false) IS NULL))", "missing"),
        ("shared_hiding", "EXPLAIN VERBOSE SELECT set_config('default_text_search_config', 'tenant_globex.cfg', false)",
         "missing"),
        ("database_hiding", "COPY pg_temp.t FROM STDIN WHERE set_config('default_text_search_config', "
         "'tenant_globex.cfg', false) IS NULL", "missing"),
        # a cast that may change the text: the value checked would not be the one the server gets
        ("shared_hiding", "SELECT set_config('default_text_search_config', "
         "'tenant_globex.cfg.public.cfg'::varchar(17), false)", "refused"),
        ("shared_hiding", "SELECT set_config('default_text_search_config', 'public.cfg'::text, false)", "sent"),
    ],
)
def test_text_search_configuration_setting_names_usable_schemas(policy_name: str, sql: str, outcome: str) -> None:
    """default_text_search_config is looked up when set: PostgreSQL answers "permission denied for schema" for a
    schema the role may not use, "invalid value" for a missing one (self-red-team of G6). Where schemas are hidden,
    a hidden one and a missing one are answered by the proxy alike, with PostgreSQL's answer for a missing one, when
    the statement runs (never sent: nothing stores, prints or evaluates the value later; red team 9a5); in the schema
    strategy a qualified value must name a schema the tenant may use by its text, whether it exists or not."""
    decision = decide(POLICIES[policy_name], sql)
    if outcome == "sent":
        assert isinstance(decision, Allow) or (isinstance(decision, Rewrite) and not decision.names), decision
    elif outcome == "missing":
        assert isinstance(decision, Deny) and decision.rule == "foreign_schema" and decision.at_run, decision
        assert decision.sqlstate == "22023" and decision.message.startswith(
            'invalid value for parameter "default_text_search_config": "'), decision
    else:
        assert isinstance(decision, Deny) and decision.rule == "foreign_schema" and decision.sqlstate == "42501"


@pytest.mark.parametrize("schema", ["tenant_globex", "nosuch"])
def test_a_schema_tenants_text_search_configuration_stays_refused_with_schemas_hidden(schema: str) -> None:
    """The schema strategy answers every schema but the tenant's itself, hidden or missing (the hidden ones are not
    renamed there): a schema policy with hidden schemas still refuses both (a hidden one reached PostgreSQL, which
    answered "permission denied for schema")."""
    policy = dataclasses.replace(POLICIES["schema"], hidden_schemas=frozenset({"tenant_globex"}))
    decision = decide(policy, f"SET default_text_search_config = '{schema}.cfg'")
    assert isinstance(decision, Deny) and decision.rule == "foreign_schema", decision


@pytest.mark.parametrize("policy_name", ["shared", "schema"])
def test_a_statement_needing_more_than_max_guards_is_refused_before_any_is_built(policy_name: str) -> None:
    """Red team 7 F5/F8: hundreds of `N::regclass` items took seconds to guard and verify, on the event loop or a
    decision worker every tenant shares. Up to MAX_GUARDS are guarded; one more is refused (54001)."""
    items = [f"(SELECT {16000 + i}::regclass) s{i}" for i in range(guarding_module.MAX_GUARDS + 1)]
    decision = decide(POLICIES[policy_name], "SELECT 1 FROM " + ", ".join(items[:-1]))
    assert isinstance(decision, Rewrite) and decision.sql.count("pgt_g_") >= guarding_module.MAX_GUARDS, decision
    decision = decide(POLICIES[policy_name], "SELECT 1 FROM " + ", ".join(items))
    assert isinstance(decision, Deny) and decision.rule == "too_many_guards", decision
    assert decision.sqlstate == "54001" and str(guarding_module.MAX_GUARDS) in decision.message


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("globex.english", ["globex", "english"]),
        (" GLOBEX . English ", ["globex", "english"]),
        ('"GloBex"."a""b"', ["GloBex", 'a"b']),
        ("saas.globex.english", ["saas", "globex", "english"]),
        ("glob\u00c9x.english", ["glob\u00c9x", "english"]),  # only ASCII letters are downcased (UTF8)
        ("glo+bex.english", ["glo+bex", "english"]),  # an unquoted name runs to a dot or a space
        ("globex\u00a0.english", ["globex\u00a0", "english"]),  # a no-break space is no scanner space: in the name
        ('"".english', ["", "english"]),
        ("x" * 70 + ".english", ["x" * 63, "english"]),  # truncated to 63 bytes
        ("globex.", None),
        (".english", None),
        ('"globex.english', None),
        ('"globex"x.english', None),
        ("globex english", None),
        ("   ", None),
    ],
)
def test_a_settings_qualified_name_is_split_as_postgresql_splits_it(value: str, names: list[str] | None) -> None:
    """stringToQualifiedNameList's reading of a default_text_search_config value (red team 9a5): the schema the proxy
    answers for is the one PostgreSQL would look up."""
    assert settings.qualified_name(value) == names


@pytest.mark.parametrize("sql", ["SELECT nextval($1)", "SELECT nextval(16385)", "SELECT currval(concat('s', '')), "
                                 "nextval(concat('public.', 'zz'))"])
def test_a_writers_nextval_of_a_computed_name_gets_a_guard(sql: str) -> None:
    """A role with allow_writes may advance sequences: an OID or computed name still gets its guard."""
    decision = decide(POLICIES["shared_rw"], sql)
    assert isinstance(decision, Rewrite) and "object_guard" in decision.rules, decision
