"""proxy/unknownnames.py: names whose Parse or Close was skipped; bounded, failing closed past the bound."""

from __future__ import annotations

from proxy.unknownnames import MAX_UNKNOWN, UnknownNames


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
