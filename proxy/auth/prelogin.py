"""Caps on connections that have not logged in yet, per client address (IPv6: per /64) and in total, with fair
eviction by network prefix when the total is held by logins in their SCRAM exchange; no I/O."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable, Iterable

__all__ = ["PreloginLimiter", "address_key", "prefix_key"]

SILENT, SPOKEN, EXCHANGING = 0, 1, 2  # sent nothing; sent something; reached the SCRAM exchange


def address_key(address: str) -> str:
    """The unit the per-address cap counts: an IPv4 address, or the /64 of an IPv6 one (one host's share)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # a Unix socket or anything else: as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def prefix_key(key: str) -> str:
    """The network an address key belongs to for fair eviction: the /24 of an IPv4 address, the /48 of an IPv6 one
    (one site's usual share); anything else (a Unix socket) as given."""
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return key
    bits = 24 if net.version == 4 else 48
    return str(net.supernet(new_prefix=bits)) if net.prefixlen > bits else str(net)


class PreloginLimiter:
    """Keeps at most ``per_address`` unauthenticated connections per address and ``total`` in all.

    When a cap is reached, a waiting connection makes room for the newcomer: one that has sent nothing
    first (oldest first; of the newcomer's own address for the per-address cap, of any address for the
    total cap), then one that has spoken but not reached the SCRAM exchange. A connection in the SCRAM
    exchange (a real client typing or sending its password) is not closed to make room at its own address: when
    only such connections hold an address's places, its newcomer is refused instead. When they hold every place
    in all, the newcomer gets one all the same: the oldest connection of the address holding the most places,
    within the network (/24, IPv6 /48) holding the most, is closed (fair eviction, as SYN floods are met), so
    logins parked by a few networks churn among themselves and never lock out everyone else. Silent sockets, from
    one address or from hundreds, never push out a client that is logging in (see docs/security.md). IPv6
    addresses count per /64. Connections are any hashable keys.
    """

    def __init__(self, per_address: int, total: int) -> None:
        if not 1 <= per_address <= total:
            raise ValueError("need 1 <= per_address <= total")
        self.per_address = per_address
        self.total = total
        self._by_address: dict[str, OrderedDict[Hashable, int]] = {}  # address -> {conn: stage}, oldest first
        self._by_stage: tuple[OrderedDict[Hashable, None], ...] = (OrderedDict(), OrderedDict(), OrderedDict())
        self._address_of: dict[Hashable, str] = {}
        self._by_prefix: dict[str, dict[str, None]] = {}  # network -> its addresses holding places
        self._prefix_count: dict[str, int] = {}  # network -> places its addresses hold

    def __len__(self) -> int:
        return len(self._address_of)

    def count(self, address: str) -> int:
        waiting = self._by_address.get(address_key(address))
        return len(waiting) if waiting is not None else 0

    def admit(self, conn: Hashable, address: str) -> tuple[list[tuple[Hashable, str]], str | None]:
        """Track a new connection: (the (connection, limit) pairs to close to make room for it, None), or
        ([], limit) when the newcomer is refused because every place is held by a SCRAM exchange."""
        key = address_key(address)
        if self.count(key) >= self.per_address:
            victim, limit = self._evictable(self._by_address[key].items()), "address"
        elif len(self._address_of) >= self.total:  # (making room at the address also made room in all)
            victim, limit = next(iter(self._by_stage[SILENT] or self._by_stage[SPOKEN]), None), "total"
            if victim is None:  # every place is held by a SCRAM exchange: the most crowded network's go first
                victim = self._crowded()
        else:
            victim, limit = None, ""
        if limit and victim is None:
            return [], limit
        self.done(victim)
        self._add(conn, key, SILENT)
        return ([(victim, limit)] if victim is not None else []), None

    def spoke(self, conn: Hashable) -> None:
        """The connection sent its first bytes: it is now evicted only after every silent one."""
        self._advance(conn, SPOKEN)

    def exchanging(self, conn: Hashable) -> None:
        """The connection reached the SCRAM exchange: it is never evicted to make room."""
        self._advance(conn, EXCHANGING)

    def done(self, conn: Hashable | None) -> None:
        """The connection logged in or closed."""
        key = self._address_of.pop(conn, None)
        if key is None:
            return
        waiting = self._by_address[key]
        del self._by_stage[waiting.pop(conn)][conn]
        prefix = prefix_key(key)
        self._prefix_count[prefix] -= 1
        if not waiting:
            del self._by_address[key]
            del self._by_prefix[prefix][key]
            if not self._by_prefix[prefix]:
                del self._by_prefix[prefix], self._prefix_count[prefix]

    def _add(self, conn: Hashable, key: str, stage: int) -> None:
        self._by_address.setdefault(key, OrderedDict())[conn] = stage
        self._by_stage[stage][conn] = None
        self._address_of[conn] = key
        prefix = prefix_key(key)
        self._by_prefix.setdefault(prefix, {})[key] = None
        self._prefix_count[prefix] = self._prefix_count.get(prefix, 0) + 1

    def _crowded(self) -> Hashable | None:
        """The oldest connection of the address holding the most places within the network holding the most
        (of equals, the network and the address that came first)."""
        if not self._prefix_count:
            return None
        prefix = max(self._prefix_count, key=self._prefix_count.__getitem__)
        address = max(self._by_prefix[prefix], key=lambda a: len(self._by_address[a]))
        return next(iter(self._by_address[address]))

    def _advance(self, conn: Hashable, stage: int) -> None:
        key = self._address_of.get(conn)
        if key is None:
            return
        waiting = self._by_address[key]
        if waiting[conn] < stage:
            del self._by_stage[waiting[conn]][conn]
            waiting[conn] = stage
            self._by_stage[stage][conn] = None

    @staticmethod
    def _evictable(waiting: Iterable[tuple[Hashable, int]]) -> Hashable | None:
        """The oldest silent connection, else the oldest that has spoken, else None."""
        spoken = None
        for conn, stage in waiting:
            if stage == SILENT:
                return conn
            if stage == SPOKEN and spoken is None:
                spoken = conn
        return spoken
