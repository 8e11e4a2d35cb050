"""The supervisor process (I/O layer) of `[server] workers = N`: starts N `pgtenant run` worker processes that share
the listen port (SO_REUSEPORT), runs proxy/supervisor.py's decisions (restarts, SIGHUP, SIGTERM) and serves the
metrics port with one view of every worker."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy.config import Config
from proxy.httpd import OpsServer
from proxy.io.instanceport import InstancePort
from proxy.io.peers import MOCK_SECRET_FILE, WorkerIdentity, ask, socket_path
from proxy.logs import get_logger
from proxy.metrics import SupervisorMetrics, WorkerExpositions, merge_expositions
from proxy.mocksecret import with_mock_secret
from proxy.supervisor import Exit, Signal, SlotState, Spawn, Supervisor

log = get_logger("pgtenant.supervisor")

TICK = 0.1  # seconds between the supervisor's looks at its workers
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where this `proxy` package is: the workers import it
_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """The workers cannot be started; the message says why."""


def die_with_parent() -> None:
    """A worker ends (SIGTERM: drained) when its supervisor dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) the listen address with SO_REUSEPORT: the port is ours (port 0: a free one is chosen) and
    the workers bind it too; only their listening sockets get connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"listen: cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


class Workers:
    """The running supervisor: worker processes, their private directory, the metrics port."""

    def __init__(self, config: Config, directory: Path, port: int) -> None:
        self.config = config
        self.directory = directory
        self.port = port
        self.count = config.server.workers
        self.supervisor = Supervisor(self.count)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.metrics = SupervisorMetrics()
        self.expositions = WorkerExpositions()  # so that a restarted worker does not take its counts with it
        self.done: asyncio.Future[int] | None = None
        self.slot: int | None = None  # the instance slot the supervisor holds (`[registry] peer_port`)
        self.instance: InstancePort | None = None

    def environ(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.update(WorkerIdentity(index, self.count, self.directory, self.port, self.slot).environ())
        return env

    def run_actions(self, actions: list[Spawn | Signal | Exit]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self.spawn(action.index)
            elif isinstance(action, Signal):
                proc = self.processes.get(action.index)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(action.signum)
            elif isinstance(action, Exit) and self.done is not None and not self.done.done():
                self.done.set_result(action.code)
        self.metrics.workers(state for _, state, _ in self.supervisor.rows())

    def spawn(self, index: int) -> None:
        assert self.config.source is not None
        with contextlib.suppress(FileNotFoundError):
            socket_path(self.directory, index).unlink()  # so that only the new process answers the ping
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(self.config.source)],
            env=self.environ(index), stdin=subprocess.DEVNULL, close_fds=True,
        )
        self.processes[index] = proc
        if self.supervisor.slots[index].restarts:
            self.metrics.worker_restarted()
        log.info("worker_started", worker=index, pid=proc.pid)

    async def tick(self) -> None:
        now = time.monotonic()
        for index, proc in list(self.processes.items()):
            code = proc.poll()
            if code is not None:
                del self.processes[index]
                log.log(20 if self.supervisor.stopping else 40, "worker_exited", worker=index, pid=proc.pid,
                        code=code)
                self.run_actions(self.supervisor.exited(index, code, now))
        starting = [s.index for s in self.supervisor.slots
                    if s.state is SlotState.STARTING and s.index in self.processes]
        for index in starting:
            answer = await ask(socket_path(self.directory, index), {"op": "ping"}, 1.0)
            proc = self.processes.get(index)
            if answer is not None and proc is not None and answer.get("pid") == proc.pid:
                was_started = self.supervisor.started
                self.run_actions(self.supervisor.listening(index, now))
                log.info("worker_listening", worker=index, pid=proc.pid)
                if self.supervisor.started and not was_started:
                    log.info("workers_listening", workers=self.count, port=self.port)
        self.run_actions(self.supervisor.tick(now))
        if self.instance is not None:
            self.instance.publish()

    async def exposition(self) -> tuple[str, bytes]:
        """/metrics: every worker's metrics merged, and the supervisor's own."""
        answers = await asyncio.gather(*(ask(socket_path(self.directory, i), {"op": "metrics"})
                                         for i in range(self.count)))
        now = {i: None if a is None or "text" not in a else (int(a["pid"]), str(a["text"]))
               for i, a in enumerate(answers)}
        return merge_expositions([*self.expositions.texts(now), self.metrics.text()])

    async def ready(self) -> tuple[bool, dict[str, object]]:
        """/readyz: ready when every worker is (each checks its backends and tenants)."""
        answers = await asyncio.gather(*(ask(socket_path(self.directory, i), {"op": "ready"})
                                         for i in range(self.count)))
        workers = [{"worker": i, **({"ok": False, "detail": "not answering"} if a is None else a)}
                   for i, a in enumerate(answers)]
        ok = all(w.get("ok") is True for w in workers)
        return ok, {"listening": any(a is not None for a in answers), "workers": workers}


async def supervise(config: Config) -> int:
    """Run `config.server.workers` worker processes until SIGTERM/SIGINT; the exit code."""
    loop = asyncio.get_running_loop()
    reserved = reserve_port(config.listen.host, config.listen.port)
    directory = Path(tempfile.mkdtemp(prefix="pgtenant-"))  # mode 0700: only this user reaches the sockets
    ops: OpsServer | None = None
    instance: InstancePort | None = None
    try:
        secret = with_mock_secret(config).auth_mock_secret  # every worker's fake salts from the same secret
        fd = os.open(directory / MOCK_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
        workers = Workers(config, directory, int(reserved.getsockname()[1]))
        workers.done = loop.create_future()
        if config.registry.dsn and config.registry.peer_port is not None:  # the workers' keys carry its slot
            instance = InstancePort(config, directory, workers.count, workers.metrics)
            try:
                await instance.start()
            except RuntimeError as exc:
                raise StartupError(str(exc)) from exc
            workers.slot, workers.instance = instance.slot, instance
        if config.metrics.enabled:
            ops = OpsServer(config.metrics, workers, workers.ready)
            try:
                await ops.start()
            except OSError as exc:
                m = config.metrics
                raise StartupError(f"metrics: cannot listen on {m.host}:{m.port}: {exc.strerror}") from exc
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: workers.run_actions(workers.supervisor.terminate()))
        loop.add_signal_handler(signal.SIGHUP, lambda: workers.run_actions(workers.supervisor.hangup()))
        log.info("supervisor_started", workers=workers.count, port=workers.port, pid=os.getpid())
        workers.run_actions(workers.supervisor.start(time.monotonic()))
        while not workers.done.done():
            await workers.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(workers.done), TICK)
        code = workers.done.result()
        log.info("supervisor_stopped", code=code)
        return code
    finally:
        if ops is not None:
            await ops.close()
        if instance is not None:
            await instance.close()
        reserved.close()
        shutil.rmtree(directory, ignore_errors=True)


def run(config: Config) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(supervise(config))
    return uvloop.run(supervise(config))
