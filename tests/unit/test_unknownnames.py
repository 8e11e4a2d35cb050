"""proxy/unknownnames.py: names whose Parse or Close was skipped; bounded, failing closed past the bound."""

from __future__ import annotations

from proxy.unknownnames import MAX_UNKNOWN, Flight, Flights, UnknownNames


def test_a_lost_name_is_unknown_until_parsed_again() -> None:
    names = UnknownNames()
    names.lost("s")
    assert names.unknown("s") and not names.unknown("t")
    names.sent("s")
    assert not names.unknown("s")


def test_past_the_bound_every_name_is_unknown_but_those_parsed_since() -> None:
    names = UnknownNames()
    for i in range(MAX_UNKNOWN + 1):
        names.lost(f"s{i}")
    assert names.unknown("s0") and names.unknown("never") and len(names.names) == 0
    names.sent("t")
    assert not names.unknown("t")
    names.lost("t")
    assert names.unknown("t")
    for i in range(MAX_UNKNOWN + 1):  # those parsed since are bounded too: forgotten, so unknown again
        names.sent(f"p{i}")
    assert len(names.since) <= MAX_UNKNOWN and names.unknown("p0")


def test_a_bind_in_a_later_batch_is_unsafe_only_while_a_reparse_of_the_name_is_unanswered() -> None:
    """Flights (red team 9a12 F1/F2): a Bind of a name in a later batch than its latest Parse or Close, before that is
    answered, is unsafe when another statement may be under the name (Parsed before, the unnamed one, or the
    server's); a fresh name (psycopg's pipelined prepared statements), the same batch, or an answered one is not."""
    lost: list[object] = []
    flights = Flights()
    fresh = Flight("p1", lost.append)
    flights.sent(fresh, 0, True)
    assert not flights.bind_unsafe("p1", 1, False)  # a fresh name's skipped Parse leaves nothing to run
    assert flights.bind_unsafe("p1", 1, True)  # ... unless the server had it
    again = Flight("p1", lost.append)
    flights.sent(again, 1, True)  # Parsed before: another statement may be under it
    assert flights.bind_unsafe("p1", 2, False) and not flights.bind_unsafe("p1", 1, False)
    del again  # its message answered: the journal (the only holder) is gone
    assert not flights.bind_unsafe("p1", 2, False)
    unnamed = Flight("", lost.append)
    flights.sent(unnamed, 3, True)
    assert flights.bind_unsafe("", 4, False)
    unnamed()  # skipped: the name is lost (UnknownNames takes it from there)
    assert lost == [""]
    closing = Flight("c", lost.append)
    flights.sent(closing, 5, False)
    assert not flights.bind_unsafe("c", 6, False) and flights.bind_unsafe("c", 6, True)


def test_answered_flights_are_pruned_and_live_ones_kept_past_the_bound() -> None:
    """Flights.sent: at MAX_UNKNOWN entries the answered ones go; live ones stay (a later Bind still sees them), and
    the next pruning waits for twice what is left (no scan of every entry at each Parse)."""
    flights = Flights()
    live = [Flight(f"s{i}", lambda _name: None) for i in range(MAX_UNKNOWN)]
    for flight in live:
        flights.sent(flight, 0, True)
    flights.sent(Flight("gone", lambda _name: None), 0, True)  # answered at once: no holder
    assert len(flights.latest) == MAX_UNKNOWN + 1 and flights.prune_at == 2 * MAX_UNKNOWN
    del live[: MAX_UNKNOWN // 2]
    for i in range(MAX_UNKNOWN):  # (the last one finds the map at prune_at: the answered ones go)
        flights.sent(Flight(f"t{i}", lambda _name: None), 1, True)
    assert len(flights.latest) < 2 * MAX_UNKNOWN and "gone" not in flights.latest
    assert flights.bind_unsafe(f"s{MAX_UNKNOWN - 1}", 2, True)
