"""Decision workers: processes that decide costly cache misses off the event loop, fairly between tenants, each
within a time budget that fails closed."""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from time import monotonic, perf_counter
from types import MappingProxyType
from typing import Any

from proxy import allocator
from proxy.logs import get_logger
from proxy.policy.cache import Pending
from proxy.policy.engine import decide
from proxy.policy.model import EMPTY_CONTEXT, Decision, SessionContext, TenantPolicy
from proxy.policy.rules import deny
from proxy.turns import PENALTY_TIMEOUTS, Turns

log = get_logger("pgtenant.workers")

# Address space a worker may map (bytes): a statement whose parse needs more fails there (a denial), not the proxy.
WORKER_ADDRESS_SPACE = 2 << 30
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # where this `proxy` package is: the workers import it
_BIG = 1 << 20  # after a text at least this large, a worker gives its freed heap back
_LENGTH = struct.Struct("!Q")  # each message on a worker's socket: its length, then a pickle
Done = Callable[[Decision, dict[str, float]], None]


def _policy_fields(policy: TenantPolicy) -> dict[str, Any]:
    out = {f.name: getattr(policy, f.name) for f in fields(policy) if f.init}
    return {k: dict(v) if isinstance(v, MappingProxyType) else v for k, v in out.items()}


def _rebuild_policy(values: dict[str, Any], context: SessionContext | None = None) -> TenantPolicy:
    policy = TenantPolicy(**values)
    return policy if context is None else policy.with_context(context)


def _reduce_policy(
    policy: TenantPolicy,
) -> tuple[Callable[..., TenantPolicy], tuple[dict[str, Any], SessionContext | None]]:
    context = policy.context
    return _rebuild_policy, (_policy_fields(policy.base), None if context == EMPTY_CONTEXT else context)


# A policy crosses to a worker as its constructor's arguments and the session's context (temporary relations,
# search_path): a session's decision made there resolves names as on the event loop.
copyreg.pickle(TenantPolicy, _reduce_policy)


def frame(message: object) -> bytes:
    """A message for a worker's socket."""
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def serve(sock: socket.socket, address_space: int) -> None:
    """A worker process: decide each (id, policy, sql, limits) received, answer (id, decision, stage times)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy handles Ctrl-C and ends its workers
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    allocator.return_large_blocks()
    while True:
        head = _read_exactly(sock, _LENGTH.size)
        if head is None:
            return  # the proxy is gone
        (length,) = _LENGTH.unpack(head)
        try:
            payload = _read_exactly(sock, length)
            if payload is None:
                return
            task_id, policy, sql, limits = pickle.loads(payload)
            del payload
        except MemoryError:
            sock.sendall(frame((None, deny("statement_too_large", "the statement is too large to receive"), {})))
            continue
        stages: dict[str, float] = {}
        t0 = perf_counter()
        decision = decide(policy, sql, stages, limits)
        stages["total"] = perf_counter() - t0
        big = len(sql) >= _BIG
        del sql
        sock.sendall(frame((task_id, decision, stages)))
        if big:
            allocator.trim()


class _Task:
    """One decision asked for: what, by whom, where the outcome goes, and its timer once dispatched."""

    __slots__ = ("done", "id", "pending", "timer", "worker")

    def __init__(self, task_id: int, pending: Pending, done: Done) -> None:
        self.id = task_id
        self.pending = pending
        self.done: Done | None = done
        self.worker: _Worker | None = None
        self.timer: asyncio.TimerHandle | None = None


class _Worker:
    """One worker process (`python -m proxy.workers FD`, the same `proxy` package) and the proxy's end of its socket
    (non-blocking: answers are read as they come, into `inbox`)."""

    __slots__ = ("inbox", "process", "sock", "task")

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy.workers", str(theirs.fileno()), str(WORKER_ADDRESS_SPACE)],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.inbox = bytearray()
        self.task: _Task | None = None

    def answers(self) -> list[Any] | None:
        """Read what the socket has; the whole answers it completes (None once the worker is gone)."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return None
            if not chunk:
                return None
            self.inbox += chunk
        out = []
        while len(self.inbox) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.inbox)
            end = _LENGTH.size + length
            if len(self.inbox) < end:
                break
            out.append(pickle.loads(bytes(self.inbox[_LENGTH.size : end])))
            del self.inbox[:end]
        return out

    def stop(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=0)  # reaped now if it is gone already, else when the next one is replaced


