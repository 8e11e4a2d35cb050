"""`[preflight] trusted_definers` entries read as the server reads them: parse_qualified against parse_ident and
to_regprocedure of a real PostgreSQL, over a table of spellings (red team 21d F6, 21w W9)."""

from __future__ import annotations

import psycopg
import pytest

from proxy.pgqualname import parse_qualified
from tests.support.pgcluster import PgCluster

NAMES = [
    "public.is_member", "Public.Is_Member", '"public".is_member', 'public."Is_Member"', " public.is_member ",
    "public . is_member", "public\t.\nis_member", "\f\vpublic.is_member\r", '"a.b".c', 'a."b.c"', "public.ÄBC",
    'public."ÄBC"', "PUBLIC.\u0131S_MEMBER", "public.is_member\u00a0", "\u00a0public.is_member",
    "public.is\u200bmember", "public\u2003.is_member", "public.is_member\u3000", "public." + "x" * 70,
    'public."' + "é" * 40 + '"',
    "public." + "É" * 40, "public.is_member$1", 'public."a""b"', "public.a.b", "public.is_member -- x",
    "public.is_member;", "public.1abc", "public.$abc", "public._", "is_member", "public.", ".is_member",
    'public.""', '"public.is_member', "public . is_member . x", "public.is_member\u00a0x y",
]


def test_a_name_is_read_as_parse_ident_reads_it(pg: PgCluster) -> None:
    """parse_ident(x, true), cut to NAMEDATALEN as a name is (::name[]): two parts, or refused by both. (A vertical
    tab is a space to PostgreSQL 16+'s scanner, not to 15's, which refuses the name: parse_qualified reads it as
    16+ does, the same object, so a PG 15 server refuses an entry pgtenant reads.)"""
    assert pg.execute("SELECT current_setting('server_encoding')") == [("UTF8",)]
    old = int(pg.execute("SELECT current_setting('server_version_num')")[0][0]) < 160000
    for entry in NAMES:
        if old and "\v" in entry:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                pg.execute("SELECT parse_ident(%s, true)", (entry,))
            continue
        try:
            got = pg.execute("SELECT parse_ident(%s, true)::name[]", (entry,))[0][0]
        except psycopg.Error:
            got = None
        if got is None or len(got) != 2:
            with pytest.raises(ValueError):
                parse_qualified(entry)
                pytest.fail(f"{entry!r}: {got}")
            continue
        q = parse_qualified(entry)
        assert [q.schema, q.name] == got, (entry, q, got)


ARGS = ["(text)", "( text )", '("text")', '( "text" )', "(pg_catalog.text)", '("Text")', "(integer)", "(int4)",
        "(int)", '("integer")', '("int4")', '("char")', "(char)", "(character varying)", "(varchar)",
        "(character  varying)", "(text[])", '("text"[])', "(uuid, text)", '("uuid", "text")', "()", "(numeric)",
        '("numeric")', "(boolean)", '("boolean")', "(bool)"]


def test_an_argument_list_names_the_overload_to_regprocedure_names(pg: PgCluster) -> None:
    """An entry with an argument list matches a function iff PostgreSQL resolves that spelling to it; a spelling
    parse_qualified does not read as PostgreSQL does matches nothing (fail closed), never another overload."""
    db = pg.fresh_database("w9args")
    pg.execute("CREATE FUNCTION public.w9(a text) RETURNS int LANGUAGE sql AS 'SELECT 1'; "
               "CREATE FUNCTION public.w9(n integer) RETURNS int LANGUAGE sql AS 'SELECT 2'; "
               "CREATE FUNCTION public.w9(c \"char\") RETURNS int LANGUAGE sql AS 'SELECT 3'; "
               "CREATE FUNCTION public.w9(v character varying) RETURNS int LANGUAGE sql AS 'SELECT 4'; "
               "CREATE FUNCTION public.w9(t text[]) RETURNS int LANGUAGE sql AS 'SELECT 5'; "
               "CREATE FUNCTION public.w9(u uuid, t text) RETURNS int LANGUAGE sql AS 'SELECT 6'; "
               "CREATE FUNCTION public.w9() RETURNS int LANGUAGE sql AS 'SELECT 7'; "
               "CREATE FUNCTION public.w9(x numeric) RETURNS int LANGUAGE sql AS 'SELECT 8'; "
               "CREATE FUNCTION public.w9(b boolean) RETURNS int LANGUAGE sql AS 'SELECT 9'", dbname=db)
    overloads = pg.execute("SELECT p.oid::int8, pg_get_function_identity_arguments(p.oid), "
                           "oidvectortypes(p.proargtypes) FROM pg_proc p WHERE p.proname = 'w9'", dbname=db)
    exact = fail_closed = 0
    for args in ARGS:
        entry = "public.w9" + args
        try:  # (PG 15 raises for an unknown type, 16+ returns NULL)
            (oid,) = pg.execute("SELECT to_regprocedure(%s)::oid::int8", (entry,), dbname=db)[0]
        except psycopg.errors.UndefinedObject:
            oid = None
        q = parse_qualified(entry)
        mine = [o for o, ident, types in overloads if q.matches("public", "w9", (ident, types))]
        assert len(mine) <= 1, (entry, mine)
        if mine:
            assert mine == [oid], (entry, mine, oid)  # never another overload than PostgreSQL's
            exact += 1
        else:
            fail_closed += 1
    assert exact >= 12, (exact, fail_closed)
    for args in ("(text)", '("text")', '( "text" )', "(integer)", '("char")', "(character varying)", '("text"[])',
                 '("uuid", "text")', "()", '("numeric")', "(boolean)"):
        q = parse_qualified("public.w9" + args)
        assert any(q.matches("public", "w9", (i, t)) for _, i, t in overloads), args
