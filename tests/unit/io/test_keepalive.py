"""TCP keepalive and TCP_USER_TIMEOUT on server sockets (red team 9r F5: a partitioned server is given up on)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from proxy.io.keepalive import PROBES, keepalive


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield s
    s.close()


def test_the_kernel_gives_up_on_a_silent_peer_after_about_the_timeout(sock: socket.socket) -> None:
    keepalive(sock, 30.0)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == PROBES
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000


def test_zero_leaves_the_os_defaults(sock: socket.socket) -> None:
    keepalive(sock, 0)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    keepalive(None, 30.0)  # (a transport without a socket: nothing to do)
