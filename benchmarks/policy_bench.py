"""Per-statement policy decision time on the BI fixture corpus: uncached (gate, rewrite, verify) and cached.

Run from the repository root:  .venv/bin/python -m benchmarks.policy_bench [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.policy import Allow, DecisionCache, Deny, Rewrite, decide  # noqa: E402
from tests.unit.policy.policy_corpus import case_policy, load_cases  # noqa: E402


def _us(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_us": round(statistics.median(ordered) * 1e6, 1),
        "p95_us": round(ordered[int(len(ordered) * 0.95) - 1] * 1e6, 1) if len(ordered) > 1 else 0.0,
        "max_us": round(ordered[-1] * 1e6, 1),
        "n": len(ordered),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="uncached decisions per statement (median taken)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    cases = load_cases()
    by_outcome: dict[str, list[float]] = {"allow": [], "rewrite": [], "deny": []}
    stages: dict[str, list[float]] = {"gate": [], "rewrite": [], "verify": []}
    bi_rewrites: list[float] = []
    for case in cases:
        policy = case_policy(case)
        times: list[float] = []
        last_stages: dict[str, float] = {}
        decision = None
        for _ in range(args.repeat):
            st: dict[str, float] = {}
            t0 = time.perf_counter()
            decision = decide(policy, case.sql, st)
            times.append(time.perf_counter() - t0)
            last_stages = st
        t = statistics.median(times)
        kind = "rewrite" if isinstance(decision, Rewrite) else "deny" if isinstance(decision, Deny) else "allow"
        assert isinstance(decision, Allow | Rewrite | Deny)
        by_outcome[kind].append(t)
        if kind == "rewrite":
            for name, seconds in last_stages.items():
                stages[name].append(seconds)
            if case.file == "bi_clients.txt":
                bi_rewrites.append(t)
    cache = DecisionCache()
    for case in cases:
        cache.get_or_decide(case_policy(case), case.sql)
    cached: list[float] = []
    for _ in range(args.repeat):
        for case in cases:
            policy = case_policy(case)
            t0 = time.perf_counter()
            cache.get_or_decide(policy, case.sql)
            cached.append(time.perf_counter() - t0)
    result = {
        "statements": len(cases),
        "uncached": {k: _us(v) for k, v in by_outcome.items() if v},
        "uncached_bi_client_rewrites": _us(bi_rewrites) if bi_rewrites else None,
        "rewrite_stages": {k: _us(v) for k, v in stages.items() if v},
        "cached": _us(cached),
        "target": "uncached rewrite+verify median <= 300 us",
    }
    print(f"policy decisions over {len(cases)} fixture statements (median of {args.repeat} runs each)\n")
    print("| what | median µs | p95 µs | max µs | n |\n|---|---|---|---|---|")
    rows = [(f"uncached {k}", v) for k, v in result["uncached"].items()]
    if bi_rewrites:
        rows.append(("uncached rewrite, BI-client corpus", result["uncached_bi_client_rewrites"]))
    rows += [(f"  stage {k}", v) for k, v in result["rewrite_stages"].items()] + [("cached", result["cached"])]
    for name, v in rows:
        print(f"| {name} | {v['median_us']} | {v['p95_us']} | {v['max_us']} | {v['n']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
