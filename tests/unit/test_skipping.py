"""skipping.Owed: an ErrorResponse is told to answer an extended message (the backend skips to Sync) or not."""

from __future__ import annotations

from proxy.skipping import Owed


def _owed(*sent: str) -> Owed:
    owed = Owed()
    for kind in sent:
        {"x": owed.extended, "q": owed.query, "s": owed.sync}[kind]()
    return owed


def test_an_error_in_an_extended_message_skips_a_query_up_to_the_sync() -> None:
    owed = _owed("x", "x", "x", "q", "x", "s", "q")  # Parse Bind Execute, Query, Parse, Sync; then a Query
    owed.completed()  # ParseComplete
    assert owed.failed() == []  # the Bind's error: the Query and the Parse after it are skipped
    assert list(owed.owed) == list(_owed("s", "q").owed)
    owed.ready()  # the Sync's
    assert owed.failed() is None  # the last Query's own error
    owed.ready()
    assert not owed.owed


def test_an_error_in_the_query_after_the_extended_messages_is_the_querys() -> None:
    owed = _owed("x", "x", "x", "q", "s")
    for _ in range(3):  # ParseComplete, BindComplete, CommandComplete
        owed.completed()
    owed.completed()  # the Query's CommandComplete: not an extended message's
    assert owed.failed() is None
    owed.ready()
    owed.ready()
    assert not owed.owed


def test_a_copy_in_swallows_the_sync_sent_before_it_began() -> None:
    owed = _owed("x", "x", "x", "s")  # Parse Bind Execute(COPY FROM STDIN) Sync
    owed.completed()
    owed.completed()
    owed.copy_in()  # the backend ignores that Sync; the client sends another after CopyDone
    owed.sync()
    owed.completed()  # the Execute's CommandComplete
    owed.ready()
    assert not owed.owed


def test_the_tokens_of_the_failed_and_skipped_messages_are_returned_the_last_first() -> None:
    owed = _owed("x")
    owed.tag("parse ok")
    owed.extended()
    owed.tag("bind")
    owed.extended()
    owed.tag("close")
    owed.completed()  # the first Parse's ParseComplete: its records stand
    assert owed.failed() == ["close", "bind"]
    assert owed.skipping and not owed.tag("sent after the error")  # skipped: taken back at once
    owed.sync()
    owed.ready()
    assert not owed.owed and not owed.skipping


def test_a_sync_sent_after_copydone_is_owed_its_answer() -> None:
    """Parse Bind Execute(COPY) CopyData CopyDone Sync in one write: the server reads that Sync (red team 9a4 K4)."""
    owed = _owed("x", "x", "x")
    owed.copy_end()  # CopyDone, before the server's CopyInResponse
    owed.sync()
    owed.query()  # then a Query
    owed.completed()
    owed.completed()
    owed.copy_in()
    owed.completed()  # the COPY's CommandComplete
    owed.ready()  # the Sync's
    assert list(owed.owed) == list(_owed("q").owed)


def test_a_sync_before_copydone_is_swallowed_by_a_querys_copy_too() -> None:
    """Query(COPY) Sync CopyDone, then Parse Sync: the Sync before CopyDone has no answer (red team 9a4 K3)."""
    owed = _owed("q", "s")
    owed.copy_end()
    owed.extended()
    owed.sync()
    owed.copy_in()
    owed.ready()  # the Query's
    assert list(owed.owed) == list(_owed("x", "s").owed)
    assert owed.failed() == []  # the Parse's error: it is an extended message's, up to its Sync


def test_an_answer_is_coming_only_when_a_flush_sync_or_query_came_after_its_message() -> None:
    """PostgreSQL sends the answers of extended messages at a Flush or Sync (a Query's at its ReadyForQuery): what
    is owed with neither after it is not coming, whatever was flushed before (the L1 residual)."""
    owed = _owed("x", "x", "x")  # Parse Bind Execute
    assert not owed.coming()
    owed.flush()
    assert owed.coming()
    for _ in range(3):
        owed.completed()
    assert not owed.coming()
    owed.extended()  # Bind, Execute: no Flush after them
    owed.extended()
    assert not owed.coming()
    owed.flush()
    assert owed.coming()
    owed = _owed("x", "x", "x", "s", "x", "x")  # a Sync, then a batch with none
    assert owed.coming()
    for _ in range(3):
        owed.completed()
    owed.ready()
    assert not owed.coming()
    owed.query()  # (its answer and the batch's before it come at its ReadyForQuery)
    assert owed.coming()
