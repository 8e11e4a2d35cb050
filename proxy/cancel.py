"""Maps the cancel keys pgtenant hands to clients onto the sessions they name; pure and bounded."""

from __future__ import annotations

import hmac


class CancelRegistry:
    """Client (process id, secret) -> the session it was given to (a cancel is forwarded to the server that session
    holds when the CancelRequest arrives, if any)."""

    def __init__(self) -> None:
        self._by_pid: dict[int, tuple[bytes, object]] = {}

    def register(self, process_id: int, secret_key: bytes, target: object) -> None:
        self._by_pid[process_id] = (secret_key, target)

    def unregister(self, process_id: int) -> None:
        self._by_pid.pop(process_id, None)

    def lookup(self, process_id: int, secret_key: bytes) -> object | None:
        entry = self._by_pid.get(process_id)
        if entry is None:
            return None
        secret, target = entry
        return target if hmac.compare_digest(secret, secret_key) else None

    def __contains__(self, process_id: int) -> bool:
        return process_id in self._by_pid
