"""The supervisor's decisions (pure): when to start, restart, signal and stop worker processes, as actions."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

RESTART_DELAY = 0.5  # seconds before the first restart of a crashed worker; doubled per crash in a row
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long before it crashed starts a new series (the delay is reset)


class SlotState(enum.Enum):
    STARTING = "starting"  # spawned, not listening yet
    RUNNING = "running"  # listening
    WAITING = "waiting"  # crashed; restarted at `restart_at`
    STOPPED = "stopped"  # exited while the supervisor stops (or the start failed)


class SlotEvent(enum.Enum):
    SPAWN = "spawn"  # a new process (at the start, or a restart that is due)
    LISTENING = "listening"  # its socket answers
    CRASHED = "crashed"  # it exited while it should run: restarted later
    EXITED = "exited"  # it exited while the supervisor stops, or before the start was complete
    STOP = "stop"  # the supervisor stops: no restart for a slot waiting for one


# (state, event) -> next state; a pair not here is a bug (KeyError).
TRANSITIONS: dict[tuple[SlotState, SlotEvent], SlotState] = {
    (SlotState.STOPPED, SlotEvent.SPAWN): SlotState.STARTING,  # (the first start)
    (SlotState.WAITING, SlotEvent.SPAWN): SlotState.STARTING,
    (SlotState.STARTING, SlotEvent.LISTENING): SlotState.RUNNING,
    (SlotState.STARTING, SlotEvent.CRASHED): SlotState.WAITING,
    (SlotState.RUNNING, SlotEvent.CRASHED): SlotState.WAITING,
    (SlotState.STARTING, SlotEvent.EXITED): SlotState.STOPPED,
    (SlotState.RUNNING, SlotEvent.EXITED): SlotState.STOPPED,
    (SlotState.WAITING, SlotEvent.STOP): SlotState.STOPPED,
}


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start worker `index` (a new process)."""

    index: int


@dataclass(frozen=True, slots=True)
class Signal:
    """Send `signum` to worker `index`."""

    index: int
    signum: int


@dataclass(frozen=True, slots=True)
class Exit:
    """Every worker is gone: the supervisor exits with `code`."""

    code: int


Action = Spawn | Signal | Exit


@dataclass(slots=True)
class Slot:
    """One worker position: its process (if any) and its crash history."""

    index: int
    state: SlotState = SlotState.STOPPED
    started: float = 0.0
    crashes: int = 0  # crashes in a row (reset once a worker ran STABLE_AFTER)
    restart_at: float = 0.0
    restarts: int = 0
    reload_due: bool = False  # a SIGHUP came while it started: sent once it listens (review 20 F12)


class Supervisor:
    """Worker slots fed events (`start`, `listening`, `exited`, `tick`, `hangup`, `terminate`); each answers the
    actions to run. A worker that fails before every worker has listened once fails the whole start (as the single
    process's start fails: a bad config or backend does not become a restart loop); later a crashed worker is
    restarted after a delay that doubles with each crash in a row."""

    def __init__(self, count: int) -> None:
        self.slots = [Slot(i) for i in range(count)]
        self.started = False  # every worker has listened once
        self.stopping = False
        self.exit_code = 0

    @staticmethod
    def _transition(slot: Slot, event: SlotEvent) -> None:
        slot.state = TRANSITIONS[(slot.state, event)]

    def _spawn(self, slot: Slot, now: float) -> Spawn:
        self._transition(slot, SlotEvent.SPAWN)
        slot.started = now
        slot.reload_due = False  # (a new process reads the file as it is)
        return Spawn(slot.index)

    def start(self, now: float) -> list[Action]:
        return [self._spawn(slot, now) for slot in self.slots]

    def listening(self, index: int, now: float) -> list[Action]:
        slot = self.slots[index]
        if slot.state is SlotState.STARTING:
            self._transition(slot, SlotEvent.LISTENING)
        self.started = self.started or all(s.state is SlotState.RUNNING for s in self.slots)
        if slot.reload_due and slot.state is SlotState.RUNNING:
            slot.reload_due = False
            return [Signal(index, signal.SIGHUP)]
        return []

    def exited(self, index: int, code: int, now: float) -> list[Action]:
        """Worker `index` exited with `code` (negative: killed by that signal)."""
        slot = self.slots[index]
        if self.stopping:
            self._transition(slot, SlotEvent.EXITED)
            return self._exit_if_done()
        if not self.started:  # a start that fails: stop the others and report the failure
            self.exit_code = code if code > 0 else 1
            self._transition(slot, SlotEvent.EXITED)
            return self.terminate()
        slot.crashes = 1 if now - slot.started >= STABLE_AFTER else slot.crashes + 1
        self._transition(slot, SlotEvent.CRASHED)
        slot.restart_at = now + min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (slot.crashes - 1))
        return []

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for slot in self.slots:
            if slot.state is SlotState.WAITING and now >= slot.restart_at and not self.stopping:
                slot.restarts += 1
                out.append(self._spawn(slot, now))
        return out

    def hangup(self) -> list[Action]:
        """SIGHUP: every running worker reloads its config; one still starting is sent it once it listens (it may
        have read the file before it changed; a SIGHUP sent while its interpreter starts, before any handler of
        its own, would end it: review 20 F12)."""
        for slot in self.slots:
            if slot.state is SlotState.STARTING:
                slot.reload_due = True
        return [Signal(s.index, signal.SIGHUP) for s in self.slots if s.state is SlotState.RUNNING]

    def terminate(self) -> list[Action]:
        """SIGTERM/SIGINT: every live worker drains and exits; no more restarts."""
        if self.stopping:
            return []
        self.stopping = True
        for slot in self.slots:
            if slot.state is SlotState.WAITING:
                self._transition(slot, SlotEvent.STOP)
        return [*(Signal(s.index, signal.SIGTERM) for s in self._live()), *self._exit_if_done()]

    def _live(self) -> list[Slot]:
        return [s for s in self.slots if s.state in (SlotState.STARTING, SlotState.RUNNING)]

    def _exit_if_done(self) -> list[Action]:
        return [] if self._live() else [Exit(self.exit_code)]

    def rows(self) -> list[tuple[int, str, int]]:
        """(index, state, restarts) per slot."""
        return [(s.index, s.state.value, s.restarts) for s in self.slots]
