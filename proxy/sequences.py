"""Sequence state a session's writes may leave on a pooled server unseen, and who may find it there; pure."""

from __future__ import annotations

from typing import Any

DISCARD = "DISCARD SEQUENCES"
_MAX_WRITERS = 4096  # prepared statements remembered as writing; past it every Bind counts as a write


_NO_WRITERS: frozenset[str] = frozenset()  # SequenceMarks.writers while empty (an empty set is 216 bytes)


class SequenceMarks:
    """One session's side. A write (a decision with MAY_SET_SEQUENCES: INSERT, UPDATE, DELETE, MERGE, COPY FROM,
    TRUNCATE, EXECUTE) may run nextval() in a column default or a trigger, which sets what currval() and lastval()
    read on the server it ran on, without the proxy seeing it (an explicit nextval() pins instead). The server the
    session gives back after such a write carries a new mark of the session's; a session landing on a server with
    any other mark than its own latest discards that state first (DISCARD SEQUENCES in its replay): no client reads
    another's values, nor its own stale ones from a server it wrote on before. The writer finds its values again
    on the server of its latest write, else it gets PostgreSQL's 55000 (docs/pinning.md)."""

    __slots__ = ("all_write", "mark", "writers", "wrote")

    def __init__(self) -> None:
        self.wrote = False  # a write was sent to the held server since it was attached
        self.mark: object = None  # the mark left with the server of the session's latest write
        self.writers: set[str] = _NO_WRITERS  # type: ignore[assignment]  # prepared statement names whose runs may write
        self.all_write = False  # too many names to remember: every Bind counts as a write

    def parsed(self, name: str, writes: bool) -> None:
        """A Parse of statement `name` was decided (and sent): its runs write, or not."""
        if writes:
            self.wrote = True
            if len(self.writers) >= _MAX_WRITERS:
                self.writers = _NO_WRITERS  # type: ignore[assignment]
                self.all_write = True
            if not self.writers:
                self.writers = set()
            self.writers.add(name)
        elif self.writers:
            self.writers.discard(name)

    def bound(self, name: str) -> None:
        """A Bind of statement `name` was sent."""
        if self.all_write or name in self.writers:
            self.wrote = True

    def released(self, server: Any) -> None:
        """The session gives `server` back (ServerConnection: its `sequences` field)."""
        if self.wrote:
            self.wrote = False
            self.mark = server.sequences = object()

    def attached(self, server: Any) -> str:
        """The statement the session runs first on `server` it was lent ('' when none is needed)."""
        if server.sequences is None or server.sequences is self.mark:
            return ""
        server.sequences = None
        return DISCARD
