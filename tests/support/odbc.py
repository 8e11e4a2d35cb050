"""psqlODBC (Debian's odbc-postgresql) through pyodbc/unixODBC: driver discovery and connection strings."""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

DRIVER_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/*/odbc/psqlodbcw.so",  # Debian/Ubuntu multiarch (odbc-postgresql)
    "/usr/lib/odbc/psqlodbcw.so",
    "/usr/lib64/psqlodbcw.so",  # Fedora/RHEL (postgresql-odbc)
    "/usr/lib/psqlodbcw.so",
    "/usr/local/lib/psqlodbcw.so",
)


def find_psqlodbc_driver() -> Path | None:
    """The Unicode psqlODBC driver library: env ``PSQLODBC_DRIVER``, else the usual install locations."""
    env = os.environ.get("PSQLODBC_DRIVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    for pattern in DRIVER_CANDIDATES:
        for hit in sorted(glob.glob(pattern)):
            if Path(hit).is_file():
                return Path(hit)
    return None


def odbc_missing_reason() -> str | None:
    """Why ODBC tests cannot run here (None if pyodbc and the psqlODBC driver are both present)."""
    missing = []
    if importlib.util.find_spec("pyodbc") is None:
        missing.append("pyodbc (pip install 'pyodbc>=5.1,<6')")
    if find_psqlodbc_driver() is None:
        missing.append("psqlODBC driver (apt-get install odbc-postgresql, or set PSQLODBC_DRIVER)")
    return f"missing {', '.join(missing)}" if missing else None


def require_odbc() -> None:
    """Skip the calling test if ODBC is unavailable, but fail under CI (env ``CI`` set)."""
    reason = odbc_missing_reason()
    if reason is None:
        return
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"ODBC is required in CI but unavailable: {reason}")
    pytest.skip(f"ODBC unavailable: {reason}")


def _quote(value: str) -> str:
    """ODBC connection-string value quoting: braces when it holds ``;``, ``{``, ``}`` or spaces at the ends."""
    if any(ch in value for ch in ";{}=") or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


def connection_string(
    *, port: int, database: str, user: str, password: str, host: str = "127.0.0.1",
    options: Mapping[str, str | int] | None = None,
) -> str:
    """A DSN-less psqlODBC connection string (``Driver=<path>;Server=...``); ``options`` are appended/override."""
    driver = find_psqlodbc_driver()
    if driver is None:
        raise RuntimeError(odbc_missing_reason() or "psqlODBC driver not found")
    kv: dict[str, str | int] = {
        "Driver": str(driver), "Server": host, "Port": port, "Database": database,
        "Uid": user, "Pwd": password, "SSLmode": "disable",
    }
    kv.update(options or {})
    return ";".join(f"{k}={_quote(str(v))}" for k, v in kv.items()) + ";"
