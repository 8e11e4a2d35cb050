"""Statement kinds: the leading keyword of a statement, as the metrics and the audit log count it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.stmtkind import _BY_KEYWORD, _statement_kind, statement_kind


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "select"), ("  /* c /* nested */ */ -- x\n (select 1)", "select"),
        ("WITH t AS (SELECT 1) TABLE t", "select"),
        ("insert into t values (1)", "insert"), ("UPDATE t SET a=1", "update"), ("DELETE FROM t", "delete"),
        ("COPY t TO STDOUT", "copy"), ("CREATE TEMP TABLE x (a int)", "ddl"), ("BEGIN", "utility"),
        ("SET x = 1", "utility"), ("", "other"), ("42", "other"), ("fetch 50 in c", "select"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


_OLD_LEADING_WORD = re.compile(r"[A-Za-z_]+(?![^\W\d])")


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["select", "SELECT", "Update", "with", "_", "x", "é", "1", " ", "(", "--", "\n",
                                 "/*", "*/", "insert", "ß", "K", "\u212a"]), max_size=6).map("".join))
def test_statement_kind_reads_the_leading_word_as_before(sql: str) -> None:
    """The typed scan answers as the regular expression it replaced (a whole word, case-insensitive)."""
    word = _OLD_LEADING_WORD.match(sql)
    expected = _BY_KEYWORD.get(word.group().lower(), "other") if word else _statement_kind(sql)
    assert statement_kind(sql) == expected
