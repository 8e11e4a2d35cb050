"""The decision on code that runs with its owner's rights (proxy/definers.py), without a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.access import PolicyFact
from proxy.definers import (
    DblinkFunction,
    Leakproof,
    Owner,
    RelRead,
    Routine,
    View,
    judge,
    judge_dblink,
    judge_leakproof,
    unbound,
)

ORDERS = ("public", "orders")
APP = Owner("app")
SUPER = Owner("postgres", superuser=True)
OWN = PolicyFact("pgtenant_isolation", True, "*", "(tenant_id = current_setting('pgtenant.tenant_id'::text, true))")
PINNED = frozenset({"pgtenant.tenant_id"})


def _rel(**keys: object) -> RelRead:
    return RelRead("public", "orders", **keys)  # type: ignore[arg-type]


def test_unbound_owners() -> None:
    assert unbound(SUPER, _rel(readable=False)) == ("error", "a superuser: row-level security and grants do not "
                                                    "apply to it")
    assert unbound(APP, _rel(readable=False)) is None  # no SELECT: it reads nothing
    assert unbound(APP, _rel(owns=True, force=True)) is None  # forced: no policy lets the owner read
    assert unbound(APP, _rel(owns=True, force=False)) == (
        "error", "public.orders: owner; row-level security not forced")
    assert unbound(APP, _rel(rls=False)) == ("error", "public.orders: no row-level security")
    assert unbound(Owner("app", bypassrls=True), _rel()) == ("error", "public.orders: BYPASSRLS")
    assert unbound(APP, _rel(kind="v"))[0] == "error"  # type: ignore[index]  # a scoped view: no RLS
    # a policy keyed on the setting the proxy pins holds it; one on another setting does not; a helper is unproven
    assert unbound(APP, _rel(policies=(OWN,)), PINNED) is None
    assert unbound(APP, _rel(policies=(OWN,)))[0] == "error"  # type: ignore[index]  # a database tenant: no pin
    other = PolicyFact("p", True, "r", "(tenant_id = current_setting('app.tenant'::text))")
    assert unbound(APP, _rel(policies=(OWN, other)), PINNED)[0] == "error"  # type: ignore[index]
    helper = PolicyFact("h", True, "r", "(tenant_id = cur_tenant())")
    assert unbound(APP, _rel(policies=(helper,)), PINNED)[0] == "warning"  # type: ignore[index]
    assert unbound(APP, _rel(policies=(PolicyFact("t", True, "r", "true"),)), PINNED)[0] == "error"  # type: ignore[index]


def _judge(routines: list[Routine], views: list[View], rel: RelRead | None = None,
           owner: str = "postgres") -> tuple[list[str], list[str]]:
    found = judge("backend", routines, views, {owner: {ORDERS: rel or _rel()}}, [ORDERS], PINNED)
    return found.errors, found.warnings


def test_functions() -> None:
    f = Routine(1, "public.f()", "FUNCTION", SUPER, public=True)
    errors, _ = _judge([f], [])
    assert len(errors) == 1 and "function public.f() runs with its owner's rights" in errors[0]
    assert "REVOKE EXECUTE ON FUNCTION public.f() FROM PUBLIC" in errors[0]
    assert "ALTER FUNCTION public.f() SECURITY INVOKER" in errors[0]
    assert _judge([Routine(1, "public.f()", "FUNCTION", SUPER, usable=False)], []) == ([], [])
    # an owner bound by forced RLS: fine
    assert _judge([Routine(1, "public.f()", "FUNCTION", APP)], [], _rel(owns=True), "app") == ([], [])
    # BEGIN ATOMIC: what it reads decides
    atomic_notes = Routine(1, "public.n()", "FUNCTION", SUPER, atomic=True, reads=(("public", "notes", "r"),))
    assert _judge([atomic_notes], []) == ([], [])
    atomic_orders = Routine(2, "public.o()", "FUNCTION", SUPER, atomic=True, reads=(("public", "orders", "r"),))
    assert len(_judge([atomic_orders], [])[0]) == 1
    calls = Routine(3, "public.c()", "FUNCTION", SUPER, atomic=True, calls=(9,))  # calls a user function: anything
    assert len(_judge([calls], [])[0]) == 1
    over_view = Routine(4, "public.w()", "FUNCTION", SUPER, atomic=True, reads=(("public", "v", "v"),))
    assert len(_judge([over_view], [])[0]) == 1
    # an extension's member: a warning
    ext = Routine(5, "public.e()", "FUNCTION", SUPER, extension="myext")
    errors, warnings = _judge([ext], [])
    assert errors == [] and len(warnings) == 1 and "extension 'myext'" in warnings[0]
    procedure = Routine(6, "public.p()", "PROCEDURE", SUPER)
    assert "ALTER PROCEDURE public.p() SECURITY INVOKER" in _judge([procedure], [])[0][0]


def test_views() -> None:
    plain = View(10, "public", "v", "v", SUPER, public=True, reads=(("public", "orders", "r"),))
    errors, _ = _judge([], [plain])
    assert len(errors) == 1 and "ALTER VIEW public.v SET (security_invoker = true)" in errors[0]
    assert "REVOKE SELECT ON public.v FROM PUBLIC" in errors[0]
    assert _judge([], [View(10, "public", "v", "v", SUPER, reads=(("public", "notes", "r"),))]) == ([], [])
    assert _judge([], [View(10, "public", "v", "v", SUPER, usable=False, reads=plain.reads)]) == ([], [])
    # a scoped view itself: the proxy's rewrite (or the database tenant's check) covers it
    scoped = View(10, "public", "orders", "v", SUPER, reads=(("public", "base", "r"),))
    assert judge("backend", [], [scoped], {}, [ORDERS]).errors == []
    # over a function that reads every tenant's rows: only one the backend role may run counts
    fn = Routine(1, "public.f()", "FUNCTION", SUPER)
    over_fn = View(11, "public", "fv", "v", SUPER, calls=(1,))
    errors, _ = _judge([fn], [over_fn])
    assert len(errors) == 2 and "it calls public.f()" in errors[1]
    assert _judge([Routine(1, "public.f()", "FUNCTION", SUPER, usable=False)], [over_fn]) == ([], [])
    # over a view that leaks (not usable itself): its owner reads it
    inner = View(12, "public", "inner", "v", SUPER, usable=False, reads=(("public", "orders", "r"),))
    outer = View(13, "public", "outer", "v", APP, reads=(("public", "inner", "v"),))
    errors, _ = _judge([], [outer, inner])
    assert len(errors) == 1 and "view public.outer" in errors[0] and "reads public.inner" in errors[0]
    mat = View(14, "public", "m", "m", SUPER, reads=(("public", "orders", "r"),))
    errors, _ = _judge([], [mat])
    assert "materialized view public.m" in errors[0] and "security_invoker = true" not in errors[0]


def test_a_materialized_view_read_anything_its_query_reached_as_its_owner() -> None:
    """Review 20 F0: a materialized view over a security_invoker view (no row of `_VIEWS`) or over a plain function
    passed: its query ran as its owner at REFRESH, through every view and function under it."""
    over_view = View(15, "public", "mv", "m", SUPER, reads=(("public", "inv_orders", "v"),))
    errors, _ = _judge([], [over_view])
    assert len(errors) == 1 and "materialized view public.mv" in errors[0], errors
    over_function = View(16, "public", "mf", "m", SUPER, calls=(99,))  # an invoker function: no Routine row
    errors, _ = _judge([], [over_function])
    assert len(errors) == 1 and "materialized view public.mf" in errors[0], errors
    # reference data only, no function: as before
    assert _judge([], [View(17, "public", "mc", "m", SUPER, reads=(("public", "countries", "r"),))]) == ([], [])
    # a plain view over a function the reader runs as itself: as before
    assert _judge([], [View(18, "public", "vf", "v", SUPER, calls=(99,))]) == ([], [])


def test_code_over_the_statistics_catalogs_reads_every_table() -> None:
    """Red team 20b F3: a definer view (or a BEGIN ATOMIC SECURITY DEFINER function) over pg_statistic, matching the
    table by name (pg_depend records only the catalogs), passed: a shared tenant read the most common values and the
    histogram of every tenant's rows."""
    stats = (("pg_catalog", "pg_statistic", "r"), ("pg_catalog", "pg_class", "r"))
    errors, _ = _judge([], [View(19, "public", "stat", "v", SUPER, reads=stats)])
    assert len(errors) == 1 and "view public.stat" in errors[0], errors
    fn = Routine(2, "public.mcv()", "FUNCTION", SUPER, atomic=True, reads=stats)
    errors, _ = _judge([fn], [])
    assert len(errors) == 1 and "public.mcv()" in errors[0], errors
    # other catalogs alone: as before
    assert _judge([], [View(20, "public", "cls", "v", SUPER, reads=(("pg_catalog", "pg_class", "r"),))]) == ([], [])


