"""Review 18 F1/F2: names the proxy filters reached through the search_path and PostgreSQL's plan cache.
An unqualified information_schema view name on a search_path holding information_schema is filtered as the
qualified one is, and a SQL prepared statement PostgreSQL would analyse again after a temporary relation was made or
dropped or the search_path changed is refused (`prepared_elsewhere`), its EXPLAIN EXECUTE too. A function in a schema
hidden from the tenant never listed. Shared (alice), database sharing its database (dan), schema (gina); both pool
modes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.test_plan_shapes import _connect, proxies  # noqa: F401  (the module's proxies)
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess

HIDDEN_IN = {"alice": "globex", "dan": "globex", "gina": "othert"}


@pytest.fixture
def secret_function(pg: PgCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    schema = HIDDEN_IN[request.node.callspec.params["user"]]
    pg.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; CREATE OR REPLACE FUNCTION {schema}.zz_secret_fn() "
               "RETURNS int LANGUAGE sql AS 'SELECT 1'", dbname="saas")
    yield schema
    pg.execute(f"DROP FUNCTION {schema}.zz_secret_fn()" + ("; DROP SCHEMA othert" if schema == "othert" else ""),
               dbname="saas")


def _rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def _sqlstate(conn: psycopg.Connection[Any], sql: str) -> str | None:
    try:
        conn.execute(sql)
    except psycopg.errors.Error as exc:
        return exc.sqlstate
    return None


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("user", ["alice", "dan", "gina"])
def test_hidden_functions_stay_unlisted_through_the_path_and_the_plan_cache(
        proxies: dict[str, ProxyProcess], secret_function: str, user: str, mode: str) -> None:  # noqa: F811
    with _connect(proxies[mode], user) as conn:
        conn.execute("CREATE TEMP TABLE routines (routine_schema text, routine_name text)")
        conn.execute("PREPARE r AS SELECT routine_schema::text, routine_name::text FROM routines")
        conn.execute("DROP TABLE routines")
        conn.execute("SET search_path = information_schema, public")
        like = "WHERE routine_name LIKE 'zz%'"
        assert _rows(conn, f"SELECT routine_schema, routine_name FROM information_schema.routines {like}") == []
        assert _rows(conn, f"SELECT routine_schema, routine_name FROM routines {like}") == []
        assert _sqlstate(conn, "EXECUTE r") == "0A000"
        assert _sqlstate(conn, "EXPLAIN EXECUTE r") in ("0A000", "42501")
        conn.execute("DEALLOCATE r")
        conn.execute("PREPARE r AS SELECT routine_schema::text, routine_name::text FROM routines")
        assert [row for row in _rows(conn, "EXECUTE r") if "zz" in str(row)] == []
        conn.execute("SET search_path = public, information_schema")
        # public may hold a `routines` of the tenant's: qualify it (gina may not use public: the path PostgreSQL
        # gets is information_schema alone, and the name is the view's, filtered)
        if user == "gina":
            assert _rows(conn, f"SELECT routine_schema, routine_name FROM routines {like}") == []
        else:
            assert _sqlstate(conn, "SELECT routine_name FROM routines") == "0A000"
