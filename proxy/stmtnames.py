"""Session pooling: the statement names the server has, as its answers confirm them (red team 6 F8); pure, no I/O.

Where the client's statement names reach the server as they are (session pooling without the statement maps of
proxy/statements.py), a Parse of a name the server has fails there (42P05) and the old statement stays. The session's
records of a name (its audit text, its context changes, the agent profile's admission text) must then stay the old
statement's: the session asks `taken(name)` before it decides a named Parse, and answers one that is taken with
42P05 itself, recording nothing. A name is confirmed by its ParseComplete and gone with its CloseComplete, a
DEALLOCATE's or DEALLOCATE ALL's / DISCARD ALL's CommandComplete; a message the server skipped (an error earlier in
its batch) changes nothing. Between a Parse and its answer the name is taken; between a Close or DEALLOCATE and its
answer it is as it was before, except for a Parse after a Close of it in the same batch (no Sync between: the Parse
runs only if the Close did). So a pipelined Parse after an unanswered Parse of the same name in an earlier batch is
answered 42P05 even when that one turns out to have failed (as transaction pooling answers it), and one after an
unanswered Close in an earlier batch too.
"""

from __future__ import annotations

from collections import deque

_PARSE, _CLOSE, _DEALLOCATE = 0, 1, 2
FORGETS_ALL = (b"DEALLOCATE ALL\x00", b"DISCARD ALL\x00")


class ServerNames:
    """One session's record. Entries in flight: (kind, name, the tracker's request, the batch they were sent in)."""

    __slots__ = ("batch", "confirmed", "ledger")

    def __init__(self) -> None:
        self.confirmed: set[str] = set()  # names the server has (answered)
        self.ledger: deque[list] = deque()  # [kind, name, request, batch] sent, not answered, oldest first
        self.batch = 0  # Syncs sent: entries with the same number are in one batch

    def taken(self, name: str) -> bool:
        """A Parse of `name` sent now would find the name taken on the server (or may: see the module)."""
        for kind, entry, _, batch in reversed(self.ledger):
            if entry == name:
                if kind == _PARSE:
                    return True
                if kind == _CLOSE and batch == self.batch:  # the Parse runs only if the Close did
                    return False
                # a Close in an earlier batch, a DEALLOCATE: skipped if that batch failed (the name as before it)
        return name in self.confirmed

    def may_have(self, name: str) -> bool:
        """The server has statement `name` or may have it when a statement sent now runs: confirmed, or a Parse of it
        sent and not answered (a Close or DEALLOCATE not yet answered leaves it: the safe side)."""
        return name in self.confirmed or any(entry[0] == _PARSE and entry[1] == name for entry in self.ledger)

    def parse(self, name: str, request: object) -> None:
        """A Parse was sent (an unnamed one too: its ParseComplete is matched in order)."""
        self.ledger.append([_PARSE, name, request, self.batch])

    def close(self, name: str | None, request: object) -> None:
        """A Close was sent (`name` None: of a portal, matched in order too)."""
        self.ledger.append([_CLOSE, name, request, self.batch])

    def deallocate(self, name: str, request: object) -> None:
        """A SQL DEALLOCATE of `name` was sent (its CommandComplete says DEALLOCATE)."""
        self.ledger.append([_DEALLOCATE, name, request, self.batch])

    def parsing(self) -> frozenset[str]:
        """The statement names of the Parses sent and not answered."""
        return frozenset(entry[1] for entry in self.ledger if entry[0] == _PARSE and entry[1])

    def closing(self) -> set[str]:
        """The statement names of the Closes sent and not answered."""
        return {entry[1] for entry in self.ledger if entry[0] == _CLOSE and entry[1]}

    def sync(self) -> None:
        self.batch += 1

    def answered(self, kind: int, request: object) -> str | None:
        """The server answered the oldest entry of `kind` (ParseComplete, CloseComplete, DEALLOCATE) of `request`,
        the request being answered (a DEALLOCATE's tag with none: a statement that runs one, not followed)."""
        ledger = self.ledger
        for i, entry in enumerate(ledger):
            if entry[0] == kind and entry[2] is request:
                del ledger[i]
                name = entry[1]
                if not name:
                    return None
                if kind == _PARSE:
                    self.confirmed.add(name)
                    return name
                self.confirmed.discard(name)
                # (a Parse of it sent after: the records are that statement's now)
                return None if any(e[0] == _PARSE and e[1] == name for e in ledger) else name
        return None

    def parse_complete(self, request: object) -> None:
        self.answered(_PARSE, request)

    def close_complete(self, request: object) -> str | None:
        """A CloseComplete: the statement name it closed (None: a portal, or a name parsed again since)."""
        return self.answered(_CLOSE, request)

    def command_complete(self, tag: bytes, request: object) -> str | None:
        """A CommandComplete of DEALLOCATE (the statement name it closed, as `close_complete`) or of DEALLOCATE ALL /
        DISCARD ALL (`FORGETS_ALL`: every name goes)."""
        if tag in FORGETS_ALL:
            self.confirmed.clear()
        elif tag == b"DEALLOCATE\x00":
            return self.answered(_DEALLOCATE, request)
        return None

    def ended(self, request: object) -> list[str]:
        """`request` failed or ended: what of it is still unanswered was skipped by the server. The names of its
        Parses that were not confirmed (and are not on the server from before): the server does not have them."""
        if not any(entry[2] is request for entry in self.ledger):
            return []
        gone = [entry[1] for entry in self.ledger if entry[2] is request and entry[0] == _PARSE and entry[1]
                and entry[1] not in self.confirmed]
        self.ledger = deque(entry for entry in self.ledger if entry[2] is not request)
        return gone
