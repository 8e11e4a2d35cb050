"""Shared pytest fixtures: real PostgreSQL clusters per selected installation (pg15, pg18...) and TLS files."""

from __future__ import annotations

import compileall
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # make ``tests.support`` importable without pytest ``pythonpath`` config
    sys.path.insert(0, _ROOT)

from tests.support.certs import TlsFiles, make_certs  # noqa: E402
from tests.support.pgcluster import (  # noqa: E402
    ENV_SELECT,
    ClusterPool,
    PgCluster,
    PgInstallation,
    describe,
    find_installations,
    select_installations,
)
from tests.support.reports import print_reports  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--pg=all|first|15|18|15,18`` (overrides env PGTENANT_TEST_PG)."""
    parser.addoption("--pg", default=None, help=f"PostgreSQL versions to test against (env {ENV_SELECT}); "
                     "all (default), first, or majors like 15,18")


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the proxy package once, so that every `python -m proxy` the tests start (each proxy, each of its
    worker processes, each CLI run) loads it from __pycache__ instead of compiling all its modules from source:
    hosts and images that set PYTHONDONTWRITEBYTECODE=1 (this project's Dockerfile does) never write those
    files, and the compiling was about a third of each start's CPU. py_compile writes them whatever that setting."""
    compileall.compile_dir(str(Path(_ROOT) / "proxy"), quiet=1)


def pytest_report_header(config: pytest.Config) -> str:
    """Show which PostgreSQL installations were found."""
    return f"postgresql installations: {describe(find_installations())}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures tests reported instead of asserting (tests/support/reports.py)."""
    print_reports(terminalreporter)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``pg`` over the selected installations and ``pg_tls`` over the OpenSSL-capable ones."""
    spec = metafunc.config.getoption("--pg")
    for name, need_ssl in (("pg", False), ("pg_tls", True)):
        if name in metafunc.fixturenames:
            chosen: list[PgInstallation | None] = list(select_installations(spec, require_ssl=need_ssl))
            ids = [i.id if i else "nopg" for i in chosen]
            if not chosen:
                chosen, ids = [None], ["nopg"]
            metafunc.parametrize(name, chosen, ids=ids, indirect=True, scope="session")


def _cluster(request: pytest.FixtureRequest, pool: ClusterPool, need_ssl: bool) -> PgCluster:
    """The pooled cluster for ``request.param``; skip (fail under CI with default selection) if none."""
    inst: PgInstallation | None = getattr(request, "param", None)
    if inst is None:
        what = "with OpenSSL support " if need_ssl else ""
        msg = f"no PostgreSQL installation {what}selected/found ({describe(find_installations())})"
        explicit = request.config.getoption("--pg") or os.environ.get(ENV_SELECT)
        if os.environ.get("CI") and not explicit:
            pytest.fail(msg)
        pytest.skip(msg)
    return pool.get(inst)


@pytest.fixture(scope="session")
def pg_pool() -> Iterator[ClusterPool]:
    """One lazily started cluster per installation, shared by ``pg`` and ``pg_tls``; stopped at session end."""
    pool = ClusterPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def pg(request: pytest.FixtureRequest, pg_pool: ClusterPool) -> PgCluster:
    """A running PgCluster (parametrized: pg15, pg18, ...). TLS is on if the build supports it."""
    return _cluster(request, pg_pool, need_ssl=False)


@pytest.fixture(scope="session")
def pg_tls(request: pytest.FixtureRequest, pg_pool: ClusterPool) -> PgCluster:
    """A running PgCluster with TLS on (``ca_file`` set); only OpenSSL-built installations."""
    cluster = _cluster(request, pg_pool, need_ssl=True)
    assert cluster.ssl_enabled and cluster.ca_file is not None
    return cluster


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA plus a server cert/key for localhost/127.0.0.1/::1 (e.g. for the proxy's listener)."""
    return make_certs(tmp_path_factory.mktemp("tls"), client_names=("alice",))
