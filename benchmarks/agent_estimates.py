#!/usr/bin/env python3
"""What the agent profile's admission EXPLAIN estimates reflect in the shared strategy (red team 6 F7): the row
estimate of `SELECT 1 FROM orders o WHERE <predicate>` as the statement PostgreSQL runs (before: its tenant-column
references as written) and as the admission plans it (after: policy/estimates.py), for predicates on the tenant column
and on another column, over two tenants' rows of distinct `amount` ranges.

Run from the repo root:  .venv/bin/python benchmarks/agent_estimates.py   (starts a throwaway PostgreSQL; seconds)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.policy import TenantPolicy, decide  # noqa: E402
from proxy.policy.agent import agent_policy  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.pgcluster import PgCluster  # noqa: E402

PREDICATES = ["o.tenant_id = 'acme'", "o.tenant_id >= 'b'", "o.tenant_id >= 'u'", "o.tenant_id >= 'umbrella'",
              "o.tenant_id > 'umbrella'", "o.tenant_id >= 'v'", "o.tenant_id >= 'zzz'", "true",
              "o.amount > 500", "o.amount > 1500", "o.amount > 2500", "o.amount <= 50"]


def main() -> int:
    installation = pgcluster.default_installation()
    pg = PgCluster(installation, ssl=False)
    pg.start()
    try:
        pg.execute("""
          CREATE TABLE orders (id int PRIMARY KEY, tenant_id text NOT NULL, amount numeric NOT NULL);
          INSERT INTO orders SELECT g, 'acme', (g % 100) + 1 FROM generate_series(1, 36000) g;
          INSERT INTO orders SELECT 100000 + g, 'umbrella', 1000 + (g % 1000) FROM generate_series(1, 1500) g;
          ANALYZE orders;""")
        base = TenantPolicy(tenant="acme", strategy="shared", tenant_value="acme",
                            scoped_tables={("public", "orders"): "tenant_id"}, tenant_setting="pgtenant.tenant_id")
        agent = agent_policy(base, 1000)

        def rows(sql: str) -> float:
            out = pg.execute("EXPLAIN (FORMAT JSON) " + sql)[0][0]
            top = (out if isinstance(out, list) else json.loads(out))[0]["Plan"]
            below = top["Plans"][0] if top.get("Node Type") == "Limit" and top.get("Plans") else top
            return float(below["Plan Rows"])

        print(f"PostgreSQL {installation.version}; acme 36000 rows (amount 1..100), umbrella 1500 (amount 1000..1999)")
        print("| predicate | estimate before | estimate after | acme's true rows |")
        print("|---|---:|---:|---:|")
        for pred in PREDICATES:
            decision = decide(agent, f"SELECT 1 FROM orders o WHERE {pred}")
            sql = decision.sql  # type: ignore[union-attr]
            explain = getattr(decision, "explain", None) or sql
            true = pg.execute(f"SELECT count(*) FROM orders o WHERE tenant_id = 'acme' AND ({pred})")[0][0]
            print(f"| `{pred}` | {rows(sql):g} | {rows(explain):g} | {true} |")
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
