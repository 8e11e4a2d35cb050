"""proxy/mcp/dialect.py: sqlglot translates another dialect to PostgreSQL, and only translates."""

from __future__ import annotations

import pytest

from proxy.mcp.dialect import DIALECTS, DialectError, to_postgres


@pytest.mark.parametrize("dialect", [None, "", "postgres", "PostgreSQL", "pg"])
def test_postgresql_is_sent_as_written(dialect: str | None) -> None:
    text = "SELECT `not postgres at all`; COMMIT; DROP SCHEMA x"  # not even parsed: the proxy judges it
    assert to_postgres(text, dialect) == text


@pytest.mark.parametrize(("dialect", "sql", "expected"), [
    ("mysql", "SELECT `id`, IFNULL(amount, 0) FROM `orders` LIMIT 3",
     'SELECT "id", COALESCE(amount, 0) FROM "orders" LIMIT 3'),
    ("tsql", "SELECT TOP 3 id FROM orders", "SELECT id FROM orders LIMIT 3"),
    ("snowflake", "SELECT IFF(amount > 10, 1, 0) FROM orders",
     "SELECT CASE WHEN amount > 10 THEN 1 ELSE 0 END FROM orders"),
    ("bigquery", "SELECT DATE_TRUNC(CURRENT_DATE, MONTH) FROM `orders`",
     "SELECT DATE_TRUNC('MONTH', CURRENT_DATE) FROM \"orders\""),
])
def test_other_dialects_become_postgresql(dialect: str, sql: str, expected: str) -> None:
    assert to_postgres(sql, dialect) == expected


def test_several_statements_stay_several_for_the_server_to_refuse() -> None:
    # sqlglot does not count statements for the door: the extended protocol refuses the string as a whole.
    assert to_postgres("COMMIT; DROP SCHEMA `globex` CASCADE", "mysql") == 'COMMIT;\nDROP SCHEMA "globex" CASCADE'


def test_an_unknown_dialect_names_the_known_ones() -> None:
    with pytest.raises(DialectError, match=r"unknown dialect 'klingon'; known: postgres, .*mysql.*tsql"):
        to_postgres("SELECT 1", "klingon")
    assert "mysql" in DIALECTS and "postgres" not in DIALECTS


def test_an_untranslatable_statement_is_an_error_without_terminal_noise() -> None:
    with pytest.raises(DialectError) as exc:
        to_postgres("SELECT * FROM", "mysql")
    text = str(exc.value)
    assert text.startswith("cannot translate this mysql statement to PostgreSQL: ")
    assert "the end of the statement" in text and "line 1, column" in text
    assert "\x1b[" not in text and "Token" not in text


def test_empty_text_in_a_dialect_is_an_error() -> None:
    with pytest.raises(DialectError, match="no statement"):
        to_postgres("  ", "mysql")
