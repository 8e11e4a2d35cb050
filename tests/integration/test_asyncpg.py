"""asyncpg through pgtenant: binary protocol, named statements, binary COPY, cancel, quoted client_encoding."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import asyncpg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.pools import pooled_proxy
from tests.support.proxyproc import ProxyProcess


def _run(coro):
    return asyncio.run(coro)


def test_binary_named_statements(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("ivan"), ssl=False)
        try:
            # asyncpg sends client_encoding='utf-8' (quoted) and names every statement __asyncpg_stmt_N__.
            assert await conn.fetchval("SHOW client_encoding") == "UTF8"
            stmt = await conn.prepare("SELECT $1::int8 * 2, $2::numeric, $3::text[]")
            for i in range(10):
                row = await stmt.fetchrow(i, "2.5", ["a", "b"])
                assert tuple(row) == (2 * i, Decimal("2.5"), ["a", "b"])
            rows = await conn.fetch("SELECT id, amount FROM orders ORDER BY id")
            assert [r["id"] for r in rows] == list(range(1, 8))
        finally:
            await conn.close()

    _run(main())


def test_cursor_portal_and_transaction(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("ivan"), ssl=False)
        try:
            async with conn.transaction():
                n = 0
                async for _ in conn.cursor("SELECT g FROM generate_series(1, 5000) g", prefetch=100):
                    n += 1
                assert n == 5000
        finally:
            await conn.close()

    _run(main())


@pytest.fixture(scope="module", params=["session", "transaction"])
def pooled(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    """A proxy in each pool mode."""
    p = pooled_proxy(pg, tmp_path_factory.mktemp(f"asyncpg-{request.param}"), pool_mode=request.param)
    yield p
    p.stop()


@pytest.mark.parametrize("user", ["alice", "gina"])
def test_cursor_forward_moves_its_portal_by_sql(pooled: ProxyProcess, user: str) -> None:
    """asyncpg's `Cursor.forward(n)` sends a Query `MOVE FORWARD n __asyncpg_portal_N__` on the portal its cursor
    Bound: that portal's SELECT changes no session state, so PostgreSQL moves it (review 19a F2: it was refused,
    0A000, in every pool mode)."""
    async def main() -> None:
        conn = await asyncpg.connect(pooled.url(user), ssl=False)
        try:
            async with conn.transaction():
                cur = await conn.cursor("SELECT g FROM generate_series(1, 10) g")
                assert await cur.forward(3) == 3
                assert (await cur.fetchrow())[0] == 4
                assert await cur.forward(100) == 6
                assert await cur.fetchrow() is None
        finally:
            await conn.close()

    _run(main())


@pytest.mark.parametrize("user", ["alice", "gina"])
def test_a_pool_releases_its_connection(pooled: ProxyProcess, user: str) -> None:
    """asyncpg's `Pool` resets a connection on release with one Query `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL;` (red team 20a F4: the first statement was refused advisory_lock_shared for shared and
    schema tenants, so every `async with pool.acquire()` raised 42501 on leaving). The unlock frees only the session's
    own advisory locks, which a tenant that may not take one never holds; the pool's next acquire works."""
    async def main() -> None:
        pool = await asyncpg.create_pool(pooled.url(user), ssl=False, min_size=1, max_size=1)
        try:
            for i in range(3):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
        finally:
            await pool.close()

    _run(main())


def test_an_advisory_lock_stays_refused_beside_the_unlock(pooled: ProxyProcess) -> None:
    """Only the unlock of all is allowed outside a tenant's own database: taking a lock keyed in the space other
    tenants' sessions share stays refused."""
    async def main() -> None:
        conn = await asyncpg.connect(pooled.url("alice"), ssl=False)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="advisory_lock_shared"):
                await conn.fetchval("SELECT pg_advisory_lock(42)")
            assert await conn.fetchval("SELECT pg_advisory_unlock_all()") is None  # void
        finally:
            await conn.close()

    _run(main())


def test_binary_copy(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("ivan"), ssl=False)
        try:
            await conn.execute("CREATE TEMP TABLE t_bin (id int, label text)")
            await conn.copy_records_to_table("t_bin", records=[(i, f"r{i}") for i in range(2000)])
            assert await conn.fetchval("SELECT count(*) FROM t_bin") == 2000
            out = []

            async def sink(chunk: bytes) -> None:
                out.append(chunk)

            await conn.copy_from_query("SELECT * FROM t_bin", output=sink, format="binary")
            assert b"".join(out).startswith(b"PGCOPY\n\xff\r\n\x00")
        finally:
            await conn.close()

    _run(main())


def test_cancel_via_timeout(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("ivan"), ssl=False)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(600)", timeout=0.5)  # asyncpg cancels on timeout
            # Usable again only once the backend answered the sleep: had the cancel not reached it, this would
            # wait past the test's timeout (300 s) instead.
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    _run(main())


def test_errors_keep_sqlstate(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("ivan"), ssl=False)
        try:
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM nope")
            assert await conn.fetchval("SELECT 5") == 5
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://ivan:wrong@127.0.0.1:{proxy.port}/initech", ssl=False)
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(proxy.url("ivan", dbname="saas"), ssl=False)

    _run(main())


def test_tls(proxy: ProxyProcess, tls_certs) -> None:
    import ssl

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=str(tls_certs.ca_file))
        conn = await asyncpg.connect(proxy.url("alice"), ssl=ctx)
        try:
            assert await conn.fetchval("SELECT current_setting('pgtenant.tenant_id')") == "acme"
        finally:
            await conn.close()

    _run(main())
