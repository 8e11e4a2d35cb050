"""proxy/mcp/refusals.py: refused requests are logged once per source and interval, the rest counted."""

from __future__ import annotations

from typing import Any

from proxy.mcp import refusals
from proxy.mcp.refusals import RefusedRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _book() -> tuple[RefusedRequests, Clock, list[tuple[str, dict[str, Any]]]]:
    clock, lines = Clock(), []
    book = RefusedRequests(lambda event, **fields: lines.append((event, fields)), interval=60.0, clock=clock)
    return book, clock, lines


def test_a_flood_from_one_source_is_one_line_then_a_count() -> None:
    book, clock, lines = _book()
    for _ in range(1000):
        book.refused("invalid_token", "10.0.0.7")
    assert [e for e, _ in lines] == ["mcp_request_refused"]
    clock.now += 61
    book.sweep()
    assert lines[1] == ("mcp_requests_refused", {"peer": "10.0.0.7", "refused": 999, "last_reason": "invalid_token",
                                                 "seconds": 61.0})
    book.refused("missing_token", "10.0.0.7")  # a new interval: logged again
    assert lines[2][0] == "mcp_request_refused" and lines[2][1]["reason"] == "missing_token"
    book.flush()
    assert len(lines) == 3  # nothing counted since: no summary


def test_each_source_gets_its_first_line_and_a_refusal_after_the_interval_sums_up_the_last() -> None:
    book, clock, lines = _book()
    book.refused("invalid_token", "10.0.0.7")
    book.refused("invalid_token", "10.0.0.7")
    book.refused("missing_token", "10.0.0.8")
    assert [(e, f["peer"]) for e, f in lines] == [("mcp_request_refused", "10.0.0.7"),
                                                  ("mcp_request_refused", "10.0.0.8")]
    clock.now += 30
    book.refused("invalid_token", "10.0.0.7")
    clock.now += 31
    book.refused("invalid_token", "10.0.0.7")
    assert lines[2:] == [("mcp_requests_refused", {"peer": "10.0.0.7", "refused": 2, "last_reason": "invalid_token",
                                                   "seconds": 61.0}),
                         lines[3]]
    assert lines[3][0] == "mcp_request_refused"


def test_past_max_sources_new_sources_share_one_entry(monkeypatch: Any) -> None:
    monkeypatch.setattr(refusals, "MAX_SOURCES", 3)
    book, _, lines = _book()
    for i in range(100):
        book.refused("invalid_token", f"10.0.1.{i}")
    assert [f["peer"] for _, f in lines] == ["10.0.1.0", "10.0.1.1", "10.0.1.2", "*"]
    book.flush()
    assert lines[-1][1]["peer"] == "*" and lines[-1][1]["refused"] == 96
