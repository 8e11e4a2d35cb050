"""The supervisor's instance (I/O layer) with `[server] workers > 1` and `[registry] peer_port`: it claims the
instance's slot in the registry and owns the peer port; a cancel another instance passes on goes to the worker its
process id names, over that worker's unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from proxy.cancel import KeySpace
from proxy.config import Config
from proxy.io.peercancel import PeerCancelServer, advertised_host, no_slot_problem
from proxy.io.peers import ask, socket_path
from proxy.io.registrywatch import RegistryWatch
from proxy.logs import LogLimiter, get_logger
from proxy.metrics import SupervisorMetrics
from proxy.ops import ReloadStatus

log = get_logger("pgtenant.peers")

CLAIM_WAIT = 30.0  # seconds the start waits for the registry to give a slot
# In the workers' directory while the supervisor's slot is another instance's (red team 9b N3): they refuse logins.
SLOT_LOST_FILE = "instance-slot-lost"


class InstancePort:
    """The slot (held on a registry connection for the supervisor's life) and the peer port of a proxy of worker
    processes."""

    def __init__(self, config: Config, directory: Path, count: int, metrics: SupervisorMetrics) -> None:
        registry = config.registry
        assert registry.dsn is not None and registry.peer_port is not None and registry.peer_secret is not None
        self.config = config
        self.directory = directory
        self.workers = KeySpace(0, count)  # which worker a process id names
        self.metrics = metrics
        self.log_limit = LogLimiter()
        self.server = PeerCancelServer(registry.peer_host, registry.peer_port, registry.peer_secret.encode(),
                                       self._cancel, self._claim, self._refused, registry)
        self.watch: RegistryWatch | None = None
        self._held = True  # what the workers were last told (publish)

    @property
    def slot(self) -> int | None:
        return None if self.watch is None else self.watch.slot

    async def start(self) -> None:
        """Listen on the peer port and claim a slot (RuntimeError saying why when either fails)."""
        registry = self.config.registry
        try:
            await self.server.start()
        except OSError as exc:
            raise RuntimeError(f"registry.peer_port: cannot listen on {registry.peer_host}:{registry.peer_port}: "
                               f"{exc.strerror}") from exc
        peer = (advertised_host(registry.advertise_host, registry.peer_host), self.server.port, registry.instance_bits)
        assert registry.dsn is not None
        # Its registry connection only holds the slot: the workers follow the registry's changes themselves.
        self.watch = RegistryWatch(registry.dsn, registry.reconnect_delay, _nothing_to_reload, peer)
        self.watch.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watch.claimed.wait(), CLAIM_WAIT)
        if self.watch.slot is None:
            raise RuntimeError(no_slot_problem(registry.instance_bits))

    def publish(self) -> None:
        """Tell the workers whether the slot is still held (a file in their directory; every supervisor tick)."""
        held = self.watch is None or self.watch.holds_slot
        if held != self._held:
            self._held = held
            lost = self.directory / SLOT_LOST_FILE
            if held:
                lost.unlink(missing_ok=True)
            else:
                lost.touch()

    def _claim(self) -> tuple[int | None, int | None]:
        return (None, None) if self.watch is None else (self.watch.slot, self.watch.claim)

    async def _cancel(self, process_id: int, proof: bytes) -> bool:
        worker = self.workers.worker_of(process_id)
        if worker is None:
            return False
        answer = await ask(socket_path(self.directory, worker), {"op": "cancel", "pid": process_id,
                                                                  "proof": proof.hex()})
        return bool(answer and answer.get("found"))

    def _refused(self, reason: str) -> None:
        self.metrics.peer_refused(reason)
        dropped = self.log_limit.allow(time.monotonic())
        if dropped is not None:
            log.warning("peer_cancel_refused", reason=reason, **({"suppressed_before": dropped} if dropped else {}))

    async def close(self) -> None:
        await self.server.close()
        if self.watch is not None:
            await self.watch.close()


async def _nothing_to_reload() -> tuple[ReloadStatus, str]:
    return "applied", ""  # the supervisor holds the instance slot only: nothing applied, nothing to log
