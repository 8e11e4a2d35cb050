"""The log rate limit for lines anyone can cause (connections closed before login)."""

from __future__ import annotations

from proxy.logs import LogLimiter


def test_a_burst_then_the_rate_and_the_dropped_lines_are_counted() -> None:
    lim = LogLimiter(rate=10.0, burst=5.0)
    now = 1000.0
    assert [lim.allow(now) for _ in range(8)] == [0, 0, 0, 0, 0, None, None, None]
    assert lim.allow(now + 0.05) is None  # half a token
    assert lim.allow(now + 0.1) == 4  # the next line says how many were dropped before it
    assert lim.allow(now + 0.1) is None
    # 10,000 closes within one second let at most burst + rate lines through.
    lim = LogLimiter(rate=10.0, burst=5.0)
    kept = sum(lim.allow(now + i / 10_000) is not None for i in range(10_000))
    assert kept <= 5 + 10


def test_each_line_is_one_write() -> None:
    """Worker processes share stderr (write-through): print()'s message and newline were two writes, and another
    process's line could land between them."""
    from proxy.logs import LineLogger

    class Writes:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def write(self, text: str) -> int:
            self.calls.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    out = Writes()
    LineLogger(out).info('{"event": "shutdown_complete"}')  # type: ignore[arg-type]
    assert out.calls == ['{"event": "shutdown_complete"}\n']
