"""proxy.supervisor: the supervisor's decisions about its worker processes, as scripted conversations."""

from __future__ import annotations

import signal

from proxy.supervisor import MAX_RESTART_DELAY, RESTART_DELAY, STABLE_AFTER, Exit, Signal, Spawn, Supervisor


def running(count: int = 2) -> Supervisor:
    sup = Supervisor(count)
    assert sup.start(0.0) == [Spawn(i) for i in range(count)]
    for i in range(count):
        assert sup.listening(i, 1.0) == []
    assert sup.started
    return sup


def test_a_worker_failing_at_the_first_start_fails_the_start() -> None:
    sup = Supervisor(2)
    sup.start(0.0)
    sup.listening(0, 1.0)
    assert not sup.started
    assert sup.exited(1, 3, 2.0) == [Signal(0, signal.SIGTERM)]  # no restart loop on a bad config or backend
    assert sup.exited(0, 0, 3.0) == [Exit(3)]


def test_a_crashed_worker_is_restarted_after_a_doubling_delay() -> None:
    sup = running()
    assert sup.exited(1, -signal.SIGKILL, 10.0) == []
    assert sup.tick(10.0 + RESTART_DELAY / 2) == []
    assert sup.tick(10.0 + RESTART_DELAY) == [Spawn(1)]
    assert sup.exited(1, 1, 11.0) == []  # crashed again at once: twice the delay
    assert sup.tick(11.0 + RESTART_DELAY * 1.5) == []
    assert sup.tick(11.0 + RESTART_DELAY * 2) == [Spawn(1)]
    assert sup.rows()[1] == (1, "starting", 2)


def test_the_delay_is_capped_and_reset_after_a_stable_run() -> None:
    sup = running(1)
    now = 1.0
    for _ in range(12):
        sup.exited(0, 1, now)
        now = sup.slots[0].restart_at
        assert sup.tick(now) == [Spawn(0)]
    assert sup.slots[0].restart_at - sup.slots[0].started <= MAX_RESTART_DELAY
    sup.listening(0, now)
    sup.exited(0, 1, now + STABLE_AFTER)
    assert sup.slots[0].restart_at == now + STABLE_AFTER + RESTART_DELAY


def test_sighup_reaches_every_live_worker() -> None:
    sup = running(3)
    sup.exited(2, -9, 5.0)
    assert sup.hangup() == [Signal(0, signal.SIGHUP), Signal(1, signal.SIGHUP)]


def test_sighup_waits_for_a_starting_worker_until_it_listens() -> None:
    """Review 20 F12: a worker still starting (its interpreter may not have a handler yet: SIGHUP's default action
    would end it) gets the reload once it listens, once; a restarted one reads the file anew."""
    sup = Supervisor(3)
    sup.start(0.0)
    sup.listening(0, 1.0)
    assert sup.hangup() == [Signal(0, signal.SIGHUP)]
    assert sup.hangup() == [Signal(0, signal.SIGHUP)]
    assert sup.listening(1, 2.0) == [Signal(1, signal.SIGHUP)]
    assert sup.listening(1, 2.5) == []
    assert sup.listening(2, 3.0) == [Signal(2, signal.SIGHUP)]
    sup.exited(2, -9, 4.0)  # crashed: its restart reads the file as it is then
    assert sup.hangup() == [Signal(0, signal.SIGHUP), Signal(1, signal.SIGHUP)]
    assert sup.tick(sup.slots[2].restart_at) == [Spawn(2)]
    assert sup.listening(2, 10.0) == []


def test_sigterm_drains_every_worker_then_exits_without_restarts() -> None:
    sup = running(3)
    sup.exited(2, -9, 5.0)  # waiting for its restart: never restarted now
    assert sup.terminate() == [Signal(0, signal.SIGTERM), Signal(1, signal.SIGTERM)]
    assert sup.terminate() == []
    assert sup.tick(100.0) == []
    assert sup.exited(0, 0, 6.0) == []
    assert sup.exited(1, 0, 7.0) == [Exit(0)]


def test_every_transition_is_used() -> None:
    """Every row of the slots' table is taken by the conversations above (a row no event reaches is dead)."""
    from proxy import supervisor

    taken: set[tuple[object, object]] = set()
    original = Supervisor._transition

    def spy(slot, event):  # type: ignore[no-untyped-def]
        taken.add((slot.state, event))
        original(slot, event)

    Supervisor._transition = staticmethod(spy)  # type: ignore[method-assign]
    try:
        for test in (test_a_worker_failing_at_the_first_start_fails_the_start,
                     test_a_crashed_worker_is_restarted_after_a_doubling_delay,
                     test_sigterm_drains_every_worker_then_exits_without_restarts):
            test()
        sup = running(1)
        sup.exited(0, 1, 5.0)
        sup.tick(100.0)
        sup.exited(0, 1, 100.5)  # crashed while starting
    finally:
        Supervisor._transition = staticmethod(original)  # type: ignore[method-assign]
    assert taken == set(supervisor.TRANSITIONS)