def test_an_object_the_operator_vouches_for_is_a_warning() -> None:
    """[preflight] trusted_definers (review 20 F11: SECURITY DEFINER helpers an app's RLS policies call, as Supabase
    apps write them, refused the start with no narrower way out than enforce = false): reported, not counted."""
    fn = Routine(1, "auth.is_member(org uuid)", "FUNCTION", SUPER, public=True, schema="auth", name="is_member",
                 args=("org uuid", "uuid"))
    view = View(21, "public", "v", "v", SUPER, public=True, reads=(("public", "orders", "r"),))
    found = judge("backend", [fn], [view], {"postgres": {ORDERS: _rel()}}, [ORDERS], PINNED,
                  trusted=frozenset({"auth.is_member", "public.v"}))
    assert found.errors == [] and len(found.warnings) == 2, found
    assert all("vouched for by [preflight] trusted_definers" in w for w in found.warnings)
    found = judge("backend", [fn], [view], {"postgres": {ORDERS: _rel()}}, [ORDERS], PINNED,
                  trusted=frozenset({"public.v"}))
    assert len(found.errors) == 1 and "auth.is_member(org uuid)" in found.errors[0]


def test_trusted_definers_match_as_postgresql_resolves_the_name() -> None:
    """Red team 21d F6: the entry "public.is_member" vouched for every object whose lower-cased schema.name was
    that: another overload, a function "IS_MEMBER" and a view "Is_Member". Now: exactly that name (every overload
    of it, or the one its argument list names); a view only by an entry without an argument list."""
    def fn(oid: int, name: str, args: tuple[str, str]) -> Routine:
        return Routine(oid, f"public.{name}({args[0]})", "FUNCTION", SUPER, public=True, schema="public", name=name,
                       args=args)
    one, other, upper = fn(1, "is_member", ("org text", "text")), fn(2, "is_member", ("n integer", "integer")), \
        fn(3, "IS_MEMBER", ("n integer", "integer"))
    view = View(21, "public", "Is_Member", "v", SUPER, public=True, reads=(("public", "orders", "r"),))

    def errors(*trusted: str) -> list[str]:
        found = judge("backend", [one, other, upper], [view], {"postgres": {ORDERS: _rel()}}, [ORDERS], PINNED,
                      trusted=frozenset(trusted))
        return sorted(e.split(" ")[1] for e in found.errors)

    everything = ["public.IS_MEMBER(n", "public.Is_Member", "public.is_member(n", "public.is_member(org"]
    assert errors() == everything
    assert errors("public.is_member") == ["public.IS_MEMBER(n", "public.Is_Member"]
    assert errors("public.is_member(text)") == ["public.IS_MEMBER(n", "public.Is_Member", "public.is_member(n"]
    assert errors('public."IS_MEMBER"', 'public."Is_Member"') == ["public.is_member(n", "public.is_member(org"]
    assert errors('public."Is_Member"(text)') == everything  # an argument list names a function only


