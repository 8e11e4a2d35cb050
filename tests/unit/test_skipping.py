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
    assert owed.failed()  # the Bind's error: the Query and the Parse after it are skipped
    assert list(owed.owed) == list(_owed("s", "q").owed)
    owed.ready()  # the Sync's
    assert not owed.failed()  # the last Query's own error
    owed.ready()
    assert not owed.owed


def test_an_error_in_the_query_after_the_extended_messages_is_the_querys() -> None:
    owed = _owed("x", "x", "x", "q", "s")
    for _ in range(3):  # ParseComplete, BindComplete, CommandComplete
        owed.completed()
    owed.completed()  # the Query's CommandComplete: not an extended message's
    assert not owed.failed()
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
