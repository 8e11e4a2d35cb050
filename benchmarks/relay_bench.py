"""Python CPU per pgbench -S transaction in pgtenant's relay path, without sockets: driver, session, policy
cache, request tracking and metrics, fed the bytes pgbench and PostgreSQL exchange, through fake transports.

Run from the repository root:  .venv/bin/python -m benchmarks.relay_bench [--reps 15] [--txns 10000]
`--count MODE:N` runs N transactions of one mode once and exits: wrap it in
`valgrind --tool=callgrind` (twice, different N) for exact instructions per transaction. `--route primary|auto`:
transaction pooling with a read replica configured (issue 18), every read on it with "auto".
What it leaves out (uvloop, the kernel) is what benchmarks/pgbench_compare.py measures.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.auth.scram import make_verifier  # noqa: E402
from proxy.config import parse_config  # noqa: E402
from proxy.io.backend import ServerLink  # noqa: E402
from proxy.io.client import ClientConnection  # noqa: E402
from proxy.io.listener import Proxy  # noqa: E402
from proxy.logs import configure as configure_logs  # noqa: E402
from proxy.policy import TenantPolicy  # noqa: E402
from proxy.pooling import ServerRequest, server_request  # noqa: E402
from proxy.replicas import routed  # noqa: E402
from proxy.server import ServerConnection, ServerState  # noqa: E402
from proxy.session import ClientSession, State, statement_settings  # noqa: E402

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
USERS = {"initech": "ivan", "acme": "alice"}
POLICIES = {
    "database": TenantPolicy(tenant="initech", strategy="database"),
    "shared": TenantPolicy(tenant="acme", strategy="shared", tenant_value="acme",
                           scoped_tables={("public", "pgbench_accounts"): "tenant_id"}),
}


def _frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def conversation(mode: str) -> tuple[Callable[[int], bytes], bytes]:
    """(client bytes of transaction i, server bytes answering it) as pgbench -S -M mode and PostgreSQL send them."""
    row = _frame(b"D", struct.pack("!hi", 1, 4) + b"1234")
    done = _frame(b"C", b"SELECT 1\x00") + _frame(b"Z", b"I")
    desc = _frame(b"T", struct.pack("!h", 1) + b"abalance\x00" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0))
    sync = _frame(b"S", b"")
    execute = _frame(b"E", b"\x00" + struct.pack("!i", 0))

    def bind(stmt: bytes, i: int) -> bytes:
        value = str(i).encode()
        return _frame(b"B", b"\x00" + stmt + b"\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", len(value))
                      + value + struct.pack("!h", 0))

    param_sql = SQL.format("$1").encode()
    if mode == "simple":
        return (lambda i: _frame(b"Q", SQL.format(i).encode() + b"\x00")), desc + row + done
    if mode == "extended":
        parse = _frame(b"P", b"\x00" + param_sql + b"\x00" + struct.pack("!h", 0))
        describe = _frame(b"D", b"P\x00")
        return (lambda i: parse + bind(b"", i) + describe + execute + sync), (
            _frame(b"1", b"") + _frame(b"2", b"") + desc + row + done)
    if mode == "prepared":
        return (lambda i: bind(b"P0_1", i) + execute + sync), _frame(b"2", b"") + row + done
    raise ValueError(mode)


class _Transport:
    """Stands in for a uvloop transport: takes the writes, counts the bytes."""

    def __init__(self) -> None:
        self.written = 0
        self.protocol: object = None

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_protocol(self) -> object:
        return self.protocol

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        for c in chunks:
            self.written += len(c)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def _proxy(workdir: Path, audit: bool = False, pool_mode: str = "session", route: str | None = None,
           sticky: bool = True) -> Proxy:
    (workdir / "secrets.toml").write_text(f'[users]\nivan = "{make_verifier("pw")}"\nalice = "{make_verifier("pw")}"\n')
    config = parse_config({
        "secrets_file": "secrets.toml",
        "backends": {"main": {"replicas": [{"name": "r1"}]} if route else {}},
        # (a probe's word holds for an hour: under valgrind a thousand transactions outlast the default 8 s)
        **({"routing": {"route": route, "max_replica_lag": 30.0, "probe_timeout": 3600.0}} if route else {}),
        "tenants": {
            "initech": {"strategy": "database", "database": "initech"},
            "acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"},
        },
        "users": {"ivan": {"tenant": "initech"}, "alice": {"tenant": "acme"}},
        "audit": {"enabled": audit, "file": str(workdir / "audit.log")},
        **({"pool": {"pool_mode": "transaction", "sticky_servers": sticky}} if pool_mode == "transaction" else {}),
    }, base=workdir)
    proxy = Proxy(config)
    if route:
        _probed(proxy)
    for policy in POLICIES.values():
        proxy.policies[policy.tenant] = policy
    return proxy


def _logged_in(proxy: Proxy, tenant: str) -> tuple[ClientConnection, ClientSession]:
    """A client connection on a fake transport whose session has its tenant's policy gate (no server yet)."""
    conn = ClientConnection(proxy)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    session = conn.session
    assert session is not None
    if conn._timer is not None:
        conn._timer.cancel()
        conn._timer = None
    conn.tenant = proxy.tenant(tenant)
    gate = proxy.decider(tenant)
    session.enable_policy(gate, gate.current)  # as ClientConnection does once the backend is ready
    return conn, session


