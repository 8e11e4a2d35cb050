"""proxy/mcp/door.py: what PostgreSQL or pgtenant answered, as an error a model can act on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from proxy.mcp.door import Door, DoorError, Rows


def _exc(**diag: str | None) -> SimpleNamespace:
    fields = {"sqlstate": None, "message_primary": None, "message_detail": None, "message_hint": None,
              "statement_position": None, **diag}
    return SimpleNamespace(diag=SimpleNamespace(**fields))


def test_a_pgtenant_refusal_names_its_sqlstate_rule_and_hint() -> None:
    err = DoorError.from_psycopg(_exc(  # type: ignore[arg-type]
        sqlstate="42501", message_primary="pgtenant: DO blocks are not allowed (rule statement_not_allowed)",
        message_hint="This kind of statement is not allowed for tenant roles."))
    assert (err.sqlstate, err.rule) == ("42501", "statement_not_allowed")
    assert str(err) == (
        "ERROR 42501: pgtenant: DO blocks are not allowed (rule statement_not_allowed)\n"
        "pgtenant rule: statement_not_allowed\n"
        "HINT: This kind of statement is not allowed for tenant roles.")


def test_a_postgresql_error_keeps_its_detail_and_position() -> None:
    err = DoorError.from_psycopg(_exc(  # type: ignore[arg-type]
        sqlstate="42P01", message_primary='relation "globex.orders" does not exist', message_detail="d",
        statement_position="15"))
    assert err.rule is None and err.position == 15
    assert str(err) == ('ERROR 42P01: relation "globex.orders" does not exist\nDETAIL: d\n'
                        "POSITION: character 15 of the statement")


def test_an_error_without_diagnostics_still_says_something() -> None:
    assert str(DoorError("connection refused")) == "ERROR: connection refused"
    err = DoorError.from_psycopg(_exc())  # type: ignore[arg-type]
    assert err.message and err.sqlstate is None and str(err).startswith("ERROR: ")


def test_a_login_that_cannot_connect_is_a_door_error() -> None:
    door = Door("host=127.0.0.1 port=1 user=nobody dbname=x connect_timeout=2", connect_timeout=2)
    with pytest.raises(DoorError, match="ERROR"):
        asyncio.run(door.run("SELECT 1", limit=1))


def _burst(max_waiting: int, calls: int) -> tuple[list[object], Door]:
    """`calls` calls of one Door over HTTP (a `gone` event each) started together (asyncio.gather), each statement
    a few loop steps long: the answers (rows or the exception) and the Door."""
    door = Door("postgresql://unused", max_waiting=max_waiting)

    async def statement(sql: str, params: object, limit: int) -> Rows:
        for _ in range(3):
            await asyncio.sleep(0)
        return Rows([("x", "integer")], [(1,)])

    door._once = statement  # type: ignore[method-assign]

    async def main() -> list[object]:
        return await asyncio.gather(*(door.run("SELECT 1", limit=1, gone=asyncio.Event())
                                      for _ in range(calls)), return_exceptions=True)

    return asyncio.run(main()), door


def test_calls_arriving_together_over_http_are_bounded_by_max_waiting() -> None:
    """Review 20 F7: with --max-waiting 1, six calls at once over HTTP all queued (each counted only once its task
    ran, after every other call had passed the check). One runs, one waits, four are refused as busy at once."""
    answers, door = _burst(1, 6)
    assert [type(a).__name__ for a in answers] == ["Rows", "Rows"] + ["DoorError"] * 4
    busy = answers[2]
    assert isinstance(busy, DoorError) and str(busy).startswith("ERROR: busy: ") and "1 more are waiting" in str(busy)
    assert door._admitted == 0  # every call uncounted once answered or refused


def test_max_waiting_zero_runs_one_call_and_refuses_the_rest() -> None:
    answers, _ = _burst(0, 3)
    assert [type(a).__name__ for a in answers] == ["Rows", "DoorError", "DoorError"]
