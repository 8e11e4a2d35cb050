"""proxy.io.client: when the client's socket is read while its session asks the pool for a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.io.client import ClientConnection


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


@pytest.mark.parametrize("answer", ["granted", "later"])
def test_the_client_is_paused_only_while_it_really_waits_for_a_server(answer: str) -> None:
    """An idle server is granted inside Pool.request: no pause and resume around it (two epoll_ctl calls per
    transaction in transaction pooling); a request left waiting pauses the client until it is answered."""
    conn = ClientConnection(SimpleNamespace())  # type: ignore[arg-type]
    transport = conn.transport = Transport()  # type: ignore[assignment]

    def request(client: ClientConnection, request: object, route: object) -> None:
        if answer == "granted":  # what server_granted does first
            client._waiting_server = False
            client._update_reading()

    conn.proxy = SimpleNamespace(pool=SimpleNamespace(request=request))  # type: ignore[assignment]
    conn._request_server(object())  # type: ignore[arg-type]
    if answer == "granted":
        assert transport.calls == []
    else:
        assert transport.calls == ["pause"] and conn._waiting_server
