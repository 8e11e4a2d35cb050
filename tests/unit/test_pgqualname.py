"""PostgreSQL's reading of a qualified name (`[preflight] trusted_definers`) and of a boolean option (parse_bool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError
from proxy.pgqualname import TRUE_SPELLINGS, QualifiedName, parse_bool, parse_qualified
from tests.unit.test_config import base, load


def test_an_entry_is_read_as_postgresql_reads_a_qualified_name() -> None:
    """Red team 21d F6: unquoted parts fold to lower case, quoted ones are exact; an argument list names one
    overload, spaced as PostgreSQL prints it."""
    assert parse_qualified("public.is_member") == QualifiedName("public", "is_member")
    assert parse_qualified("Public.IS_MEMBER") == QualifiedName("public", "is_member")
    assert parse_qualified('public."Is_Member"') == QualifiedName("public", "Is_Member")
    assert parse_qualified('"a""b"."c.d"') == QualifiedName('a"b', "c.d")
    assert parse_qualified(" auth.is_member( uuid ,  character  varying ) ") == QualifiedName(
        "auth", "is_member", "uuid, character varying")
    assert parse_qualified("auth.f()") == QualifiedName("auth", "f", "")
    assert parse_qualified("s.f(numeric(10,2), text[])").args == "numeric(10,2), text[]"
    assert parse_qualified("s." + "x" * 70).name == "x" * 63  # NAMEDATALEN truncation
    for bad in ("is_member", "public.", ".f", "a.b.c", "a.b(", "a.b(int))", "a.b c", '"a.b', '"".b', "a.b(,)",
                "1a.b", ""):
        with pytest.raises(ValueError):
            parse_qualified(bad)


def test_only_postgresqls_spaces_are_spaces_and_the_dot_may_have_them_around() -> None:
    """Red team 21w W9: parse_ident skips its scanner's spaces (space, tab, newline, CR, form feed, vertical tab)
    only; a high-bit character (NBSP) is an identifier character, not stripped; spaces around the dot are read."""
    assert parse_qualified("public.is_member\u00a0") == QualifiedName("public", "is_member\u00a0")
    assert parse_qualified("\u00a0public.is_member") == QualifiedName("\u00a0public", "is_member")
    assert parse_qualified("public\u2003.is_member").schema == "public\u2003"
    assert parse_qualified("public . is_member") == QualifiedName("public", "is_member")
    assert parse_qualified(" \t\n\r\f\vpublic\v.\fis_member \t\n\r\f\v") == QualifiedName("public", "is_member")
    assert parse_qualified('"public" . "Is_Member" (text)') == QualifiedName("public", "Is_Member", "text")
    for bad in ("public .", ". is_member", "public . is_member . x", "public.is_member\u00a0x y"):
        with pytest.raises(ValueError):
            parse_qualified(bad)


def test_a_quoted_simple_argument_type_reads_as_postgresql_prints_it() -> None:
    """`"text"` is the type text, printed `text`; `"integer"` names no type (unquoted, the grammar reads int4) and
    `"char"` is printed quoted: both stay as written (they match nothing PostgreSQL prints but `"char"`)."""
    assert parse_qualified('public."is_member"("text")') == QualifiedName("public", "is_member", "text")
    assert parse_qualified('public.f("text", "uuid"[])').args == "text, uuid[]"
    assert parse_qualified('public.f("integer")').args == '"integer"'
    assert parse_qualified('public.f("char")').matches("public", "f", ('"char"', '"char"'))
    assert not parse_qualified('public.f("Text")').matches("public", "f", ("text", "text"))


def test_matching_is_exact_and_an_argument_list_names_one_overload() -> None:
    every = parse_qualified("public.is_member")
    assert every.matches("public", "is_member", ("org text", "text"))
    assert every.matches("public", "is_member", ("n integer", "integer"))
    assert not every.matches("public", "IS_MEMBER", ("n integer", "integer"))
    assert not every.matches("public", "Is_Member")
    one = parse_qualified("public.is_member(text)")
    assert one.matches("public", "is_member", ("org text", "text"))  # the argument types
    assert not one.matches("public", "is_member", ("n integer", "integer"))
    assert parse_qualified("public.is_member(org text)").matches("public", "is_member", ("org text", "text"))
    assert not one.matches("public", "is_member")  # a view has no argument list
    assert parse_qualified('public."IS_MEMBER"').matches("public", "IS_MEMBER")


def test_a_bad_entry_is_a_config_error_at_load(tmp_path: Path) -> None:
    raw = {**base(), "preflight": {"trusted_definers": ['public."Is_Member"(text)', "is_member"]}}
    with pytest.raises(ConfigError, match=r"preflight.trusted_definers\[1\]: 'is_member' is not a qualified name"):
        load(raw, tmp_path)
    raw["preflight"] = {"trusted_definers": ['public."Is_Member"(text)', 'auth.is_member']}
    assert load(raw, tmp_path).preflight.trusted_definers == ('public."Is_Member"(text)', "auth.is_member")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("value", "expected"), [
    ("t", True), ("tr", True), ("tru", True), ("true", True), ("TRUE", True), ("y", True), ("ye", True),
    ("yes", True), ("on", True), ("ON", True), ("1", True),
    ("f", False), ("fa", False), ("false", False), ("n", False), ("no", False), ("of", False), ("off", False),
    ("0", False), ("o", None), ("", None), ("truex", None), ("offf", None), ("10", None), ("yess", None),
    (" t", None), ("2", None),
])
def test_parse_bool_as_postgresql(value: str, expected: bool | None) -> None:
    """Red team 21d F11: src/backend/utils/adt/bool.c parse_bool_with_len (a reloption's value is read with it)."""
    assert parse_bool(value) is expected


def test_the_true_spellings() -> None:
    assert TRUE_SPELLINGS == ("1", "on", "t", "tr", "tru", "true", "y", "ye", "yes")
