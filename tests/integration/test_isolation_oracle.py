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
counted and the refusal rate is printed at the end (and must be reported, i.e. the summary test runs).
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


@pytest.fixture(scope="module")
def oracle(pg: PgCluster, oracle_proxy: ProxyProcess) -> Iterator[Oracle]:
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


def test_refusal_rate_reported(oracle: Oracle, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the parametrized queries (same module, later in the file): prints the refusal rate."""
    tally = oracle.tally
    if tally.runs != len(QUERIES) * len(TENANTS) * 2:
        pytest.skip("the refusal rate needs the whole module to run")
    refused = sorted({q for q, _, _, _ in tally.refusals})
    rate = len(refused) / len(QUERIES)
    lines = [
        f"bi oracle: {len(QUERIES)} queries x {len(TENANTS)} tenants x 2 protocols = {tally.runs} proxy runs; "
        f"refused {len(tally.refusals)} runs, {len(refused)} distinct queries (refusal rate {rate:.1%})",
        *(f"  refused: {q} [{t}/{p}]: {msg}" for q, t, p, msg in tally.refusals),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert rate <= 1.0
