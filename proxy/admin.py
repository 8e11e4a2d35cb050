"""The admin console's commands (PgBouncer style) answered as result sets; pure apart from its context."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from proxy import errors
from proxy.protocol.messages import command_complete, data_row, row_description

ADMIN_DATABASE = "pgtenant"
KILL_PATTERN = re.compile(r"^KILL_CLIENT\s+([0-9a-f]+)$", re.IGNORECASE)
UNLOCK_PATTERN = re.compile(r"^UNLOCK\s+(?:\"([^\"]+)\"|(\S+))$", re.IGNORECASE)

Rows = list[tuple[object, ...]]


class AdminContext(Protocol):
    """What the console may read and do; the driver implements it."""

    def tenants(self) -> tuple[Sequence[str], Rows]: ...
    def clients(self) -> tuple[Sequence[str], Rows]: ...
    def servers(self) -> tuple[Sequence[str], Rows]: ...
    def pools(self) -> tuple[Sequence[str], Rows]: ...
    def stats(self) -> tuple[Sequence[str], Rows]: ...
    def config_rows(self) -> tuple[Sequence[str], Rows]: ...
    def reload(self) -> str: ...
    def kill_client(self, session_id: str) -> bool: ...
    def unlock(self, user: str) -> int: ...


def result_set(columns: Sequence[str], rows: Rows, tag: str) -> bytes:
    """RowDescription + DataRows (text) + CommandComplete."""
    out = bytearray(row_description(columns))
    for row in rows:
        out += data_row([None if value is None else str(value).encode() for value in row])
    out += command_complete(tag)
    return bytes(out)


def normalized(sql: str) -> tuple[str, str]:
    """(the command upper-cased with single spaces, its text without the trailing semicolon)."""
    text = sql.strip().rstrip(";").strip()
    return " ".join(text.upper().split()), text


def execute(sql: str, ctx: AdminContext) -> bytes:
    """The response to one console command (without ReadyForQuery); PgError for anything else."""
    upper, text = normalized(sql)
    shows = {
        "SHOW TENANTS": ctx.tenants,
        "SHOW CLIENTS": ctx.clients,
        "SHOW SERVERS": ctx.servers,
        "SHOW POOLS": ctx.pools,
        "SHOW STATS": ctx.stats,
        "SHOW CONFIG": ctx.config_rows,
    }
    if upper in shows:
        columns, rows = shows[upper]()
        return result_set(columns, rows, f"SHOW {len(rows)}") if rows or columns else command_complete("SHOW")
    if upper == "RELOAD":
        message = ctx.reload()
        return errors.admin_reloaded(message).encode() + command_complete("RELOAD")
    m = KILL_PATTERN.match(text)
    if m:
        if not ctx.kill_client(m.group(1).lower()):
            raise errors.admin_no_client(m.group(1))
        return command_complete("KILL_CLIENT")
    m = UNLOCK_PATTERN.match(text)
    if m:  # forget a user's failed logins (every address): its login budgets are whole again
        return command_complete(f"UNLOCK {ctx.unlock(m.group(1) or m.group(2))}")
    raise errors.admin_unknown_command()