def relaying_pair(proxy: Proxy, strategy: str, mode: str) -> tuple[ClientConnection, ServerLink]:
    """A client connection in READY with its policy gate and a relaying server link, on fake transports."""
    tenant = POLICIES[strategy].tenant
    conn, session = _logged_in(proxy, tenant)
    session.state = State.READY
    link = ServerLink(conn, ServerConnection(proxy.config.backends["main"], tenant, {}))
    link.transport = _Transport()  # type: ignore[assignment]
    conn.link = link
    conn.start_relay(link)
    if mode == "prepared":  # the statement pgbench prepares once per connection
        name, sql = b"P0_1", SQL.format("$1").encode()
        from_client, from_server = _readers(conn, link)
        from_client(_frame(b"P", name + b"\x00" + sql + b"\x00" + struct.pack("!h", 0)) + _frame(b"S", b""))
        from_server(_frame(b"1", b"") + _frame(b"Z", b"I"))
    return conn, link


def _probed(proxy: Proxy) -> None:
    """Replica r1 healthy and caught up, as the poller's probes (io/replicas.py) leave it; once a second there."""
    replicas, now = proxy.pool.router.sets["main"], proxy.pool.clock()
    replicas.primary_polled(now, False, "0/10")
    replicas.replica_polled("r1", now, True, "0/10")


def _pooled_server(proxy: Proxy, request: ServerRequest, who: str) -> ServerLink:
    """One server of `request`'s pool, opened and idle in the proxy's real pool."""
    pool, now = proxy.pool, time.monotonic()
    (connect,) = pool.manager.request(who, request, now)  # a server opened for the pool, idle once ready
    server = ServerConnection(request.backend, request.key.database, dict(request.parameters))
    server.id, server.state = connect.server, ServerState.READY  # type: ignore[attr-defined]
    server.replica = request.replica
    link = ServerLink(pool, server)
    link.transport = _Transport()  # type: ignore[assignment]
    pool.links[server.id] = link
    pool.manager.connected(server.id, now)
    pool.manager.released(server.id, reusable=True, reset=False, now=now)
    return link


def pooled_pair(proxy: Proxy, strategy: str, mode: str) -> tuple[ClientConnection, ServerLink]:
    """As `relaying_pair`, in transaction pooling: one idle server in the proxy's real pool (io/pool.py and the
    pool manager), which the session gets at each transaction's first read and gives back at its ReadyForQuery;
    with a replica configured, one idle server of its pool too (the link returned is the one the reads go to)."""
    tenant = POLICIES[strategy].tenant
    conn, session = _logged_in(proxy, tenant)
    request = server_request(proxy.config, tenant)
    assert request.mode == "transaction", "the bench config must pool by transaction"
    session.request, session.pooled = request, True  # as the session's login does (ClientSession._logged_in)
    session.routing = routed(proxy.config, USERS[tenant])
    session._plain_routing()  # (as the login's `_server_request` does: no agent, no isolation setting)
    session.frontend.handlers = session._frontend_tracked()
    cache, size, size_bytes = statement_settings(proxy.config)  # as the login's server attach does: the session
    session.enable_statements({}, cache=cache, cache_size=size, cache_bytes=size_bytes)  # keeps the statements
    assert session.statements is not None
    session.statements.detach()  # (that server given back)
    session.state = State.IDLE
    links = [_pooled_server(proxy, request, "bench")]
    if proxy.config.backends["main"].replicas:
        links.append(_pooled_server(proxy, proxy.pool._replica_request(request, "r1"), "bench-r1"))
    client, answer = conversation(mode)
    if mode == "prepared":  # the statement pgbench prepares once per connection
        name, sql = b"P0_1", SQL.format("$1").encode()
        conn.data_received(_frame(b"P", name + b"\x00" + sql + b"\x00" + struct.pack("!h", 0)) + _frame(b"S", b""))
        answer = _frame(b"1", b"") + _frame(b"Z", b"I")
    else:
        conn.data_received(client(0))
    link = proxy.pool.holding(conn)
    assert link is not None
    link.data_received(answer)
    assert conn.relay is not None and (session.state is State.IDLE or session.row().state == "idle"), session.state
    conn._relay_client()  # (the client's transport reads into the relay once its startup is answered)
    return conn, link


