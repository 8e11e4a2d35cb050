"""ServerNames: the statement names a session pooling server has, as its answers confirm them (red team 6 F8)."""

from __future__ import annotations

from proxy.stmtnames import ServerNames

A, B = object(), object()  # two requests (the tracker's, by identity)


def test_a_name_is_taken_from_its_parse_and_stays_once_answered() -> None:
    n = ServerNames()
    assert not n.taken("s1")
    n.parse("s1", A)
    assert n.taken("s1")  # unanswered: the server may have it by the time a Parse reaches it
    n.parse_complete(A)
    n.ended(A)
    assert n.taken("s1") and n.confirmed == {"s1"}


def test_a_parse_that_failed_or_was_skipped_leaves_nothing() -> None:
    n = ServerNames()
    n.parse("", A)
    n.parse("s1", A)
    n.parse("s2", A)
    n.parse_complete(A)  # the unnamed one
    n.ended(A)  # an error: s1 failed, s2 was skipped
    assert not n.taken("s1") and not n.taken("s2") and not n.ledger


def test_answers_match_the_request_being_answered() -> None:
    n = ServerNames()
    n.parse("s1", A)
    n.sync()
    n.parse("s2", B)
    n.ended(A)  # A failed before its Parse was answered
    n.parse_complete(B)
    assert n.confirmed == {"s2"}


def test_a_close_in_the_same_batch_frees_the_name_for_a_parse_after_it() -> None:
    n = ServerNames()
    n.parse("s1", A)
    n.parse_complete(A)
    n.sync()
    n.ended(A)
    n.close("s1", B)
    assert not n.taken("s1")  # the Parse runs only if the Close did
    n.sync()
    assert n.taken("s1")  # a later batch: the Close may be skipped (an error before it in its batch)


def test_a_skipped_close_leaves_the_statement_and_an_answered_one_removes_it() -> None:
    n = ServerNames()
    n.parse("s1", A)
    n.parse_complete(A)
    n.ended(A)
    n.close("s1", B)
    n.sync()
    n.ended(B)  # an error before it: skipped
    assert n.taken("s1")
    n.close("s1", A)
    n.sync()
    assert n.close_complete(A) == "s1"
    assert not n.taken("s1")


def test_a_close_of_a_name_parsed_again_after_it_leaves_the_records_to_that_statement() -> None:
    n = ServerNames()
    n.parse("s1", A)
    n.parse_complete(A)
    n.close("s1", A)
    n.parse("s1", A)
    assert n.close_complete(A) is None  # the records are the new statement's
    assert n.taken("s1")
    n.parse_complete(A)
    assert n.confirmed == {"s1"}


def test_a_close_of_a_portal_or_of_an_unknown_name_changes_nothing() -> None:
    n = ServerNames()
    n.close(None, A)
    n.close("x", A)
    n.sync()
    assert not n.taken("x")
    assert n.close_complete(A) is None
    assert n.close_complete(A) == "x" and not n.confirmed


def test_deallocate_and_discard_are_followed_by_their_tags() -> None:
    n = ServerNames()
    for name in ("a", "b", "c"):
        n.parse(name, A)
        n.parse_complete(A)
    n.deallocate("a", B)
    assert n.taken("a")  # until its answer
    n.command_complete(b"DEALLOCATE\x00", B)
    assert not n.taken("a") and n.taken("b")
    n.command_complete(b"DEALLOCATE\x00", B)  # a DEALLOCATE the session did not follow (a prepared one): nothing
    assert n.confirmed == {"b", "c"}
    n.parse("d", B)
    n.command_complete(b"DISCARD ALL\x00", A)
    assert not n.taken("b") and n.taken("d")  # d's Parse comes after: its own answer decides
    n.parse_complete(B)
    n.command_complete(b"DEALLOCATE ALL\x00", B)
    assert not n.confirmed
