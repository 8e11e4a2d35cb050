"""A large ErrorResponse is cut as it arrives (red team 9a8 N3): each field to errcut.FIELD_LIMIT bytes, never held
whole; both pool modes, both protocols."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol.errcut import FIELD_LIMIT
from tests.support.peak import peak_kb, reset_peak
from tests.support.pgcluster import PgCluster
from tests.support.pools import pooled_proxy
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[
        ProxyProcess]:
    p = pooled_proxy(pg, tmp_path_factory.mktemp("large-errors"), pool_mode=request.param)
    yield p
    p.stop()


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_an_error_quoting_a_huge_value_is_cut_and_never_held_whole(proxy: ProxyProcess, protocol: str) -> None:
    """`SELECT repeat('x', N)::int`: PostgreSQL's 22P02 quotes the whole value. 20 MB of it cost the proxy ~60 MB of
    peak memory (held whole, joined, decoded); now the message is cut to FIELD_LIMIT bytes and "…", its SQLSTATE
    kept, and the session goes on."""
    assert proxy.proc is not None
    factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(proxy.dsn("alice"), autocommit=True, cursor_factory=factory) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        reset_peak(proxy.proc.pid)
        before = peak_kb(proxy.proc.pid)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            c.execute("SELECT repeat('x', 20000000)::int")
        grown = peak_kb(proxy.proc.pid) - before
        message = info.value.diag.message_primary or ""
        assert message.startswith('invalid input syntax for type integer: "xxx') and message.endswith("…"), \
            message[:100]
        assert len(message.encode()) <= FIELD_LIMIT + 3
        assert grown < 8_000, grown  # kB: the error is 20,000 kB
        assert c.execute("SELECT 2").fetchone() == (2,)

