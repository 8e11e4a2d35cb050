"""An unqualified information_schema view name on a search_path holding information_schema is filtered like the
qualified one (review 18 F2: `SET search_path = information_schema, public; SELECT … FROM routines` listed the
functions of schemas hidden from the tenant)."""

from __future__ import annotations

import pytest
from policy_corpus import POLICIES

from proxy.policy import Deny, Rewrite, decide
from proxy.policy.model import SET_PATH, Change

HIDING = ("schema", "shared_hiding", "database_hiding")


def _on_path(name: str, path: tuple[str, ...]):
    policy = POLICIES[name]
    return policy.with_context(policy.context.apply(Change(at=0, op=SET_PATH, path=path)))


@pytest.mark.parametrize("name", HIDING)
@pytest.mark.parametrize("view", ["routines", "tables", "schemata", "columns"])
def test_an_unqualified_view_name_behind_system_schemas_only_is_filtered(name: str, view: str) -> None:
    qualified = decide(_on_path(name, ("information_schema", "public")), f"SELECT * FROM information_schema.{view}")
    unqualified = decide(_on_path(name, ("information_schema", "public")), f"SELECT * FROM {view}")
    assert isinstance(qualified, Rewrite) and isinstance(unqualified, Rewrite)
    # the same filter around the view as written (only system schemas precede information_schema: it is the view)
    assert unqualified.sql.replace(f"FROM {view} WHERE", f"FROM information_schema.{view} WHERE") == qualified.sql
    in_catalog_first = decide(_on_path(name, ("pg_catalog", "information_schema")), f"SELECT * FROM {view}")
    assert isinstance(in_catalog_first, Rewrite) and "OFFSET 0" in in_catalog_first.sql


@pytest.mark.parametrize("name", HIDING)
def test_an_unqualified_view_name_behind_a_tenant_schema_must_be_qualified(name: str) -> None:
    """`public, information_schema`: `routines` is the tenant's own relation if public has one, else the view; the
    proxy cannot tell which PostgreSQL will pick, so it asks for the name qualified."""
    d = decide(_on_path(name, ("public", "information_schema")), "SELECT * FROM routines")
    assert isinstance(d, Deny) and d.rule == "rewrite_unsupported" and "information_schema.routines" in d.message


@pytest.mark.parametrize("name", HIDING)
def test_a_path_without_information_schema_leaves_the_name_alone(name: str) -> None:
    d = decide(_on_path(name, ("public",)), "SELECT * FROM routines")
    assert not isinstance(d, Deny) and "information_schema" not in getattr(d, "sql", "")


def _run(name: str, *texts: str):
    """Decide `texts` one after the other in one session, each in the context the ones before left (as the session
    follows it); the last one's decision."""
    policy = POLICIES[name]
    context = policy.context
    decision = None
    for text in texts:
        decision = decide(policy.with_context(context), text)
        assert not isinstance(decision, Deny) or text == texts[-1], (text, decision)
        for change in getattr(decision, "changes", ()):
            context = context.apply(change)
    return decision


@pytest.mark.parametrize("name", HIDING)
@pytest.mark.parametrize("run", ["EXECUTE r", "EXPLAIN EXECUTE r", "CREATE TEMP TABLE x AS EXECUTE r"])
def test_an_execute_of_a_statement_prepared_before_names_moved_is_refused(name: str, run: str) -> None:
    """Review 18 F1/F2: `r` was prepared over a temporary `routines`; once it is dropped and information_schema is on
    the path, PostgreSQL analyses `r` again and reads information_schema.routines, never filtered for it."""
    d = _run(name, "CREATE TEMP TABLE routines (routine_schema text, routine_name text)",
             "PREPARE r AS SELECT routine_schema, routine_name FROM routines", "DROP TABLE routines",
             "SET search_path = information_schema, public", run)
    assert isinstance(d, Deny) and (d.sqlstate, d.rule) == ("0A000", "prepared_elsewhere")


@pytest.mark.parametrize("name", HIDING)
def test_a_statement_prepared_again_after_the_change_runs(name: str) -> None:
    d = _run(name, "CREATE TEMP TABLE t (a int)", "PREPARE q AS SELECT a FROM t", "DROP TABLE t",
             "CREATE TEMP TABLE t (a int)", "DEALLOCATE q", "PREPARE q AS SELECT a FROM t", "EXECUTE q")
    assert not isinstance(d, Deny)
    assert not isinstance(_run(name, "PREPARE q AS SELECT 1", "EXECUTE q"), Deny)  # nothing moved: as before