def test_schema_usage_counts_only_where_a_name_is_looked_up() -> None:
    """Red team 21d F4: an owner without USAGE on the table's schema still reads it through a view's stored query,
    a REFRESH or a BEGIN ATOMIC body (PostgreSQL checks USAGE at name lookup only); a non-atomic body looks it up."""
    bi = Owner("bi")
    no_usage = _rel(rls=False, usage=False)
    view = View(20, "rpt", "o", "v", bi, public=True, reads=(("public", "orders", "r"),))
    mview = View(21, "rpt", "m", "m", bi, public=True, reads=(("public", "orders", "r"),))
    atomic = Routine(1, "rpt.t()", "FUNCTION", bi, public=True, atomic=True, reads=(("public", "orders", "r"),))
    plain = Routine(2, "rpt.p()", "FUNCTION", bi, public=True)
    errors, _ = _judge([atomic, plain], [view, mview], no_usage, "bi")
    assert len(errors) == 3, errors
    assert not any("rpt.p()" in e for e in errors)
    assert unbound(bi, no_usage) == ("error", "public.orders: no row-level security")
    assert unbound(bi, no_usage, lookup=True) is None
    assert len(_judge([plain], [], _rel(rls=False), "bi")[0]) == 1  # with USAGE: the plain body reads it


