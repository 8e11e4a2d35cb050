"""Large results stream through pgtenant with backpressure: a slow reader must not grow the proxy's memory."""

from __future__ import annotations

import socket
import time

from proxy.protocol import messages as m
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import login


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_of_200mb_result(proxy: ProxyProcess) -> None:
    assert proxy.proc is not None
    pid = proxy.proc.pid
    sock, msgs = login(proxy.port, {"user": "ivan", "database": "initech"}, proxy.password("ivan"))
    assert msgs[-1][0] == b"Z"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    baseline = _rss_kb(pid)
    rows = 200_000
    sock.sendall(m.Query(f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT").encode())
    received = 0
    peak = baseline
    tail = b""
    while True:  # each recv times out after 10 s (login's socket): a stalled relay fails the test
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-result"
        received += len(chunk)
        tail = (tail + chunk)[-64:]
        if received % (4 << 20) < 65536:
            peak = max(peak, _rss_kb(pid))
            time.sleep(0.005)  # read slower than PostgreSQL writes, so backpressure must engage
        if tail.endswith(m.ready_for_query(b"I")):
            break
    sock.close()
    assert received > rows * 1000
    growth_mb = (peak - baseline) / 1024
    # The proxy holds at most its socket write buffers (256 KiB high-water) plus a read chunk or two.
    assert growth_mb < 16, f"proxy RSS grew by {growth_mb:.1f} MB while relaying {received >> 20} MB"
