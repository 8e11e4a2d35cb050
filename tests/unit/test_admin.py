"""The admin console: SHOW ... rows, RELOAD, KILL_CLIENT and UNLOCK, and errors for anything else."""

from __future__ import annotations

import pytest

from proxy import admin
from proxy.errors import PgError


class _Ctx:
    def tenants(self):
        return ("tenant", "strategy"), [("acme", "shared"), ("globex", None)]

    clients = servers = pools = stats = config_rows = tenants

    def reload(self) -> str:
        return "reload started"

    def kill_client(self, session_id: str) -> bool:
        return session_id == "abc"

    def unlock(self, user: str) -> int:
        return 3 if user == "Alice x" else 0


def test_admin_console_commands() -> None:
    out = admin.execute(" show   tenants ; ", _Ctx())
    assert out[:1] == b"T" and b"acme" in out and out.endswith(b"C\x00\x00\x00\x0bSHOW 2\x00")
    assert b"\xff\xff\xff\xff" in out  # NULL encoded as -1
    assert admin.execute("RELOAD", _Ctx()).startswith(b"N")
    assert admin.execute("kill_client abc", _Ctx()).startswith(b"C")
    assert admin.execute('unlock "Alice x";', _Ctx()) == admin.command_complete("UNLOCK 3")
    assert admin.execute("UNLOCK bob", _Ctx()) == admin.command_complete("UNLOCK 0")
    with pytest.raises(PgError) as exc:
        admin.execute("KILL_CLIENT fff", _Ctx())
    assert exc.value.sqlstate == "42704"
    with pytest.raises(PgError) as exc:
        admin.execute("SELECT * FROM pg_shadow", _Ctx())
    assert exc.value.sqlstate == "42601" and exc.value.hint