def _readers(conn: ClientConnection, link: ServerLink) -> tuple[Callable[[bytes], None], Callable[[bytes], None]]:
    """The data_received of the protocols the two transports read into (the link is its transport's throughout)."""
    return conn.transport.get_protocol().data_received, link.data_received  # type: ignore


def run(conn: ClientConnection, link: ServerLink, client: Callable[[int], bytes], server: bytes, start: int,
        count: int, every_1000: Callable[[], None] | None = None) -> float:
    """CPU seconds for `count` transactions (`every_1000`: called between every 1000, as a timer would)."""
    pool = [client(start + i) for i in range(1000)]  # distinct literals, built outside the timed loop
    from_client, from_server = _readers(conn, link)
    t0 = time.process_time()
    for i in range(count):
        from_client(pool[i % 1000])
        from_server(server)
        if every_1000 is not None and i % 1000 == 999:
            every_1000()
    return time.process_time() - t0


async def _main(args: argparse.Namespace) -> int:
    configure_logs("warning")  # as in production at "info", minus the per-connection lines
    with tempfile.TemporaryDirectory() as tmp:
        proxy = _proxy(Path(tmp), args.audit, args.pool_mode, args.route, not args.no_sticky)
        pair = pooled_pair if args.pool_mode == "transaction" else relaying_pair
        tick = (lambda: _probed(proxy)) if args.route else None
        if args.count:
            mode, _, n = args.count.partition(":")
            conn, link = pair(proxy, args.strategy[0], mode)
            if args.route == "auto":
                assert link.server.replica == "r1", "route auto: the reads go to the replica"
            client, server = conversation(mode)
            if args.warmup:
                run(conn, link, client, server, 0, args.warmup, tick)
            written = link.transport.written  # type: ignore[union-attr]
            run(conn, link, client, server, args.warmup, int(n), tick)
            sent = sum(len(client(args.warmup + i % 1000)) for i in range(int(n)))  # (as `run` sends them)
            # every transaction reached the server answering it (handed over or kept: sticky servers, routed too)
            assert link.transport.written - written >= sent, "a transaction went elsewhere"  # type: ignore[union-attr]
            return 0
        print("| tenant strategy | mode | Python µs per transaction (best of reps) |")
        print("|---|---|---:|")
        for strategy in args.strategy:
            for mode in args.modes:
                if args.pool_mode == "transaction":  # (a pool of its own: the last pair's server may be kept for it)
                    proxy = _proxy(Path(tmp), args.audit, args.pool_mode, args.route, not args.no_sticky)
                conn, link = pair(proxy, strategy, mode)
                client, server = conversation(mode)
                run(conn, link, client, server, 0, min(1000, args.txns), tick)  # warm the caches
                best = min(run(conn, link, client, server, (r + 1) * args.txns, args.txns, tick)
                           for r in range(args.reps))
                print(f"| {strategy} | {mode} | {best / args.txns * 1e6:.2f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--txns", type=int, default=10_000)
    ap.add_argument("--modes", type=lambda s: s.split(","), default=["simple", "extended", "prepared"])
    ap.add_argument("--strategy", type=lambda s: s.split(","), default=["database", "shared"])
    ap.add_argument("--count", metavar="MODE:N", help="run N transactions of MODE once (for callgrind)")
    ap.add_argument("--warmup", type=int, default=0, metavar="N",
                    help="with --count: N transactions first, apart (each run's loop begins and ends with a call of "
                         "time.process_time: valgrind --tool=callgrind --dump-before=time_process_time dumps the "
                         "measured loop alone, the 4th part)")
    ap.add_argument("--audit", action="store_true", help="with the audit log on (written to a temporary file)")
    ap.add_argument("--no-sticky", action="store_true",
                    help="with --pool-mode transaction: [pool] sticky_servers = false (the server goes back to the "
                         "pool at each ReadyForQuery 'I' and is taken again at the next request)")
    ap.add_argument("--pool-mode", choices=["session", "transaction"], default="session",
                    help="transaction: the session gets its server from the real pool and gives it back per "
                         "transaction (the handoff's cost); session: it holds one throughout")
    ap.add_argument("--route", choices=["primary", "auto"],
                    help="a read replica configured (transaction pooling): primary (nothing routed) or auto (the "
                         "reads on the replica)")
    args = ap.parse_args(argv)
    if args.route:
        args.pool_mode = "transaction"
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