def test_a_leakproof_function_the_backend_role_may_run_is_an_error() -> None:
    """Red team 21d F9: PostgreSQL runs a LEAKPROOF function ahead of row security's quals."""
    peek = Leakproof("public", "peek", ("text", "text"))
    found = judge_leakproof("backend", [peek])
    assert len(found.errors) == 1 and found.warnings == []
    assert "function public.peek(text) is marked LEAKPROOF" in found.errors[0]
    assert "Fix: ALTER FUNCTION public.peek(text) NOT LEAKPROOF" in found.errors[0]
    assert "REVOKE EXECUTE ON FUNCTION public.peek(text) FROM PUBLIC" in found.errors[0]
    found = judge_leakproof("backend", [peek], ["public.peek(text)"])
    assert found.errors == [] and "vouched for by [preflight] trusted_definers" in found.warnings[0]
    found = judge_leakproof("backend", [Leakproof("public", "eq", ("a x, b x", "x, x"), "someext")])
    assert found.errors == [] and "a member of extension 'someext'" in found.warnings[0]


def test_dblink_a_backend_role_or_a_definers_owner_may_execute_is_an_error() -> None:
    """Red team 21w W7: dblink's functions run SQL with stored credentials; code whose body pgtenant cannot read
    may call them. One error per backend role, its fix the REVOKE of every member it may execute."""
    fns = [DblinkFunction("public.dblink(text, text)"), DblinkFunction("public.dblink_connect_u(text)", False, False),
           DblinkFunction("public.dblink_exec(text)", False, True)]
    found = judge_dblink("backend", fns)
    assert len(found.errors) == 1 and found.warnings == []
    assert "the backend role 'backend' may execute the functions of extension dblink" in found.errors[0]
    assert ("Fix: REVOKE EXECUTE ON FUNCTION public.dblink(text, text) FROM PUBLIC; REVOKE EXECUTE ON FUNCTION "
            "public.dblink_exec(text) FROM backend") in found.errors[0]
    assert "dblink_connect_u" not in found.errors[0]
    assert judge_dblink("backend", [DblinkFunction("public.dblink(text)", False, False)]).errors == []
    # a SECURITY DEFINER routine whose owner may: any body but a BEGIN ATOMIC one calling nothing outside the system
    plain = Routine(1, "public.f()", "FUNCTION", APP, public=True)
    atomic = Routine(2, "public.a()", "FUNCTION", APP, public=True, atomic=True)
    calling = Routine(3, "public.c()", "FUNCTION", APP, public=True, atomic=True, calls=(9,))
    found = judge("backend", [plain, atomic, calling], [], {}, [ORDERS], PINNED, dblink_users=frozenset({"app"}))
    assert len(found.errors) == 2, found.errors
    assert "function public.f() runs with its owner's rights (SECURITY DEFINER) and its owner 'app' is not bound by " \
           "row security (it may execute the functions of extension dblink" in found.errors[0]
    assert "public.c()" in found.errors[1]
    assert judge("backend", [plain], [], {}, [ORDERS], PINNED).errors == []
    assert judge("backend", [plain], [], {}, [], dblink_users=frozenset({"app"})).errors != []  # alone: too


