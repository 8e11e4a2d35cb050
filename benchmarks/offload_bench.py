"""Which offloading protects other sessions under the GIL: an echo client's round trips (p50/p99/max) on a uvloop
event loop while the same loop keeps deciding large statements inline, in a thread, or in a process.

Run from the repository root:  .venv/bin/python -m benchmarks.offload_bench [--seconds 6]

This chose the decision workers (proxy/workers.py): pglast's parser releases the GIL, but decoding the parse tree,
the walk, the rewrite and the verifier hold it, json.loads and the regular expressions for whole milliseconds at a
time, so a thread still stalls the loop; a process does not.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INPUTS = {
    "1,000 statements": lambda: "SELECT 1 FROM customers;" * 1000,
    "80,000-member IN list": lambda: "SELECT * FROM customers WHERE id IN (" + ",".join(["1"] * 80_000) + ")",
}
MODES = ("inline", "thread", "thread, 1 ms switch interval", "process")


def work(name: str) -> float:
    """Decide one input (in whichever thread or process runs this); its seconds."""
    from proxy.policy import decide
    from tests.unit.policy.policy_corpus import POLICIES

    sql = INPUTS[name]()
    t0 = time.perf_counter()
    decide(POLICIES["shared"], sql)
    return time.perf_counter() - t0


def client(port: int, seconds: float, out: mp.Queue) -> None:
    """Another session: a 1-byte round trip every 2 ms, in its own process."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        sock.sendall(b"x")
        sock.recv(1)
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.002)
    out.put(latencies)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def measure(mode: str, name: str, seconds: float) -> str:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    executor: cf.Executor | None = None
    if mode.startswith("thread"):
        executor = cf.ThreadPoolExecutor(1)
    elif mode == "process":
        executor = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    sys.setswitchinterval(0.001 if "1 ms" in mode else 0.005)
    if executor is not None:
        await loop.run_in_executor(executor, work, name)  # started and warm
    queue: mp.Queue = mp.get_context("spawn").Queue()
    pinger = mp.get_context("spawn").Process(target=client, args=(port, seconds, queue))
    pinger.start()
    await asyncio.sleep(1.0)
    decisions: list[float] = []
    end = time.monotonic() + seconds - 1.5
    while time.monotonic() < end:
        if executor is not None:
            decisions.append(await loop.run_in_executor(executor, work, name))
        else:
            decisions.append(work(name))
            await asyncio.sleep(0)
    latencies = sorted(await loop.run_in_executor(None, queue.get))
    pinger.join()
    server.close()
    if executor is not None:
        executor.shutdown()
    p99 = latencies[int(len(latencies) * 0.99)]
    return (f"| {mode} | {name} | {len(decisions)} | {statistics.median(decisions) * 1000:.0f} | "
            f"{statistics.median(latencies) * 1000:.2f} | {p99 * 1000:.2f} | {latencies[-1] * 1000:.1f} |")


def main(argv: list[str] | None = None) -> int:
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args(argv)
    print("| decided | input | decisions | ms each | other session p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for name in INPUTS:
        for mode in MODES:
            print(uvloop.run(measure(mode, name, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
