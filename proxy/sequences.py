"""Sequence state a session may leave on a pooled server unseen, and who may find it there; pure."""

from __future__ import annotations

from typing import Any

from proxy.policy.model import MAY_SET_SEQUENCES, MAY_USE_SEQUENCES, READS_SEQUENCES

DISCARD = "DISCARD SEQUENCES"
_MAX_NAMED = 4096  # prepared statements remembered with their flags; past it every Bind counts as all of them

# A prepared statement's runs, as flags (a statement without any is a plain read of relations: `_USE`).
_USE = 1  # may set sequence state unseen (a view's or function's nextval())
_WRITE = 2  # writes (a column default's or trigger's nextval()): the next session discards at once
_READ = 4  # calls currval()/lastval()
_QUIET = 8  # none of the above (BEGIN, SET, SHOW, SELECT 1 ...)
_ALL = _USE | _WRITE | _READ


def _flags(effects: frozenset[str]) -> int:
    """A decision's effects as flags."""
    flags = 0
    if MAY_USE_SEQUENCES in effects:
        flags = _USE
    if MAY_SET_SEQUENCES in effects:
        flags |= _WRITE | _USE
    if READS_SEQUENCES in effects:
        flags |= _READ
    return flags or _QUIET


class Mark:
    """What a session left on a server it gave back (`ServerConnection.sequences`): sequence state of its own, set
    by a write (`wrote`: another session discards it as it lands there) or maybe by a read (a view's nextval():
    another session discards it only in front of its first currval()/lastval() there)."""

    __slots__ = ("wrote",)

    def __init__(self, wrote: bool) -> None:
        self.wrote = wrote


_NO_FLAGS: dict[str, int] = {}  # SequenceMarks.named while empty (shared: replaced, never changed in place)


class SequenceMarks:
    """One session's side. nextval() runs unseen by the proxy: in a column default or trigger of a write (INSERT,
    UPDATE, DELETE, MERGE, COPY FROM, TRUNCATE, EXECUTE), in a view's query, in a function; it sets what currval()
    and lastval() read on the server it ran on (an explicit nextval() pins instead). So the server a session gives
    back after using it carries a new mark of the session's. A session landing on a server with a write mark other
    than its own latest discards that state first (DISCARD SEQUENCES in its replay). On a server with another read
    mark (`foreign`), the session's first statement there that calls currval()/lastval() gets DISCARD SEQUENCES in
    front of it, unless the session used the server before (then what it reads may be its own: a view it read
    earlier in the transaction). No client reads another's values, nor its own stale ones from a server it used
    before; the session finds its values again on the server it used last if nobody else used it since, else it
    gets PostgreSQL's 55000 (docs/pinning.md)."""

    __slots__ = ("all_named", "due", "foreign", "mark", "named", "tainted", "used", "wrote")

    def __init__(self) -> None:
        self.wrote = False  # a write was sent to the held server since it was attached
        self.used = False  # ... a statement that may have set sequence state (a write too)
        self.foreign = False  # the held server may hold another session's state, and the session did not use it yet
        self.due = False  # ... and a statement calling currval()/lastval() is in the bytes being forwarded
        self.tainted = False  # the held server came with another session's read mark, not discarded since
        self.mark: object = None  # the mark left with the server the session used last
        self.named: dict[str, int] = _NO_FLAGS  # prepared statement name -> its runs' flags, when not plain reads
        self.all_named = False  # too many names to remember: every Bind counts as everything

    def ran(self, effects: frozenset[str]) -> None:
        """A Query with a decision's `effects` was sent."""
        self._ran(_flags(effects))

    def _ran(self, flags: int) -> None:
        if flags & _READ:
            self.due = True  # (read while `foreign`, or at the next attach: sent while the session held no server)
        if flags & _USE:
            self.used = True
            if flags & _WRITE:
                self.wrote = True

    def parsed(self, name: str, effects: frozenset[str]) -> None:
        """A Parse of statement `name` was decided (and sent) with a decision's `effects`."""
        flags = _flags(effects)
        if flags & _WRITE:
            self.wrote = self.used = True  # (the statement maps may prepare and run it at once: counted now)
        if flags & _READ:  # in front of its Parse already: its Bind may come in a later read, in the same batch
            self.due = True
        if self.all_named:
            return
        if flags == _USE:
            if name in self.named:
                del self.named[name]
            return
        if not self.named:
            self.named = {}
        elif len(self.named) >= _MAX_NAMED and name not in self.named:
            self.named = _NO_FLAGS
            self.all_named = True
            return
        self.named[name] = flags

    def bound(self, name: str) -> None:
        """A Bind of statement `name` was sent."""
        self._ran(_ALL if self.all_named else self.named.get(name, _USE))

    def forwarded(self, busy: bool, failed: bool) -> bool:
        """The bytes being forwarded are complete (called while `foreign`): True when DISCARD SEQUENCES goes in front
        of them. It cannot when the server has requests of the client's to answer first (`busy`), or its transaction
        failed (`failed`: the DISCARD would fail; the client's statement fails as well). Either way, once a use or a
        read went by, what the session reads on this server may be its own: the first ones are past."""
        discard = self.due and not busy and not failed
        if self.due or self.used:
            self.foreign = self.due = False
        return discard

    def attached(self, server: Any) -> str:
        """The statement the session runs first on `server` it was lent ('' when none is needed), in front of what
        it sent while it waited for it (its statements counted as they were decided)."""
        read, self.foreign, self.due, self.tainted = self.due, False, False, False
        held = server.sequences
        if held is None or held is self.mark:
            return ""
        if type(held) is Mark and not held.wrote and not read:
            # Discarded in front of the first currval()/lastval() (`forwarded`), unless a statement that may set
            # sequence state goes first (one waiting for this server already: `used`).
            self.tainted = True
            self.foreign = not self.used
            return ""
        server.sequences = None  # (a write mark; or a read mark, and a statement waiting calls currval()/lastval())
        return DISCARD

    def discarded(self, server: Any) -> None:
        """DISCARD SEQUENCES was sent in front of the session's statements on `server`."""
        server.sequences = None
        self.tainted = False

    def released(self, server: Any) -> None:
        """The session gives `server` back (ServerConnection: its `sequences` field)."""
        if self.used:
            mark = server.sequences = Mark(self.wrote)
            # (the state another session left there and this one did not discard is still there: not its own)
            self.mark = object() if self.tainted else mark
        self.used = self.wrote = self.foreign = self.due = self.tainted = False
