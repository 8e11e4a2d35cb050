"""Maps the cancel keys pgtenant hands to clients onto the real backend keys; pure and bounded."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from proxy.config import BackendConfig


@dataclass(frozen=True, slots=True)
class CancelTarget:
    backend: BackendConfig
    process_id: int
    secret_key: bytes


class CancelRegistry:
    """Client (process id, secret) -> the backend key currently serving that client."""

    def __init__(self) -> None:
        self._by_pid: dict[int, tuple[bytes, CancelTarget]] = {}

    def register(self, process_id: int, secret_key: bytes, target: CancelTarget) -> None:
        self._by_pid[process_id] = (secret_key, target)

    def unregister(self, process_id: int) -> None:
        self._by_pid.pop(process_id, None)

    def lookup(self, process_id: int, secret_key: bytes) -> CancelTarget | None:
        entry = self._by_pid.get(process_id)
        if entry is None:
            return None
        secret, target = entry
        return target if hmac.compare_digest(secret, secret_key) else None

    def __contains__(self, process_id: int) -> bool:
        return process_id in self._by_pid
