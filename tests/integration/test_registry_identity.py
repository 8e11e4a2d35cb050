"""Red team 9b N6: the placement check asks PostgreSQL itself (system identifier and database oid), so a registry
DSN reaching a database tenant's own database by another route (a TCP forwarder on another port) is refused where
the address comparison alone lets it through."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.balancer import Forwarder
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_PASSWORD, BACKEND_ROLE, ProxyProcess, prepare_backend

TENANT_DB = "pgt_identco"  # a database tenant's database
OTHER_DB = "pgt_ident_registry"  # a registry of its own
SAME = "is the registry's own database, as PostgreSQL itself reports"
BY_ADDRESS = "a database-strategy tenant may not be served from the registry's database (database"


def pgtenant(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ), check=False)


TENANT = {"identco": {"strategy": "database", "database": TENANT_DB}}


@pytest.fixture(scope="module")
def databases(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    prepare_backend(pg)
    for db in (TENANT_DB, OTHER_DB):
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        pg.execute(f"CREATE DATABASE {db}")
        assert pgtenant("registry", "init", "--dsn", pg.dsn(dbname=db)).returncode == 0
    ProxyProcess(pg, tmp_path_factory.mktemp("identity"), extra_tenants=TENANT).provision()  # roles, passwords
    yield
    for db in (TENANT_DB, OTHER_DB):
        pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(scope="module")
def forwarder(pg: PgCluster) -> Iterator[Forwarder]:
    fwd = Forwarder(pg.port)
    yield fwd
    fwd.close()


def _config(pg: PgCluster, tmp_path: Path, registry_dsn: str) -> Path:
    p = ProxyProcess(pg, tmp_path, registry={"dsn": registry_dsn}, extra_tenants=TENANT)
    p.write_config()
    return p.config_path


def test_a_registry_reached_through_a_forwarder_is_still_the_tenants_database(
    pg: PgCluster, databases: None, forwarder: Forwarder, tmp_path: Path,
) -> None:
    direct = pgtenant("check-config", str(_config(pg, tmp_path / "direct", pg.dsn(dbname=TENANT_DB))))
    assert direct.returncode != 0 and BY_ADDRESS in direct.stderr, direct.stderr  # the address check's own case
    dsn = pg.dsn(dbname=TENANT_DB, port=forwarder.port)
    assert f"port={forwarder.port}" in dsn.replace("'", "")
    res = pgtenant("check-config", str(_config(pg, tmp_path / "forwarded", dsn)))
    assert res.returncode != 0, res.stdout
    assert "tenants.identco: a database-strategy tenant may not be served from the registry's database (backend " \
        in res.stderr and SAME in res.stderr, res.stderr
    assert forwarder.accepted >= 1


def test_a_registry_of_its_own_behind_the_forwarder_passes(
    pg: PgCluster, databases: None, forwarder: Forwarder, tmp_path: Path,
) -> None:
    res = pgtenant("check-config", str(_config(pg, tmp_path, pg.dsn(dbname=OTHER_DB, port=forwarder.port))))
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr
    assert "identity_unchecked" not in res.stdout + res.stderr  # every database tenant was compared, and differs


def test_the_cli_refuses_to_add_such_a_tenant(
    pg: PgCluster, databases: None, forwarder: Forwarder, tmp_path: Path,
) -> None:
    dsn = pg.dsn(dbname=TENANT_DB, port=forwarder.port)
    p = ProxyProcess(pg, tmp_path, registry={"dsn": dsn})
    p.write_config()
    res = pgtenant("tenants", "add", "sneaky", "--strategy", "database", "--database", TENANT_DB,
                   "--config", str(p.config_path))
    assert res.returncode == 2 and SAME in res.stderr, res.stderr
    assert not pg.execute("SELECT 1 FROM pgtenant_registry.tenants WHERE name = 'sneaky'", dbname=TENANT_DB)


def test_without_pg_control_system_the_tenants_backend_is_found_in_pg_stat_activity(
    pg: PgCluster, databases: None, forwarder: Forwarder, tmp_path: Path,
) -> None:
    # The tenant's backend role may not read the cluster's identifier in its database (a managed service's
    # hardening, say): its connection is looked for in the registry's pg_stat_activity instead.
    pg.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC", dbname=TENANT_DB)
    try:
        with psycopg.connect(pg.dsn(user=BACKEND_ROLE, password=BACKEND_PASSWORD, dbname=TENANT_DB)) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT system_identifier FROM pg_control_system()")
        res = pgtenant("check-config", str(_config(pg, tmp_path / "same", pg.dsn(dbname=TENANT_DB,
                                                                                 port=forwarder.port))))
        assert res.returncode != 0 and SAME in res.stderr, res.stderr
        res = pgtenant("check-config", str(_config(pg, tmp_path / "other", pg.dsn(dbname=OTHER_DB,
                                                                                  port=forwarder.port))))
        assert res.returncode == 0 and "identity_unchecked" not in res.stdout + res.stderr, res.stderr
    finally:
        pg.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC", dbname=TENANT_DB)