def test_an_owner_that_may_read_a_foreign_table_is_an_error_in_every_database() -> None:
    """Red team 22d R2: a body that is not BEGIN ATOMIC (or an atomic one calling another function) whose owner may
    read a foreign table not itself scoped reads with its user mapping's stored credentials: an error, with no scoped
    relation in the database too; an atomic body calling nothing is judged by what it reads."""
    plain = Routine(1, "public.f()", "FUNCTION", APP, public=True)
    atomic = Routine(2, "public.a()", "FUNCTION", APP, public=True, atomic=True)
    calling = Routine(3, "public.c()", "FUNCTION", APP, public=True, atomic=True, calls=(9,))
    users = {"app": "public.ft"}
    found = judge("backend", [plain, atomic, calling], [], {}, [ORDERS], PINNED, stored_users=users)
    assert len(found.errors) == 2, found.errors
    assert "its owner 'app' is not bound by row security (it may read public.ft, which reads with stored " \
           "credentials" in found.errors[0] and "REVOKE SELECT ON public.ft FROM app" in found.errors[0]
    assert "public.c()" in found.errors[1]
    assert judge("backend", [plain], [], {}, [ORDERS], PINNED).errors == []
    assert judge("backend", [plain], [], {}, [], stored_users=users).errors != []  # alone in its database: too


def test_reached_through_a_trigger_or_an_aggregate() -> None:
    """A trigger runs its function with no EXECUTE check, an aggregate its support functions with its owner's: the
    backend role needs no EXECUTE on the function itself."""
    trig = Routine(1, "public.t()", "FUNCTION", SUPER, usable=False, trigger_on="public.inbox")
    errors, _ = _judge([trig], [])
    assert len(errors) == 1 and "a trigger of public.inbox, which it may write" in errors[0]
    assert "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.inbox FROM backend" in errors[0]
    assert "GRANT EXECUTE" not in errors[0]
    agg = Routine(2, "public.sf(bigint,integer)", "FUNCTION", SUPER, usable=False, aggregate="public.agg(integer)")
    errors, _ = _judge([agg], [])
    assert len(errors) == 1 and "the aggregate public.agg(integer) calls it" in errors[0]


class _Conn:
    """A connection whose queries find nothing (the tenants below list their tables)."""

    def execute(self, *args: object) -> _Conn:
        return self

    def fetchall(self) -> list[tuple[str, str]]:
        return []


def test_tenants_alike_share_one_reading_per_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy import dbcheck, definers
    from proxy.config import parse_config

    raw = {"backends": {"main": {"host": "db", "port": 5432}}, "tenants": {
        f"t{i}": {"strategy": "shared", "database": "saas", "tenant_id": f"t{i}", "tables": ["public.orders"]}
        for i in range(3)}}
    (tmp_path / "s.toml").write_text("[users]\n")
    seen: list[object] = []
    monkeypatch.setattr(definers, "check", lambda *a, **k: seen.append(a) or definers.Found(errors=["boom"]))
    for _ in range(2):  # a reload: a new config reads again
        config = parse_config({"secrets_file": "s.toml", **raw}, base=tmp_path)
        for name in ("t0", "t1", "t2"):
            report = dbcheck.PreflightReport()
            tenant = config.tenants[name]
            dbcheck._check_definers(_Conn(), config, tenant, {("public", "orders"): "tenant_id"},  # type: ignore[arg-type]
                                    config.backend_for(tenant), report)
            assert report.errors == [f"tenants.{name}: boom"]
    assert len(seen) == 2


def test_stored_rows_and_stored_credentials_are_followed_at_any_depth() -> None:
    """Red team 21d F1, F2, F5, F7: what a materialized view's query reaches (through views of any kind, BEGIN ATOMIC
    bodies, functions) makes it an error whatever its owner; foreign tables and dblink read with stored credentials."""
    from proxy.definers import Graph, Node, judge_stored

    rels = [
        Node(1, "rpt.mv_direct", "m", reads=((10, "public", "orders", "r"),)),
        Node(2, "rpt.inv", "v", reads=((10, "public", "orders", "r"),)),  # an invoker view: not an error itself
        Node(3, "rpt.mv_deep", "m", reads=((2, "rpt", "inv", "v"),)),
        Node(4, "rpt.mv_plain_fn", "m", calls=(100,)),
        Node(5, "rpt.mv_atomic_ok", "m", calls=(101,), reads=((11, "public", "ref", "r"),)),
        Node(6, "rpt.mv_sql_text", "m", runs_sql=True),
        Node(7, "public.orders_mv", "m", reads=((10, "public", "orders", "r"),)),  # scoped itself: the proxy's
        Node(8, "rpt.ft", "f", schema="rpt", bare="ft"),
        Node(9, "rpt.dbl", "v", calls=(102,)),
        Node(12, "rpt.over_ft", "v", reads=((8, "rpt", "ft", "f"),)),
    ]
    fns = [Node(100, "rpt.plain()", "fn"), Node(101, "rpt.atomic()", "fn", atomic=True),
           Node(102, "public.dblink(text, text)", "fn", extension="dblink"),
           Node(103, "rpt.dbl_atomic()", "fn", atomic=True, calls=(102,))]
    g = Graph(rels, fns, [("public", "orders"), ("public", "orders_mv")])
    got = g.materialized()
    assert got == {1: "it reads public.orders, a tenant-scoped relation",
                   3: "it reads public.orders, a tenant-scoped relation (through rpt.inv)",
                   4: "it calls rpt.plain(), whose body may read any table (only a BEGIN ATOMIC body's reads are "
                      "known)",
                   6: "it calls a built-in that runs SQL text given to it (ts_stat, query_to_xml, …), whose "
                      "relations pg_depend does not record"}
    found = judge_stored("backend", g)
    assert [e.split(" reads ")[0] for e in found.errors] == [
        "view rpt.dbl", "foreign table rpt.ft", "view rpt.over_ft", "function rpt.dbl_atomic()"]
    assert found.warnings == []
    assert judge_stored("backend", g, frozenset({"rpt.ft"})).warnings[0].startswith("foreign table rpt.ft")


