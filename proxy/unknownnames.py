"""The statement (or portal) names whose latest Parse or Close PostgreSQL skipped or failed; pure (review 19a F1).

After an error in an extended message PostgreSQL skips every message up to the next Sync: a skipped Parse (or Close)
of a name leaves the statement PostgreSQL had under it, while the proxy decided the new text when the Parse was sent.
Such a name is "unknown" until a Parse of it is sent again and not skipped: its Binds are refused (fail closed; real
clients Parse again when a Parse got no ParseComplete). Bounded: past MAX_UNKNOWN names every name is unknown except
those Parsed since (bounded too: past it, those are forgotten, and unknown again)."""

from __future__ import annotations

from collections.abc import Hashable

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
