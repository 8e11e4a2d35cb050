"""Result-equality oracle: BI queries through pgtenant with RLS OFF must equal PostgreSQL's own RLS answer.

For every shared tenant T (acme, bigco, smallco) and every query of ``tests/fixtures/bi_queries.sql``:

* **through the proxy**: as T's login (``n_acme`` …) on ``bi_shared_norls``, where row-level security is disabled
  after provisioning -- only the proxy's rewrite keeps other tenants' rows out; sent once with the simple protocol
  and once with the extended protocol (named statement);
* **directly**: the same text as role ``bi_direct`` (not an owner, NOBYPASSRLS, forced RLS with a policy of
  its own keyed like pgtenant's, which is for pgtenant's backend roles only) on the RLS-enabled ``bi_shared``,
  with ``pgtenant.tenant_id = T`` and the same search_path.

The two must agree: column names and rows as multisets (and row order for queries marked ``-- @ordered``).
A query the proxy refuses (an ErrorResponse from pgtenant itself) is a *refusal*, not a mismatch; refusals are
counted, and the refusal rate of the queries that ran is printed in pytest's summary (a figure to report, not
an assertion: tests/support/reports.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import bidata
from tests.support.bidata import PqClient, Result
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_PASSWORD, ProxyProcess
from tests.support.reports import report

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "bi_queries.sql"
TENANTS = {"acme": "n_acme", "bigco": "n_bigco", "smallco": "n_small"}  # tenant_id -> login on bi_shared_norls


@dataclass(frozen=True)
class BiQuery:
    name: str
    sql: str
    ordered: bool


def load_corpus(path: Path = CORPUS) -> list[BiQuery]:
    """The `-- @query name` blocks of the corpus file (see its header)."""
    out: list[BiQuery] = []
    name: str | None = None
    ordered = False
    lines: list[str] = []

    def flush() -> None:
        if name is not None:
            text = "\n".join(lines).strip().rstrip(";").strip()
            assert text, f"query {name} is empty"
            out.append(BiQuery(name, text, ordered))

    for line in path.read_text().splitlines():
        m = re.match(r"--\s*@query\s+(\S+)\s*$", line)
        if m:
            flush()
            name, ordered, lines = m.group(1), False, []
        elif re.match(r"--\s*@ordered\s*$", line):
            ordered = True
        elif name is not None:
            lines.append(line)
    flush()
    names = [q.name for q in out]
    assert len(names) == len(set(names)), "duplicate query names in the corpus"
    return out


QUERIES = load_corpus()


@dataclass
class Tally:
    runs: int = 0
    refusals: list[tuple[str, str, str, str]] = field(default_factory=list)  # (query, tenant, protocol, message)


class Oracle:
    def __init__(self, proxy: ProxyProcess, pg: PgCluster) -> None:
        self.proxy = proxy
        self.pg = pg
        self.via_proxy: dict[str, PqClient] = {}
        self.direct: dict[str, PqClient] = {}
        self.tally = Tally()

    def proxy_client(self, tenant: str) -> PqClient:
        c = self.via_proxy.get(tenant)
        if c is None or c.broken:
            user = TENANTS[tenant]
            c = self.via_proxy[tenant] = PqClient(self.proxy.dsn(user, dbname=bidata.NORLS_DB))
        return c

    def direct_client(self, tenant: str) -> PqClient:
        c = self.direct.get(tenant)
        if c is None or c.broken:
            c = self.direct[tenant] = PqClient(self.pg.dsn(
                bidata.DIRECT_ROLE, bidata.DIRECT_PASSWORD, bidata.SHARED_DB, sslmode="disable",
                options=f"-c search_path=public -c pgtenant.tenant_id={tenant}",
            ))
        return c

    def close(self) -> None:
        for c in [*self.via_proxy.values(), *self.direct.values()]:
            c.close()


oracle_proxy = bidata.bi_proxy_fixture(norls=True, name="oracle_proxy")


def refusal_report(pg: PgCluster, tally: Tally) -> list[str]:
    """The refusal rate over the corpus queries that ran through the proxy, and each refusal."""
    queries = {q for q, _, _, _ in tally.refusals}
    ran = tally.runs // (2 * len(TENANTS)) or 1
    return [
        f"bi oracle ({pg.installation.id}): {tally.runs} proxy runs (2 protocols x {len(TENANTS)} tenants); refused "
        f"{len(tally.refusals)} runs, {len(queries)} distinct queries (refusal rate {len(queries) / ran:.1%})",
        *(f"  refused: {q} [{t}/{p}]: {msg}" for q, t, p, msg in tally.refusals),
    ]


@pytest.fixture(scope="module")
def oracle(request: pytest.FixtureRequest, pg: PgCluster, oracle_proxy: ProxyProcess) -> Iterator[Oracle]:
    o = Oracle(oracle_proxy, pg)
    try:
        # The premise: behind the proxy RLS really is off (the table holds every tenant's rows for the backend
        # role), and directly it really is on.
        rls = pg.execute("SELECT bool_or(relrowsecurity) FROM pg_class WHERE relname = 'orders'",
                         dbname=bidata.NORLS_DB)
        assert rls == [(False,)]
        total = sum(bidata.own_counts(k)["orders"] for k in bidata.SHARED_KEYS)
        backend = PqClient(pg.dsn(bidata.BACKEND_ROLE, BACKEND_PASSWORD, bidata.NORLS_DB, sslmode="disable",
                                  options="-c pgtenant.tenant_id=acme"))
        try:
            assert backend.simple("SELECT count(*) FROM orders")[0].rows == [(str(total),)]
        finally:
            backend.close()
        for tenant in TENANTS:
            assert o.direct_client(tenant).simple("SELECT count(*) FROM orders")[0].rows == [
                (str(bidata.own_counts(tenant)["orders"]),)
            ]
        yield o
        if o.tally.runs:
            report(request.config, *refusal_report(pg, o.tally))
    finally:
        o.close()


def _errors(results: list[Result]) -> list[Result]:
    return [r for r in results if r.kind == "error"]


def _first_line(r: Result) -> str:
    return r.message.strip().splitlines()[0] if r.message.strip() else (r.sqlstate or "")


@pytest.mark.parametrize("tenant", list(TENANTS))
@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_bi_query_matches_rls(oracle: Oracle, query: BiQuery, tenant: str) -> None:
    direct = oracle.direct_client(tenant).simple(query.sql)
    assert not _errors(direct), f"the reference query itself fails: {_first_line(_errors(direct)[0])}"
    expected = [r for r in direct if r.kind == "rows"]
    assert len(expected) == 1
    mismatches = []
    for protocol in ("simple", "extended"):
        client = oracle.proxy_client(tenant)
        got = client.simple(query.sql) if protocol == "simple" else client.extended(query.sql)
        if client.in_transaction:
            client.simple("ROLLBACK")
        oracle.tally.runs += 1
        errors = _errors(got)
        if errors and all(e.denied_by_proxy for e in errors):
            oracle.tally.refusals.append((query.name, tenant, protocol, _first_line(errors[0])))
            continue
        if errors:
            mismatches.append(f"{protocol}: the rewritten query failed in PostgreSQL: {_first_line(errors[0])}")
            continue
        rows = [r for r in got if r.kind == "rows"]
        if bidata.rows_key(rows) != bidata.rows_key(expected):
            mismatches.append(_diff(protocol, rows, expected))
        elif query.ordered and rows[0].rows != expected[0].rows:
            mismatches.append(f"{protocol}: same rows, different order")
    assert not mismatches, "\n".join(mismatches)


def _diff(protocol: str, got: list[Result], expected: list[Result]) -> str:
    if not got:
        return f"{protocol}: no rows result"
    g, e = got[0], expected[0]
    if g.columns != e.columns:
        return f"{protocol}: columns {g.columns} != {e.columns}"
    extra = set(g.rows) - set(e.rows)
    missing = set(e.rows) - set(g.rows)
    return (f"{protocol}: {len(g.rows)} rows vs {len(e.rows)} expected; "
            f"extra {sorted(extra, key=str)[:3]}; missing {sorted(missing, key=str)[:3]}")


def test_corpus_size() -> None:
    assert len(QUERIES) >= 60, len(QUERIES)


# -- whole-row references and TABLESAMPLE on tables under forced RLS (the default deployment) ------------------
# The strict shared tenants (t_*) reach bi_shared, where every scoped table has forced RLS: the proxy keeps the
# relation of an item named as a row, so the column has the table's row type, as it has directly.

STRICT = {"acme": "t_acme", "bigco": "t_bigco", "smallco": "t_small"}
ROW_QUERIES = [
    "SELECT p FROM products p WHERE p.id % 7 = 0 ORDER BY p.id",
    "SELECT products FROM products WHERE id % 5 = 0 ORDER BY id",
    "SELECT o, c.name FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 50",
    "SELECT c.id, (array_agg(o ORDER BY o.id))[1] FROM customers c LEFT JOIN orders o ON o.customer_id = c.id"
    " GROUP BY c.id ORDER BY c.id",
    "SELECT (o).id, o.*, o FROM ONLY orders AS o WHERE o.id % 11 = 0 ORDER BY o.id",
    "SELECT o, c FROM orders o TABLESAMPLE BERNOULLI (100) JOIN customers c ON c.id = o.customer_id"
    " ORDER BY o.id",
]


@pytest.mark.parametrize("tenant", list(STRICT))
@pytest.mark.parametrize("sql", ROW_QUERIES)
def test_whole_row_column_has_the_tables_row_type(oracle: Oracle, pg: PgCluster, sql: str, tenant: str) -> None:
    direct = oracle.direct_client(tenant).simple(sql)
    assert [r.kind for r in direct] == ["rows"], direct
    row_types = dict(pg.execute("SELECT typname::text, oid::int FROM pg_type WHERE typname IN ('orders', 'products')"
                                " AND typnamespace = 'public'::regnamespace", dbname=bidata.SHARED_DB))
    assert set(direct[0].types) & set(row_types.values())  # the premise: a column of a row type
    client = PqClient(oracle.proxy.dsn(STRICT[tenant], dbname=bidata.SHARED_DB))
    try:
        for got in (client.simple(sql), client.extended(sql)):
            assert [r.kind for r in got] == ["rows"], got
            assert got[0].types == direct[0].types  # RowDescription: the same type OIDs
            assert got[0].columns == direct[0].columns and got[0].rows == direct[0].rows
    finally:
        client.close()


@pytest.mark.parametrize("tenant", list(STRICT))
def test_psycopg_loads_the_composite_through_the_proxy(oracle: Oracle, pg: PgCluster, tenant: str) -> None:
    """psycopg's composite support (CompositeInfo from the catalogs, register_composite) works through the proxy:
    a whole-row column comes back as the registered Python type, equal to PostgreSQL's own answer, in text and
    binary format."""
    import psycopg
    from psycopg.types.composite import CompositeInfo, register_composite

    sql = "SELECT o FROM orders o WHERE o.id % 9 = 0 ORDER BY o.id"
    direct_dsn = pg.dsn(bidata.DIRECT_ROLE, bidata.DIRECT_PASSWORD, bidata.SHARED_DB, sslmode="disable",
                        options=f"-c pgtenant.tenant_id={tenant}")
    with psycopg.connect(direct_dsn, autocommit=True) as direct:
        info = CompositeInfo.fetch(direct, "orders")
        assert info is not None
        register_composite(info, direct)
        expected = direct.execute(sql).fetchall()
    assert expected and type(expected[0][0]).__name__ == "orders"
    with psycopg.connect(oracle.proxy.dsn(STRICT[tenant], dbname=bidata.SHARED_DB), autocommit=True) as conn:
        info = CompositeInfo.fetch(conn, "orders")
        assert info is not None
        register_composite(info, conn)
        for binary in (False, True):
            got = conn.cursor(binary=binary).execute(sql).fetchall()
            assert got == expected
            assert type(got[0][0]).__name__ == "orders" and got[0][0].id == expected[0][0].id


@pytest.mark.parametrize("tenant", list(STRICT))
def test_tablesample_is_the_rls_sample(oracle: Oracle, tenant: str) -> None:
    """TABLESAMPLE BERNOULLI through the proxy draws the sample from the table, then keeps the tenant's rows: what
    PostgreSQL's forced RLS gives (all of them at 100 percent); never another tenant's."""
    sql = "SELECT o.id, o.tenant_id FROM orders o TABLESAMPLE BERNOULLI (100) ORDER BY o.id"
    direct = oracle.direct_client(tenant).simple(sql)
    assert [r.kind for r in direct] == ["rows"], direct
    client = PqClient(oracle.proxy.dsn(STRICT[tenant], dbname=bidata.SHARED_DB))
    try:
        runs = [client.simple(sql), client.extended(sql)]
        sampled = client.simple("SELECT o.id, o.tenant_id FROM orders o TABLESAMPLE BERNOULLI (20)")
    finally:
        client.close()
    for got in runs:
        assert [r.kind for r in got] == ["rows"], got
        assert got[0].rows == direct[0].rows
    assert {t for _, t in direct[0].rows} <= {tenant} and len(direct[0].rows) == bidata.own_counts(tenant)["orders"]
    assert [r.kind for r in sampled] == ["rows"] and {t for _, t in sampled[0].rows} <= {tenant}, sampled


@pytest.mark.parametrize("tenant", list(STRICT))
@pytest.mark.parametrize("sample", ["BERNOULLI (20) REPEATABLE (11)", "SYSTEM (35) REPEATABLE (5)", "SYSTEM (35)"])
def test_tablesample_by_page_or_seed_is_refused(oracle: Oracle, tenant: str, sample: str) -> None:
    """Red team 9a7 H6: a sample by page (SYSTEM) or repeated by seed (REPEATABLE) tells where the tenant's rows are
    stored among the other tenants' (what ctid would): refused by the proxy, though forced RLS would run it."""
    sql = f"SELECT o.id, o.tenant_id FROM orders o TABLESAMPLE {sample} ORDER BY o.id"
    assert [r.kind for r in oracle.direct_client(tenant).simple(sql)] == ["rows"]  # the premise
    client = PqClient(oracle.proxy.dsn(STRICT[tenant], dbname=bidata.SHARED_DB))
    try:
        for got in (client.simple(sql), client.extended(sql)):
            errors = [r for r in got if r.kind == "error"]
            assert errors and errors[0].sqlstate == "42501" and "(rule row_sampling)" in errors[0].message, got
    finally:
        client.close()
