"""What the idle_in_transaction_timeout tests read: the locks on the shared `orders`, the sessions the bound ended."""

from __future__ import annotations

import urllib.request

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess


def orders_locks(pg: PgCluster) -> list[tuple]:
    """The locks sessions of `saas` hold on public.orders."""
    return pg.execute("SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                      "WHERE l.relation = 'public.orders'::regclass AND a.datname = 'saas'", dbname="saas")


def idle_ends(p: ProxyProcess) -> float:
    """pgtenant_limit_refusals_total{limit="idle_in_transaction_timeout"}, every tenant label."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(ln.split()[-1]) for ln in lines if ln.startswith("pgtenant_limit_refusals_total{")
               and 'limit="idle_in_transaction_timeout"' in ln)
