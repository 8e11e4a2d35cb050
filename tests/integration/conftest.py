"""Integration fixtures: a pgtenant process per test module in front of the session's real cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.certs import TlsFiles
from tests.support.pgcluster import PRIMARY_SETTINGS, PgCluster, StandbyCluster
from tests.support.pools import pooled_proxy
from tests.support.proxyproc import ProxyProcess, prepare_backend


@pytest.fixture(scope="module")
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """pgtenant with TLS offered (not required), backend over TLS when the cluster has it."""
    prepare_backend(pg)
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("pgtenant"), tls=tls_certs,
        backend_sslmode="require" if pg.ssl_enabled else "disable",
    )
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module", params=[True, False], ids=["sticky", "no_sticky"])
def one_pooled(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    """Transaction pooling with one server per pool (the next client gets the server the last one left), sticky
    servers on and off."""
    p = pooled_proxy(pg, tmp_path_factory.mktemp("one_pooled"), pool_mode="transaction", pool_size=1,
                     query_wait_timeout=30.0, sticky_servers=request.param)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def replicated(pg: PgCluster) -> Iterator[tuple[PgCluster, StandbyCluster]]:
    """A primary of its own (wal_level = replica; the tenants' databases prepared) and a streaming replica of it
    (`pg_basebackup -R`), for the module."""
    primary = PgCluster(pg.installation, settings=PRIMARY_SETTINGS).start()
    try:
        prepare_backend(primary)
        standby = StandbyCluster(primary).start()
        try:
            standby.wait_streaming()
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()
