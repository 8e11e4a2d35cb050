"""Python CPU per pgbench -S transaction of a transaction-pooled session's routing, without sockets: the session asks
for a server (route "auto": is the request provably read-only), the router picks a replica, the session relays the
Query through the policy gate, the answer and the release; against route "primary" (the same session, not routed).

Run from the repository root:  .venv/bin/python -m benchmarks.routing_bench [--reps 15] [--txns 10000]
`--count ROUTE:N` runs N transactions once and exits: wrap it in `valgrind --tool=callgrind` (twice, different N)
for exact instructions per transaction. "auto-text" is route "auto" with the text judged apart from the policy
decision (replicas.read_only_request: how routing judged a request before its verdict was part of the decision).
What it leaves out (the pool's queues and metrics, uvloop, the kernel) is what benchmarks/replica_routing.py measures.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.actions import AcquireServer  # noqa: E402
from proxy.auth.throttle import AuthThrottle  # noqa: E402
from proxy.config import ReplicaConfig, RoutingConfig  # noqa: E402
from proxy.policy import TenantPolicy  # noqa: E402
from proxy.policy.cache import DecisionCache, Gate  # noqa: E402
from proxy.registry import Tenant  # noqa: E402
from proxy.replicas import Router  # noqa: E402
from proxy.session import ClientSession  # noqa: E402
from tests.support.sessions import login, make_config, server_for  # noqa: E402

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
POLICY = TenantPolicy(tenant="acme", strategy="database")  # a passthrough tenant: what differs is the routing
ROUTES = ("primary", "auto", "auto-text")


def _frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class _TextGate:
    """The gate without its cache lookup for routing (`cached`): the session judges the text itself."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(self, kind: str, sql: str) -> object:
        return self.gate(kind, sql)


def routed_session(workdir: Path, route: str) -> tuple[ClientSession, Router]:
    """A logged-in transaction-pooled session of a backend with replica r1, and the router its pool would ask."""
    cfg = make_config(workdir, pool={"pool_mode": "transaction"})
    cfg = replace(cfg, backends={"main": replace(cfg.backends["main"], replicas=(ReplicaConfig("r1"),))},
                  routing=RoutingConfig(route="primary" if route == "primary" else "auto"))  # type: ignore[arg-type]
    router = Router(cfg)
    replicas = router.sets["main"]
    replicas.primary_polled(0.0, False, "0/10")
    replicas.replica_polled("r1", 1.0, True, "0/10")  # healthy and caught up
    session = ClientSession(cfg, session_id="s1", client_address="10.0.0.1", throttle=AuthThrottle(max_failures=2),
                            clock=lambda: 1.0, tls_available=False)
    login(session)
    gate = Gate(DecisionCache(), lambda _name: POLICY, Tenant("acme", "database", "acme"), lambda _s, _t: None)
    session.enable_policy(_TextGate(gate) if route == "auto-text" else gate, gate.current)
    session.server_attached(server_for(session))  # the login's server, given back at once
    return session, router


def run(session: ClientSession, router: Router, start: int, count: int) -> float:
    """CPU seconds for `count` transactions: request, routing, server lent, Query relayed, answer, release."""
    queries = [_frame(b"Q", SQL.format(start + i).encode() + b"\x00") for i in range(1000)]  # distinct literals
    answer = _frame(b"C", b"SELECT 1\x00") + _frame(b"Z", b"I")
    primary, replica = server_for(session), server_for(session)
    replica.replica = "r1"
    t0 = time.process_time()
    for i in range(count):
        [acquire] = session.client_data(queries[i % 1000])
        assert type(acquire) is AcquireServer
        choice = router.choose("main", acquire.route, 2.0, "acme")
        session.server_attached(primary if choice.replica is None else replica)
        session.server_data(answer)
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--txns", type=int, default=10_000)
    ap.add_argument("--count", help="ROUTE:N, one run (for callgrind)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.count:
            route, _, n = args.count.partition(":")
            session, router = routed_session(Path(tmp), route)
            run(session, router, 0, int(n))
            return 0
        print("| route | Python µs per transaction (best of reps) |")
        print("|---|---:|")
        for route in ROUTES:
            workdir = Path(tmp) / route
            workdir.mkdir()
            session, router = routed_session(workdir, route)
            run(session, router, 0, min(1000, args.txns))  # warm the caches
            best = min(run(session, router, (r + 1) * args.txns, args.txns) for r in range(args.reps))
            print(f"| {route} | {best / args.txns * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
