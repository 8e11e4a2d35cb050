"""Time to buffer one large intercepted message (a Query) arriving in small reads, for growing sizes.

Run from the repository root:  .venv/bin/python -m benchmarks.stream_bench [--sizes 1,4,16] [--read 4096] [--reps 3]
Prints best-of-reps milliseconds per size and per MB: flat per MB means linear time (a quadratic buffer doubles it
with every doubling of the size). The unit suite checks only that the message comes back whole
(tests/unit/protocol/test_stream.py); timing belongs here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.protocol.messages import QUERY, Query  # noqa: E402
from proxy.protocol.stream import MessageStream  # noqa: E402


def buffer_once(msg: bytes, read: int) -> float:
    """Seconds to feed `msg` in `read`-byte pieces to a stream that intercepts Query."""
    s = MessageStream(intercept=frozenset({QUERY}), max_length=len(msg) + 1)
    t0 = time.perf_counter()
    items: list = []
    for i in range(0, len(msg), read):
        items += s.feed(msg[i : i + read])
    elapsed = time.perf_counter() - t0
    if len(items) != 1:
        raise SystemExit(f"expected one message, got {len(items)} items")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2,4,8,16", help="message sizes in MB, comma-separated")
    ap.add_argument("--read", type=int, default=4096, help="bytes per read")
    ap.add_argument("--reps", type=int, default=3, help="runs per size; the best is reported")
    args = ap.parse_args(argv)
    print(f"{'MB':>4} {'ms':>9} {'ms/MB':>7}")
    for mb in (int(x) for x in args.sizes.split(",")):
        msg = Query("SELECT '" + "x" * (mb << 20) + "'").encode()
        best = min(buffer_once(msg, args.read) for _ in range(args.reps))
        print(f"{mb:>4} {best * 1000:>9.1f} {best * 1000 / mb:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
