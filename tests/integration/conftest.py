"""Integration fixtures: a pgtenant process per test module in front of the session's real cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.certs import TlsFiles
from tests.support.pgcluster import PgCluster
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
