"""Structured JSON logging (structlog): one configuration for the whole process."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LineLogger:
    """Writes each log line with one write: worker processes share stderr, which writes through, and print()'s
    separate newline let another process's line land inside this one (a JSON log reader lost both)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def configure(level: str = "info", fmt: str = "json", **always: object) -> None:
    """Logs at `level` in `fmt`; `always`: fields every line carries (a worker process's index)."""

    def add_always(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
        for key, value in always.items():
            event.setdefault(key, value)
        return event

    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([add_always] if always else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *_: LineLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "pgtenant") -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)


class LogLimiter:
    """A token bucket for log lines an attacker can cause at will (connections closed before login): at most
    ``burst`` at once and ``rate`` per second after that. Pure: the caller passes the time."""

    def __init__(self, rate: float = 20.0, burst: float = 100.0) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = 0.0
        self.suppressed = 0  # lines dropped since the last one let through

    def allow(self, now: float) -> int | None:
        """None to drop this line; else how many were dropped before it (to report with it)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return None
        self._tokens -= 1.0
        dropped, self.suppressed = self.suppressed, 0
        return dropped
