"""Per-client-address throttle for failed logins: decides how long to stall the next attempt."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

__all__ = ["AuthThrottle"]


class AuthThrottle:
    """Counts failed logins per client address and says how long to delay/refuse the next attempt.

    Failures are counted in a sliding window of ``window`` seconds. While fewer than ``max_failures``
    are in the window there is no delay; from then on the delay doubles with every further failure:
    ``base_delay * 2 ** (failures - max_failures)``, capped at ``max_delay``. A success clears the address.

    Pure logic: every method takes ``now`` (seconds on any monotonic clock; time.monotonic() when omitted),
    so behaviour is deterministic in tests. Memory is bounded: at most ``max_tracked`` addresses, each with
    a short fixed-size history; the addresses whose last failure is oldest are forgotten first.
    Not thread-safe; meant for a single event loop.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        base_delay: float = 0.5,
        max_delay: float = 10.0,
        max_tracked: int = 10000,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not window > 0:
            raise ValueError("window must be positive")
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError("delays must satisfy 0 <= base_delay <= max_delay")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self.max_failures = max_failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_tracked = max_tracked
        # Failures beyond this many no longer change the delay, so older timestamps need not be kept.
        doublings = 0
        if base_delay > 0:
            doublings = min(1024, math.ceil(math.log2(max_delay) - math.log2(base_delay)))
        self._history_len = max_failures + doublings + 1
        # address -> failure timestamps (oldest first); dict order = least recently failed first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """Number of addresses currently tracked."""
        return len(self._failures)

    def failures(self, address: str, now: float | None = None) -> int:
        """Failures recorded for ``address`` within the window ending at ``now``."""
        now = time.monotonic() if now is None else now
        history = self._failures.get(address)
        if history is None:
            return 0
        self._expire(history, now)
        if not history:
            del self._failures[address]
            return 0
        return len(history)

    def delay_for(self, address: str, now: float | None = None) -> float:
        """Seconds to wait before answering the next auth attempt from ``address`` (0 under the limit)."""
        count = self.failures(address, now)
        if count < self.max_failures:
            return 0.0
        exponent = min(count - self.max_failures, 1023)  # 2.0**1024 would raise OverflowError
        return min(self.max_delay, self.base_delay * 2.0**exponent)

    def record_failure(self, address: str, now: float | None = None) -> None:
        """Count one failed authentication from ``address``."""
        now = time.monotonic() if now is None else now
        history = self._failures.get(address)
        if history is None:
            history = deque(maxlen=self._history_len)
            self._failures[address] = history
        else:
            self._failures.move_to_end(address)
            self._expire(history, now)
        history.append(now)
        self._prune(now)

    def record_success(self, address: str, now: float | None = None) -> None:
        """A successful login clears the address's failure history."""
        self._failures.pop(address, None)

    def _expire(self, history: deque[float], now: float) -> None:
        cutoff = now - self.window
        while history and history[0] <= cutoff:
            history.popleft()

    def _prune(self, now: float) -> None:
        """Drop addresses whose whole history expired, then the least recently failed past max_tracked."""
        cutoff = now - self.window
        while self._failures:
            oldest_address, history = next(iter(self._failures.items()))
            if history and history[-1] > cutoff:
                break
            del self._failures[oldest_address]
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
