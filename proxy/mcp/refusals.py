"""Refused (401) HTTP requests, logged once per source and interval and then counted: a flood writes a bounded log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.mcp.defaults import REFUSED_LOG_INTERVAL

MAX_SOURCES = 4096  # sources remembered at once; past it, new ones share one entry ("*") until the next sweep
OTHERS = "*"

# Called with an event name and its fields: the first refusal of a source in an interval, then a summary count.
Log = Callable[..., None]


@dataclass
class _Source:
    since: float
    reason: str  # the last one's
    counted: int = 0  # refusals after the logged one, in this interval


@dataclass
class RefusedRequests:
    """The first refusal of a source (its address, not its port: each connection has a new one) is logged; the
    next ones within `interval` seconds are only counted, and the count is logged as `mcp_requests_refused` when
    the interval is over (at the next refusal from anywhere or `sweep`, or at `flush`)."""

    log: Log
    interval: float = REFUSED_LOG_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _sources: dict[str, _Source] = field(default_factory=dict, init=False)
    _swept: float | None = field(default=None, init=False)

    def refused(self, reason: str, peer: str) -> None:
        now = self.clock()
        if self._swept is None or now - self._swept >= self.interval:
            self.sweep()
        host = peer if peer in self._sources or len(self._sources) < MAX_SOURCES else OTHERS
        source = self._sources.get(host)
        if source is not None and now - source.since < self.interval:
            source.counted += 1
            source.reason = reason
            return
        if source is not None:
            self._summary(host, source, now)
        self._sources[host] = _Source(now, reason)
        self.log("mcp_request_refused", reason=reason, peer=host,
                 note=f"further refusals from this source are counted and logged every {self.interval:g} s")

    def flush(self) -> None:
        """Log what is counted and not yet logged (at shutdown)."""
        now = self.clock()
        for host, source in self._sources.items():
            self._summary(host, source, now)
        self._sources.clear()

    def sweep(self) -> None:
        """Log the counts of the sources whose interval is over, and forget them."""
        now = self._swept = self.clock()
        for host in [h for h, s in self._sources.items() if now - s.since >= self.interval]:
            self._summary(host, self._sources.pop(host), now)

    def _summary(self, host: str, source: _Source, now: float) -> None:
        if source.counted:
            self.log("mcp_requests_refused", peer=host, refused=source.counted, last_reason=source.reason,
                     seconds=round(now - source.since, 1))
