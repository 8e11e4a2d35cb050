"""Caps on connections that have not logged in yet, per client address and in total; no I/O."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["PreloginLimiter"]


class PreloginLimiter:
    """Keeps at most ``per_address`` unauthenticated connections per address and ``total`` in all.

    A newcomer is always admitted: when a cap is reached, the oldest waiting connection makes room — of the
    newcomer's own address for the per-address cap, of the address holding the most for the total cap —
    and among those one that has sent nothing yet goes first. Thousands of idle sockets from one address
    therefore only ever hold ``per_address`` places, and a real client that logs in within milliseconds is
    not the oldest for long: it gets in (see docs/security.md). Connections are any hashable keys.
    """

    def __init__(self, per_address: int, total: int) -> None:
        if not 1 <= per_address <= total:
            raise ValueError("need 1 <= per_address <= total")
        self.per_address = per_address
        self.total = total
        self._by_address: dict[str, OrderedDict[Hashable, bool]] = {}  # address -> {conn: has spoken}, oldest first
        self._address_of: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self._address_of)

    def count(self, address: str) -> int:
        waiting = self._by_address.get(address)
        return len(waiting) if waiting is not None else 0

    def admit(self, conn: Hashable, address: str) -> list[tuple[Hashable, str]]:
        """Track a new connection; returns the (connection, limit) pairs to close to make room for it."""
        victims: list[tuple[Hashable, str]] = []
        if self.count(address) >= self.per_address:
            victims.append((self._oldest(address), "address"))
            self.done(victims[-1][0])
        if len(self._address_of) >= self.total:
            fullest = max(self._by_address, key=lambda a: len(self._by_address[a]))
            victims.append((self._oldest(fullest), "total"))
            self.done(victims[-1][0])
        self._by_address.setdefault(address, OrderedDict())[conn] = False
        self._address_of[conn] = address
        return victims

    def spoke(self, conn: Hashable) -> None:
        """The connection sent its first bytes: it is now evicted only after every silent one."""
        address = self._address_of.get(conn)
        if address is not None:
            self._by_address[address][conn] = True

    def done(self, conn: Hashable) -> None:
        """The connection logged in or closed."""
        address = self._address_of.pop(conn, None)
        if address is None:
            return
        waiting = self._by_address[address]
        del waiting[conn]
        if not waiting:
            del self._by_address[address]

    def _oldest(self, address: str) -> Hashable:
        waiting = self._by_address[address]
        for conn, spoken in waiting.items():
            if not spoken:
                return conn
        return next(iter(waiting))
