"""CPU cost of carrying hidden schemas' reserved names (proxy/hiddennames.py) on a session's hot path.

Run from the repository root:  .venv/bin/python -m benchmarks.hidden_names [--n 20000] [--reps 5]
Instruction counts (what a shared host cannot blur): run one kind of round, N rounds and none, under callgrind
and subtract:  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python -m benchmarks.hidden_names
--only execute --kind hiding --n 2000 (then --n 0; `callgrind_annotate FILE | head` gives each total).
Scripted sessions (no sockets, no PostgreSQL), session pooling, best of `--reps` runs of `--n` rounds each; per round
in microseconds: an ErrorResponse + ReadyForQuery answered (the last-line check looks at every error and notice once
the session has sent a reserved name), and a Bind/Execute/Sync of a prepared statement (the Execute is looked up in
the session's portals once it has sent one), each for a session that never named a hidden schema ("plain") and one
that did ("hiding": one renamed statement sent earlier).
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.auth.throttle import AuthThrottle  # noqa: E402
from proxy.policy.model import Allow, Decision, Rewrite  # noqa: E402
from proxy.protocol import messages as m  # noqa: E402
from proxy.session import ClientSession  # noqa: E402
from tests.support.sessions import attach, login, make_config  # noqa: E402

RESERVED = "pg_9" + "a" * 24
ERROR = m.encode_error_fields(b"E", {"S": "ERROR", "V": "ERROR", "C": "42703", "M": 'column "nosuch" does not exist',
                                     "P": "8", "F": "parse_relation.c", "L": "3722", "R": "errorMissingColumn"})
READY = m.ready_for_query(b"I")
BIND_EXECUTE_SYNC = (m.frame(b"B", b"\x00s1\x00" + struct.pack("!hhh", 0, 0, 0))
                     + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) + m.SYNC_MESSAGE)
ANSWER = m.frame(b"2", b"") + m.command_complete("SELECT 1") + READY


def decide(kind: str, sql: str) -> Decision:
    if "hid." not in sql:
        return Allow()
    return Rewrite(sql.replace("hid.", f'"{RESERVED}".'), ("hidden_schema",), names=((RESERVED, "hid"),))


def session(tmp: Path, hiding: bool) -> ClientSession:
    s = ClientSession(make_config(tmp), session_id="s1", client_address="10.0.0.1",
                      throttle=AuthThrottle(max_failures=2), clock=time.monotonic, tls_available=False)
    login(s)
    attach(s)
    s.enable_policy(decide)
    if hiding:
        s.client_data(m.Query("CREATE TEMP TABLE IF NOT EXISTS t0 (LIKE hid.t)").encode())
        s.server_data(m.command_complete("CREATE TABLE") + READY)
    s.client_data(m.Parse("s1", "SELECT 1", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    s.server_data(m.frame(b"1", b"") + READY)
    return s


def best(run: Callable[[], None], n: int, reps: int) -> float:
    """Microseconds per round, the best of `reps` runs of `n` rounds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="rounds per run")
    ap.add_argument("--reps", type=int, default=5, help="runs; the best is reported")
    ap.add_argument("--only", choices=("error", "execute"), help="run only `--n` rounds of this kind, untimed")
    ap.add_argument("--kind", choices=("plain", "hiding"), default="hiding", help="the session of --only")
    args = ap.parse_args(argv)
    if args.only is not None:
        with tempfile.TemporaryDirectory() as tmp:
            s = session(Path(tmp), args.kind == "hiding")
            message, answer = ((m.Query("SELECT nosuch").encode(), ERROR + READY) if args.only == "error"
                               else (BIND_EXECUTE_SYNC, ANSWER))
            for _ in range(args.n):
                s.client_data(message)
                s.server_data(answer)
        return 0
    print(f"{'round':<22} {'plain us':>9} {'hiding us':>10} {'delta us':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {hiding: session(Path(tmp), hiding) for hiding in (False, True)}

        def error_round(s: ClientSession) -> Callable[[], None]:
            def run() -> None:
                s.client_data(m.Query("SELECT nosuch").encode())
                s.server_data(ERROR + READY)
            return run

        def execute_round(s: ClientSession) -> Callable[[], None]:
            def run() -> None:
                s.client_data(BIND_EXECUTE_SYNC)
                s.server_data(ANSWER)
            return run

        for name, make in (("Query + ErrorResponse", error_round), ("Bind/Execute/Sync", execute_round)):
            plain, hiding = (best(make(sessions[h]), args.n, args.reps) for h in (False, True))
            print(f"{name:<22} {plain:>9.2f} {hiding:>10.2f} {hiding - plain:>+9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
