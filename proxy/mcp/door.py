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
BUSY = ("busy: this agent's login is running a call and {waiting} more are waiting for it (the MCP server's "
        "--max-waiting); nothing was run: retry once an earlier call has answered, and make calls one at a time")
ABANDONED = "the HTTP request of this call was closed before it answered: the call was dropped"


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


class Abandoned(Exception):
    """The call's client went away: it was dropped while waiting, or its statement cancelled while running."""

    def __init__(self, running: bool) -> None:
        super().__init__(ABANDONED)
        self.running = running


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
    at `limit` (the rest cancelled, not fetched). Calls are serialised: one statement at a time per login, at most
    `max_waiting` calls wait for it (one more is refused as busy), and a call whose `gone` event is set (its HTTP
    client went away) leaves the queue, or has its statement cancelled on PostgreSQL (a CancelRequest through
    pgtenant) when it is running."""

    dsn: str
    statement_timeout_ms: int = 0  # set for the session at login (0: none); a statement's own SET is rolled back
    connect_timeout: float = 10.0
    _conn: psycopg.AsyncConnection[Any] | None = field(default=None, init=False, repr=False)
    max_waiting: int | None = None  # None: no bound (stdio: one client); over HTTP the server's --max-waiting
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _admitted: int = field(default=0, init=False, repr=False)  # calls in run: the one running and those waiting

    async def run(self, sql: str, params: Sequence[Any] | None = None, *, limit: int,
                  gone: asyncio.Event | None = None) -> Rows:
        """The statement's rows; DoorError (BUSY when the queue is full), or Abandoned once `gone` is set."""
        # The check and the count with no await between them: calls that arrive together (an HTTP burst, each
        # call's work then starting in its own task) each see the ones admitted before them (review 20 F7). The
        # count never passes max_waiting + 1, and a tool of several statements (describe_table, sample_rows) checks
        # its next statement in the same loop step its last one was uncounted: it is never refused halfway.
        if self.max_waiting is not None and self._admitted > self.max_waiting:
            raise DoorError(BUSY.format(waiting=self._admitted - 1))
        self._admitted += 1
        try:
            return await self._admitted_run(sql, params, limit, gone)
        finally:
            self._admitted -= 1

    async def _admitted_run(self, sql: str, params: Sequence[Any] | None, limit: int,
                            gone: asyncio.Event | None) -> Rows:
        started: list[bool] = []  # [True] once the call holds the login
        if gone is None:
            return await self._serialised(sql, params, limit, started)
        work = asyncio.ensure_future(self._serialised(sql, params, limit, started))
        watch = asyncio.ensure_future(gone.wait())
        running = False
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                # Waiting: it leaves the queue. Running: psycopg answers the cancellation with a CancelRequest
                # (through pgtenant, as any client's) and waits for the statement's end; the connection is then
                # dropped (see _end), so a late cancel cannot reach the next call.
                running = bool(started)
                work.cancel()
                await asyncio.wait({work})
        if work.cancelled():
            raise Abandoned(running)
        return work.result()

    async def _serialised(self, sql: str, params: Sequence[Any] | None, limit: int, started: list[bool]) -> Rows:
        await self._lock.acquire()
        started.append(True)
        try:
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
        finally:
            self._lock.release()

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