def test_a_view_over_a_scoped_relation_no_row_security_filters_is_refused() -> None:
    """Red team 21w W1: a view of any security (security_invoker too) over a tenant-scoped materialized view, view or
    foreign table (the proxy's rewrite filters it only where a statement names it) showed every tenant's rows; a
    scoped view itself, and a view over a scoped table (row security filters it), are not reported."""
    from proxy.definers import Graph, Node, judge_unfiltered

    rels = [
        Node(1, "public.mv_inv", "m", reads=((10, "public", "invoices", "r"),)),  # scoped (tenant column)
        Node(2, "public.v_scoped", "v", reads=((10, "public", "invoices", "r"),)),  # scoped
        Node(3, "public.ft_inv", "f"),  # scoped
        Node(4, "rpt.over_mv", "v", reads=((1, "public", "mv_inv", "m"),)),
        Node(5, "rpt.over_v", "v", reads=((2, "public", "v_scoped", "v"),)),
        Node(6, "rpt.over_ft", "v", reads=((3, "public", "ft_inv", "f"),)),
        Node(7, "rpt.deep", "v", reads=((4, "rpt", "over_mv", "v"),)),
        Node(8, "rpt.via_atomic", "v", calls=(100,)),
        Node(9, "rpt.over_table", "v", reads=((10, "public", "invoices", "r"),)),  # row security filters it
        Node(11, "rpt.not_mine", "v", usable=False, reads=((1, "public", "mv_inv", "m"),)),
        Node(12, "rpt.mv_over_mv", "m", reads=((1, "public", "mv_inv", "m"),)),  # reported as stored rows
        Node(13, "rpt.ext", "v", extension="x", reads=((1, "public", "mv_inv", "m"),)),
        Node(14, "rpt.Vouched", "v", schema="rpt", bare="Vouched", reads=((1, "public", "mv_inv", "m"),)),
    ]
    fns = [Node(100, "rpt.atomic()", "fn", atomic=True, reads=((1, "public", "mv_inv", "m"),))]
    scoped = [("public", "invoices"), ("public", "mv_inv"), ("public", "v_scoped"), ("public", "ft_inv")]
    g = Graph(rels, fns, scoped)
    found = judge_unfiltered("backend", g, ['rpt."Vouched"'], g.materialized())
    assert [e.split(" is not ")[0] for e in found.errors] == [
        "view rpt.deep", "view rpt.over_ft", "view rpt.over_mv", "view rpt.over_v", "view rpt.via_atomic"]
    assert ("(it reads public.mv_inv, a tenant-scoped materialized view no row security filters (through "
            "rpt.over_mv))") in found.errors[0]
    assert "Fix: add the tenant column to this view too" in found.errors[0]
    assert "REVOKE SELECT ON rpt.deep FROM backend" in found.errors[0]
    assert [w.split(" is not ")[0] for w in found.warnings] == ["view rpt.Vouched", "view rpt.ext"]
    assert 12 in g.materialized()
