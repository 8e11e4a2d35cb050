"""Proxies of their own for the pooling tests: [pool] keys, an admin user, the admin console's rows."""

from __future__ import annotations

from pathlib import Path

from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend
from tests.support.psql import run_psql

ADMIN_PASSWORD = "ops-pw"


def pooled_proxy(pg: PgCluster, workdir: Path, *, backend: tuple[str, int] | None = None,
                 connect_timeout: float | None = None, **pool: object) -> ProxyProcess:
    """A proxy of its own with these [pool] keys in session mode (a session holds its server from login to end),
    and an admin user; optionally reaching PostgreSQL through `backend` (host, port), with `connect_timeout`."""
    prepare_backend(pg)
    p = ProxyProcess(pg, workdir, backend_sslmode="disable", pool={"pool_mode": "session", **pool},
                     admin_users={"ops": ADMIN_PASSWORD})
    if backend is not None:
        p.write_config()
        text = p.config_path.read_text()
        timeout = f"\nconnect_timeout = {connect_timeout}" if connect_timeout is not None else ""
        text = text.replace(f'host = "{pg.host}"\nport = {pg.port}',
                            f'host = "{backend[0]}"\nport = {backend[1]}{timeout}')
        p.config_path.write_text(text)
        p.write_config = lambda: None  # type: ignore[method-assign]  # keep the edited file
    return p.start()


def console(p: ProxyProcess, command: str) -> list[dict[str, str]]:
    """The rows of one admin console command, by column name."""
    conninfo = f"host=127.0.0.1 port={p.port} user=ops dbname=pgtenant sslmode=disable"
    res = run_psql(conninfo, command + "\n", password=ADMIN_PASSWORD, args=("-A", "-F", "|"))
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if "|" in line]
    header = lines[0].split("|")
    return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:]]


def until_waiting(p: ProxyProcess, tenant: str) -> None:
    """Until SHOW POOLS shows a client of `tenant` waiting."""
    until(lambda: any(r["tenant"] == tenant and r["cl_waiting"] != "0" for r in console(p, "SHOW POOLS;")),
          timeout=20, interval=0.05, what=f"a waiting client of {tenant}")
