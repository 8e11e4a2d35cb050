"""One pgtenant login, used by one tool call at a time: each statement alone, read-only, bounded, rolled back."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from proxy.agent import DOOR_APPLICATION_NAME

APPLICATION_NAME = DOOR_APPLICATION_NAME  # the proxy logs it in only as an agent-profile user (proxy/agent.py)
_RULE = re.compile(r"\(rule ([\w.-]+)\)")
NO_ROWS = ("the statement ran but returns no rows: the tools answer with rows (SELECT, WITH, VALUES, TABLE, SHOW, "
           "EXPLAIN); whatever a statement changes is rolled back")
NO_COPY = "COPY is not available through these tools: run the SELECT itself (results are cut at max_rows)"


@dataclass(frozen=True)
class Rows:
    """A statement's result: its columns (name, type), at most `limit` rows, and whether more were cut off."""

    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]]
    truncated: bool = False


@dataclass
class DoorError(Exception):
    """What PostgreSQL or pgtenant answered: the SQLSTATE, message, pgtenant rule (when it refused) and hint."""

    message: str
    sqlstate: str | None = None
    detail: str | None = None
    hint: str | None = None
    rule: str | None = None
    position: int | None = None

    def __str__(self) -> str:
        head = f"ERROR {self.sqlstate}: {self.message}" if self.sqlstate else f"ERROR: {self.message}"
        lines = [head]
        if self.rule:
            lines.append(f"pgtenant rule: {self.rule}")
        if self.detail:
            lines.append(f"DETAIL: {self.detail}")
        if self.hint:
            lines.append(f"HINT: {self.hint}")
        if self.position:
            lines.append(f"POSITION: character {self.position} of the statement")
        return "\n".join(lines)

    @classmethod
    def from_psycopg(cls, exc: psycopg.Error) -> DoorError:
        diag = exc.diag
        message = diag.message_primary or str(exc).strip() or type(exc).__name__
        rule = _RULE.search(message)
        position = int(diag.statement_position) if (diag.statement_position or "").isdigit() else None
        return cls(message, diag.sqlstate, diag.message_detail, diag.message_hint, rule and rule.group(1), position)


class _Lost(Exception):
    """The connection broke under a statement (its DoorError inside)."""

    def __init__(self, error: DoorError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Door:
    """A connection through pgtenant as one login (a libpq DSN), opened on first use and again after it broke.

    Every statement runs alone in its own `BEGIN READ ONLY` transaction that is always rolled back, over the
    extended protocol (one Parse: PostgreSQL refuses a string of several statements), its rows streamed and cut
    at `limit` (the rest cancelled, not fetched). Calls are serialised: one statement at a time per login."""

    dsn: str
    statement_timeout_ms: int = 0  # set for the session at login (0: none); a statement's own SET is rolled back
    connect_timeout: float = 10.0
    _conn: psycopg.AsyncConnection[Any] | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def run(self, sql: str, params: Sequence[Any] | None = None, *, limit: int) -> Rows:
        async with self._lock:
            reused = self._conn is not None and not self._conn.closed
            try:
                return await self._once(sql, params, limit)
            except _Lost as lost:
                if not reused:
                    raise lost.error from None
            # A connection idle since the last call was closed under it (a proxy restart, an idle timeout): the
            # statement is read-only and was rolled back with the connection, so it runs again on a new one.
            try:
                return await self._once(sql, params, limit)
            except _Lost as lost:
                raise lost.error from None

    async def _once(self, sql: str, params: Sequence[Any] | None, limit: int) -> Rows:
        conn = await self._connection()
        clean = False
        try:
            rows = await self._stream(conn, sql, params, limit)
            clean = not rows.truncated
            return rows
        except psycopg.ProgrammingError as exc:
            if exc.sqlstate is None and "didn't produce a result" in str(exc):
                raise DoorError(NO_ROWS) from None  # psycopg's stream() answer to a statement without rows
            if exc.sqlstate is None and "COPY" in str(exc):
                raise DoorError(NO_COPY) from None
            raise DoorError.from_psycopg(exc) from None
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                raise _Lost(DoorError.from_psycopg(exc)) from None
            raise DoorError.from_psycopg(exc) from None
        except psycopg.Error as exc:
            raise DoorError.from_psycopg(exc) from None
        finally:
            await self._end(conn, clean)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=False, application_name=APPLICATION_NAME,
                connect_timeout=max(1, int(self.connect_timeout)),
            )
        except psycopg.Error as exc:
            raise DoorError.from_psycopg(exc) from None
        try:
            await conn.set_read_only(True)  # psycopg opens each transaction with BEGIN READ ONLY
            if self.statement_timeout_ms:
                await conn.execute(f"SET statement_timeout = {int(self.statement_timeout_ms)}")
                await conn.commit()
        except psycopg.Error as exc:
            await conn.close()
            raise DoorError.from_psycopg(exc) from None
        self._conn = conn
        return conn

    @staticmethod
    async def _stream(conn: psycopg.AsyncConnection[Any], sql: str, params: Sequence[Any] | None,
                      limit: int) -> Rows:
        cur = conn.cursor()
        rows: list[tuple[Any, ...]] = []
        truncated = False
        # stream(): Parse/Bind/Execute of the unnamed statement, rows one at a time; leaving early cancels the rest.
        async with contextlib.aclosing(cur.stream(sql, params)) as stream:
            async for row in stream:
                if len(rows) >= limit:
                    truncated = True
                    break
                rows.append(row)
        columns = [(c.name, c.type_display) for c in cur.description or ()]
        return Rows(columns, rows, truncated)

    async def _end(self, conn: psycopg.AsyncConnection[Any], clean: bool) -> None:
        """Roll the statement's transaction back. After an error or a cut-off result the connection is dropped
        (reopened on the next call): psycopg's stream() then sent a CancelRequest, which may reach the server
        after this statement ended, and must not cancel the next one."""
        if clean:
            try:
                await conn.rollback()
                return
            except psycopg.Error:
                pass
        await conn.close()
        self._conn = None
