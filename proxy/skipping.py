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
_COPY_END = 3  # no answer: where the client ended a COPY IN (CopyDone/CopyFail) the server had not begun yet


class Owed:
    """The answers a session's server still owes, in the order it sends them: an extended message's is _EXTENDED or
    the token it was tagged with (the session's records of it, taken back if it fails or is skipped)."""

    __slots__ = ("owed", "skipping", "unflushed")

    def __init__(self) -> None:
        self.owed: deque[object] = deque()
        self.skipping = False  # an error arrived before the batch's Sync was sent: what comes up to it is skipped
        self.unflushed = 0  # the extended messages owed sent after the last Flush, Sync, Query or FunctionCall

    def extended(self) -> None:
        """An extended message was sent (Parse, Bind, Describe, Execute, Close)."""
        if not self.skipping:
            self.owed.append(_EXTENDED)
            self.unflushed += 1

    def flush(self) -> None:
        """A Flush was sent: the server sends the answers of everything sent before it."""
        self.unflushed = 0

    def coming(self) -> bool:
        """An answer the client asked for (a Flush, Sync, Query or FunctionCall sent after its message) is owed: the
        server sends it. PostgreSQL buffers the answers of extended messages until a Flush or Sync; answers come in
        order, so the owed ones are the last sent, those after the last Flush among them."""
        answers = sum(not (type(unit) is int and unit == _COPY_END) for unit in self.owed)
        return answers > self.unflushed

    def tag(self, token: object) -> bool:
        """The extended message just sent carries `token` (returned by `failed` if it fails or is skipped). False:
        the server skips it (an error earlier in its batch)."""
        if self.skipping:
            return False
        owed = self.owed
        if owed and type(owed[-1]) is int and owed[-1] == _EXTENDED:
            owed[-1] = token
        return True

    def query(self) -> None:
        """A Query or FunctionCall was sent."""
        if not self.skipping:
            self.owed.append(_READY)
            self.unflushed = 0

    def sync(self) -> None:
        """A Sync was sent (one the backend reads: not one it swallows in COPY IN)."""
        self.skipping = False
        self.owed.append(_SYNC)
        self.unflushed = 0

    def completed(self, _body: bytes = b"") -> None:
        """ParseComplete, BindComplete, CloseComplete, NoData, RowDescription, CommandComplete, EmptyQueryResponse
        or PortalSuspended: the end of an extended message's answer (nothing, when a Query's)."""
        owed = _unmarked(self.owed)
        if owed and _extended(owed[0]):
            owed.popleft()

    def copy_end(self) -> None:
        """CopyDone or CopyFail, sent before the server said it began a COPY IN (it may not be one): the Syncs sent
        before it are the ones a COPY IN begun by what is owed before them swallows (`copy_in`)."""
        if self.owed:
            self.owed.append(_COPY_END)

    def copy_in(self) -> None:
        """CopyInResponse: the COPY FROM STDIN of the head (an Execute's or a Query's) swallows the Syncs the client
        sent after it and before its CopyDone/CopyFail (libpq pipelines one), not those after (red team 9a4 K3/K4)."""
        owed = _unmarked(self.owed)
        if not owed:
            return
        kept = [owed.popleft()]
        while owed:
            unit = owed.popleft()
            if type(unit) is int and unit == _COPY_END:
                break
            if not (type(unit) is int and unit == _SYNC):
                kept.append(unit)
        owed.extendleft(reversed(kept))

    def ready(self) -> None:
        """ReadyForQuery: a Query's, a FunctionCall's or a Sync's."""
        owed = self.owed
        while owed:
            unit = owed.popleft()
            if not _extended(unit) and unit != _COPY_END:
                return

    def failed(self) -> list[object] | None:
        """An ErrorResponse: None when it answers no extended message; else what was sent up to the next Sync is
        skipped, and the tokens of those messages (the failed one's too) are returned, the last first."""
        owed = _unmarked(self.owed)
        if not owed or not _extended(owed[0]):
            return None
        tokens = []
        while owed and not (type(owed[0]) is int and owed[0] == _SYNC):
            unit = owed.popleft()
            if type(unit) is not int:
                tokens.append(unit)
        self.skipping = not owed  # (the Sync not sent yet)
        tokens.reverse()
        return tokens


def _unmarked(owed: deque[object]) -> deque[object]:
    """`owed` without the COPY-end marks at its head (what they marked is answered: no COPY IN began there)."""
    while owed and type(owed[0]) is int and owed[0] == _COPY_END:
        owed.popleft()
    return owed


def _extended(unit: object) -> bool:
    return type(unit) is not int or unit == _EXTENDED
