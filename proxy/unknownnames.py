"""The statement (or portal) names whose latest Parse or Close PostgreSQL skipped or failed; pure (review 19a F1).

After an error in an extended message PostgreSQL skips every message up to the next Sync: a skipped Parse (or Close)
of a name leaves the statement PostgreSQL had under it, while the proxy decided the new text when the Parse was sent.
Such a name is "unknown" until a Parse of it is sent again and not skipped: its Binds are refused (fail closed; real
clients Parse again when a Parse got no ParseComplete). Bounded: past MAX_UNKNOWN names every name is unknown except
those Parsed since (bounded too: past it, those are forgotten, and unknown again)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

MAX_UNKNOWN = 4096


class UnknownNames:
    """Names PostgreSQL may hold otherwise than the proxy recorded; `everything`: past MAX_UNKNOWN, all but `since`."""

    __slots__ = ("names", "since")

    def __init__(self) -> None:
        self.names: set[Hashable] = set()
        self.since: set[Hashable] | None = None  # once full: the names Parsed (not skipped) since

    def sent(self, name: Hashable) -> None:
        """A Parse of `name` is sent: known again unless PostgreSQL skips or fails it (then `lost`)."""
        since = self.since
        if since is not None:
            if len(since) >= MAX_UNKNOWN:  # (forgetting makes names unknown: fail closed)
                since.clear()
            since.add(name)
        else:
            self.names.discard(name)

    def lost(self, name: Hashable) -> None:
        """A Parse or Close of `name` was skipped or failed: PostgreSQL may hold an older statement under it."""
        since = self.since
        if since is not None:
            since.discard(name)
        elif name not in self.names:
            if len(self.names) >= MAX_UNKNOWN:
                self.names, self.since = set(), set()
            else:
                self.names.add(name)

    def unknown(self, name: Hashable) -> bool:
        """Whether a Bind of `name` is refused."""
        since = self.since
        return name not in since if since is not None else name in self.names


class Flight:
    """A Parse or Close of a statement name in flight: alive while its message's journal is (the statement maps'
    ledger or skipping.Owed holds it until PostgreSQL answers, fails or skips the message); called if it is skipped
    or fails."""

    __slots__ = ("__weakref__", "lost", "name")

    def __init__(self, name: Hashable, lost: Callable[[Hashable], None]) -> None:
        self.name, self.lost = name, lost

    def __call__(self) -> None:
        self.lost(self.name)


class ClosedFlight(Flight):
    """A Close's Flight: called with itself (its `records`: what the Close took from the session's records of the
    name) if PostgreSQL skips or fails the Close."""

    __slots__ = ("records",)

    def __init__(self, name: Hashable, lost: Callable[[ClosedFlight], None], records: object = None) -> None:
        super().__init__(name, lost)  # type: ignore[arg-type]
        self.records = records

    def __call__(self) -> None:
        self.lost(self)  # type: ignore[arg-type]


class Flights:
    """Per statement name, its latest Parse or Close still unanswered (a weak reference to its Flight), the batch
    (Syncs sent before it) it went in and whether the name was Parsed before it; and the names Parsed (review 19a F1
    pipelined, red team 9a12 F1/F2: a Bind in a later batch runs whatever PostgreSQL holds under the name if that
    Parse is skipped). Bounded: past MAX_UNKNOWN names Parsed, every name counts as Parsed before (fail closed)."""

    __slots__ = ("crowded", "latest", "prune_at", "seen")

    def __init__(self) -> None:
        self.latest: dict[Hashable, tuple[weakref.ref[Flight], int, bool]] = {}
        self.seen: set[Hashable] = set()
        self.crowded = False
        self.prune_at = MAX_UNKNOWN  # (answered entries go when the map reaches it; then twice what is left: O(1) each)

    def sent(self, flight: Flight, batch: int, parse: bool) -> None:
        """A Parse (`parse`) or Close of `flight.name` is sent in `batch`."""
        name, latest = flight.name, self.latest
        before = self.crowded or not name or name in self.seen
        if len(latest) >= self.prune_at:
            for gone in [n for n, entry in latest.items() if entry[0]() is None]:
                del latest[gone]
            self.prune_at = max(MAX_UNKNOWN, 2 * len(latest))
        latest[name] = (weakref.ref(flight), batch, before)
        if parse and not before:
            if len(self.seen) >= MAX_UNKNOWN:
                self.crowded, self.seen = True, set()
            else:
                self.seen.add(name)

    def latest_is(self, flight: Flight) -> bool:
        """Whether `flight` is still the latest Parse or Close sent of its name."""
        found = self.latest.get(flight.name)
        return found is not None and found[0]() is flight

    def bind_unsafe(self, name: Hashable, batch: int, older: bool) -> bool:
        """A Bind of `name` sent now in `batch` would run before PostgreSQL answered the latest Parse or Close of it,
        sent in an earlier batch, while another statement may be under the name (`older`: the server had it; or it
        was Parsed before that one, or it is the unnamed statement): if that batch fails first, the Bind runs that
        other statement, not the one the proxy decided."""
        found = self.latest.get(name)
        if found is None or found[1] == batch or found[0]() is None:
            return False
        return older or found[2]