class DecisionWorkers:
    """Runs Pendings in up to `count` worker processes (each started when first needed: a fresh interpreter).

    Fair between tenants (proxy/turns.py): each tenant's tasks wait in its own queue, tenants are served in turn,
    one tenant runs at most max(1, count // 2) tasks at a time while another waits, a tenant already running one
    never takes the last free worker, and a tenant whose decision ran out of time is served last, one task at a
    time, for PENALTY_TIMEOUTS timeouts. Each task must be answered within `timeout` seconds of being dispatched
    to a worker (its wait in the queue does not count), else it is answered with a denial (57014, rule
    decision_timeout) and the worker running it is killed and replaced: a statement cannot hold a worker for longer
    than that. A worker that fails is replaced too (its task is denied with XX000).
    """

    def __init__(
        self, count: int, timeout: float, on_restart: Callable[[str], None] | None = None,
        start: Callable[[], _Worker] = _Worker,
    ) -> None:
        self.count = count
        self.timeout = timeout
        self.on_restart = on_restart
        self._start_worker = start  # how a worker is started (a test plays one over a socket pair)
        self._workers: list[_Worker] = []
        self._turns: Turns[_Task] = Turns(PENALTY_TIMEOUTS * timeout)
        self._next_id = 0
        self.completed = 0

    def submit(self, pending: Pending, done: Done) -> _Task:
        """Decide `pending` in a worker; `done(decision, stage times)` is called on the event loop (once)."""
        self._next_id += 1
        task = _Task(self._next_id, pending, done)
        self._turns.add(pending.tenant, task)
        self._dispatch()
        return task

    def cancel(self, task: _Task) -> None:
        """Nobody waits for this task any more (its client left): drop it if queued; a running one finishes."""
        task.done = None
        if task.worker is None:
            self._finish(task, None, {})

    def _dispatch(self) -> None:
        while True:
            idle = [worker for worker in self._workers if worker.task is None]
            free = len(idle) + max(0, self.count - len(self._workers))
            picked = self._turns.take(free, self.count, monotonic())
            if picked is None:
                return
            self._start(idle[0] if idle else self._new_worker(), picked[1])

    def _new_worker(self) -> _Worker:
        worker = self._start_worker()
        self._workers.append(worker)
        asyncio.get_running_loop().add_reader(worker.sock.fileno(), self._readable, worker)
        return worker

    def _start(self, worker: _Worker, task: _Task) -> None:
        worker.task = task
        task.worker = worker
        loop = asyncio.get_running_loop()
        task.timer = loop.call_at(loop.time() + self.timeout, self._expire, task)  # its budget starts now
        pending = task.pending
        data = frame((task.id, pending.policy, pending.sql, pending.limits))
        send = loop.create_task(loop.sock_sendall(worker.sock, data))  # the worker may still be starting
        send.add_done_callback(_sent)

    def _readable(self, worker: _Worker) -> None:
        try:
            answers = worker.answers()
        except (pickle.UnpicklingError, ValueError, EOFError):
            answers = None
        if answers is None:
            self._replace(worker, "failed")
            return
        for task_id, decision, stages in answers:
            task = worker.task
            if task is None or (task.id != task_id and task_id is not None):
                continue  # the answer to a task already answered (its time ran out as the answer came)
            worker.task = None
            self._finish(task, decision, stages)
            self.completed += 1
        self._dispatch()

    def _expire(self, task: _Task) -> None:
        """The task's time is up: deny it; kill its worker if it is running."""
        task.timer = None
        worker = task.worker
        self._finish(task, deny(
            "decision_timeout", f"checking the statement took longer than {self.timeout:g} s (limits.decision_timeout)"
        ), {}, timed_out=True)
        if worker is not None:
            self._replace(worker, "timeout", answered=True)

    def _replace(self, worker: _Worker, reason: str, answered: bool = False) -> None:
        """Stop a worker (its task, unless already answered, is denied); another starts when one is needed."""
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.sock.fileno())
        worker.stop()
        if worker in self._workers:
            self._workers.remove(worker)
        task, worker.task = worker.task, None
        if task is not None and not answered:
            self._finish(task, deny("internal_error", "the decision worker failed"), {})
        log.warning("decision_worker_replaced", reason=reason)
        if self.on_restart is not None:
            self.on_restart(reason)
        self._dispatch()

    def _finish(
        self, task: _Task, decision: Decision | None, stages: dict[str, float], timed_out: bool = False
    ) -> None:
        """Answer a task once: stop its timer, release its tenant's slot or queue place, call `done`."""
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        tenant = task.pending.tenant
        if task.worker is not None:
            task.worker = None
            self._turns.penalty = PENALTY_TIMEOUTS * self.timeout  # (a reload may change the timeout)
            self._turns.finished(tenant, monotonic(), timed_out)
        else:
            self._turns.remove(tenant, task)
        done, task.done = task.done, None
        if done is not None and decision is not None:
            done(decision, stages)

    def close(self) -> None:
        """Stop every worker (shutdown)."""
        for worker in list(self._workers):
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(worker.sock.fileno())
            worker.stop()
        self._workers.clear()


def _sent(send: asyncio.Task[None]) -> None:
    """A task written to a worker, or not (it died: its reader replaces it); never an unretrieved exception."""
    if not send.cancelled():
        send.exception()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]))
