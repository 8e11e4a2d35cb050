"""Whether an ErrorResponse answers an extended message (the backend then skips to Sync, a Query too) or not; pure.

After an error in an extended message PostgreSQL skips every message up to the next Sync — a Query or FunctionCall
among them gets no answer — while an error in a Query ends at that Query's ReadyForQuery (red team 9a3 J8). Which one
an ErrorResponse answers follows from the order of the answers: each extended message sent (Parse, Bind, Describe,
Execute, Close) is answered by one message that ends it (or the error), each Query, FunctionCall and Sync by a
ReadyForQuery. `Owed` holds what is owed, oldest first, for a session without the statement maps' response ledger
(statements.py knows it itself: `Statements.skips_to_sync`)."""

from __future__ import annotations

from collections import deque

_EXTENDED, _READY, _SYNC = 0, 1, 2  # an extended message; a Query or FunctionCall; a Sync


class Owed:
    """The answers a session's server still owes, in the order it sends them."""

    __slots__ = ("owed",)

    def __init__(self) -> None:
        self.owed: deque[int] = deque()

    def extended(self) -> None:
        """An extended message was sent (Parse, Bind, Describe, Execute, Close)."""
        self.owed.append(_EXTENDED)

    def query(self) -> None:
        """A Query or FunctionCall was sent."""
        self.owed.append(_READY)

    def sync(self) -> None:
        """A Sync was sent (one the backend reads: not one it swallows in COPY IN)."""
        self.owed.append(_SYNC)

    def completed(self, _body: bytes = b"") -> None:
        """ParseComplete, BindComplete, CloseComplete, NoData, RowDescription, CommandComplete, EmptyQueryResponse
        or PortalSuspended: the end of an extended message's answer (nothing, when a Query's)."""
        owed = self.owed
        if owed and owed[0] == _EXTENDED:
            owed.popleft()

    def copy_in(self) -> None:
        """CopyInResponse: an Execute's COPY FROM STDIN swallows a Sync sent before it began (libpq pipelines one)."""
        owed = self.owed
        if owed and owed[0] == _EXTENDED:
            for i, kind in enumerate(owed):
                if kind == _SYNC:
                    del owed[i]
                    return
                if kind != _EXTENDED:
                    return

    def ready(self) -> None:
        """ReadyForQuery: a Query's, a FunctionCall's or a Sync's."""
        owed = self.owed
        while owed:
            if owed.popleft() != _EXTENDED:
                return

    def failed(self) -> bool:
        """An ErrorResponse: whether it answers an extended message (what was sent up to the next Sync is skipped)."""
        owed = self.owed
        if not owed or owed[0] != _EXTENDED:
            return False
        while owed and owed[0] != _SYNC:
            owed.popleft()
        return True
