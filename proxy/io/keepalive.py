"""TCP keepalive and TCP_USER_TIMEOUT on server sockets: a partitioned server is given up on, not waited for."""

from __future__ import annotations

import contextlib
import socket

PROBES = 3  # keepalive probes unanswered before the kernel drops the connection


def keepalive(sock: socket.socket | None, timeout: float) -> None:
    """Ask the kernel to give up on `sock` once its peer has acknowledged nothing for about `timeout` seconds:
    keepalive probes after a third of it idle (then PROBES of them, a ninth apart), and TCP_USER_TIMEOUT at it for
    data sent and never acknowledged (Linux). A peer that is only slow (a long query: its kernel still acknowledges)
    is never dropped. 0: the OS defaults. (A stopped process whose kernel still acknowledges is not found this way:
    the replica poller's probes find it, io/replicas.py.)"""
    if sock is None or timeout <= 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(timeout / 3))
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", max(1, int(timeout / 9))),
                            ("TCP_KEEPCNT", PROBES), ("TCP_USER_TIMEOUT", int(timeout * 1000))):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
