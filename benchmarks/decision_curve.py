"""Policy decision time against statement count and size: one table per input shape (a curve, printed as rows).

Run from the repository root:  .venv/bin/python -m benchmarks.decision_curve [--sizes 250,1000,4000] [--json out.json]

Each shape is decided as one Query string under the shared-strategy fixture policy, without limits (the engine's
own cost); `µs/KB` stays flat when the cost is linear in the text's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.policy import decide  # noqa: E402
from proxy.policy.tree import parse_json, tree_size  # noqa: E402
from tests.unit.policy.policy_corpus import POLICIES  # noqa: E402

SHAPES: dict[str, Callable[[int], str]] = {
    "n statements": lambda n: "".join(f"SELECT {i % 7} FROM customers;" for i in range(n)),
    "n FROM items": lambda n: "SELECT 1 FROM " + ", ".join(f"customers c{i}" for i in range(n)),
    "n FROM items, ctid": lambda n: "SELECT c0.ctid FROM " + ", ".join(f"customers c{i}" for i in range(n)),
    "n CTEs": lambda n: "WITH " + ", ".join(f"c{i} AS (SELECT * FROM customers)" for i in range(n)) + " SELECT 1",
    "n-member IN list": lambda n: "SELECT * FROM customers WHERE id IN (" + ", ".join(map(str, range(n))) + ")",
    "n OR terms": lambda n: "SELECT * FROM customers WHERE " + " OR ".join(f"id = {i}" for i in range(n)),
    "n scalar subqueries": lambda n: "SELECT " + ", ".join("(SELECT max(id) FROM customers)" for _ in range(n)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250,1000,4000")
    ap.add_argument("--repeat", type=int, default=3, help="decisions per point (median taken)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    policy = POLICIES["shared"]
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, object]] = []
    print("| shape | n | KB | tree nodes | decision | ms | µs/KB |\n|---|---|---|---|---|---|---|")
    for name, make in SHAPES.items():
        for n in sizes:
            sql = make(n)
            times = []
            decision = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                decision = decide(policy, sql)
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
            kb = len(sql) / 1024
            row = {"shape": name, "n": n, "kb": round(kb, 1), "nodes": tree_size(parse_json(sql)),
                   "decision": type(decision).__name__, "ms": round(seconds * 1000, 1),
                   "us_per_kb": round(seconds * 1e6 / kb, 1)}
            rows.append(row)
            print("| " + " | ".join(str(v) for v in row.values()) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
