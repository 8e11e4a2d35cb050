"""Decision workers' turns: round robin, a share per tenant, the reserve worker, the penalty after a timeout."""

from __future__ import annotations

from proxy.turns import Turns


def started(turns: Turns[str], free: int, count: int = 2, now: float = 0.0) -> list[str]:
    """Tasks started on `free` workers, one take per free worker."""
    out = []
    for left in range(free, 0, -1):
        picked = turns.take(left, count, now)
        if picked is None:
            break
        out.append(picked[1])
    return out


def test_tenants_are_served_in_turn() -> None:
    turns: Turns[str] = Turns(60)
    for task in ("a1", "a2", "a3"):
        turns.add("acme", task)
    turns.add("globex", "g1")
    turns.add("initech", "i1")
    assert started(turns, 3, count=4) == ["a1", "g1", "i1"]
    assert turns.running == {"acme": 1, "globex": 1, "initech": 1}


def test_a_busy_tenant_never_takes_the_last_free_worker() -> None:
    turns: Turns[str] = Turns(60)
    for task in ("a1", "a2", "a3"):
        turns.add("acme", task)
    assert started(turns, 2) == ["a1"]  # the second stays free although only acme waits
    turns.add("globex", "g1")
    assert started(turns, 1) == ["g1"]
    turns.finished("acme", 1.0)
    assert started(turns, 1) == ["a2"]  # its first task may always start
    one = Turns[str](60)
    one.add("acme", "a1")
    one.add("acme", "a2")
    assert started(one, 1, count=1) == ["a1"]  # one worker: no reserve
    one.finished("acme", 1.0)
    assert started(one, 1, count=1) == ["a2"]


def test_a_tenant_runs_at_most_half_the_workers_while_another_waits() -> None:
    turns: Turns[str] = Turns(60)
    for task in ("a1", "a2", "a3", "a4"):
        turns.add("acme", task)
    turns.add("globex", "g1")
    assert started(turns, 4, count=4) == ["a1", "g1", "a2"]  # then acme's share, and the reserve
    turns.add("globex", "g2")
    assert started(turns, 1, count=4) == ["g2"]  # the last free one goes to a tenant that is not the busiest
    assert started(turns, 1, count=4) == []  # acme at its share (and the busiest), globex too
    single = Turns[str](60)
    for task in ("a1", "a2", "a3", "a4"):
        single.add("acme", task)
    assert started(single, 4, count=4) == ["a1", "a2", "a3"]  # alone: all but the reserve


def test_a_tenant_whose_decision_ran_out_of_time_is_served_last_one_at_a_time() -> None:
    turns: Turns[str] = Turns(60)
    for task in ("a1", "a2", "a3"):
        turns.add("acme", task)
    assert started(turns, 3, count=4, now=0) == ["a1", "a2"]
    turns.finished("acme", 10.0, timed_out=True)
    turns.add("globex", "g1")
    assert started(turns, 3, count=4, now=11) == ["g1"]  # acme runs one already
    turns.finished("acme", 12.0)
    assert started(turns, 3, count=4, now=12) == ["a3"]  # nobody else waits: one at a time
    turns.add("acme", "a4")
    assert started(turns, 2, count=4, now=13) == []
    turns.finished("acme", 14.0)
    turns.add("globex", "g2")
    assert started(turns, 3, count=4, now=14) == ["g2", "a4"]  # after the other tenant's
    for tenant in ("acme", "globex", "globex"):
        turns.finished(tenant, 15.0)
    turns.add("acme", "a5")
    turns.add("acme", "a6")
    assert started(turns, 3, count=4, now=71) == ["a5", "a6"]  # the penalty is over
    assert turns.penalized == {}


def test_a_queued_task_can_be_removed() -> None:
    turns: Turns[str] = Turns(60)
    turns.add("acme", "a1")
    assert turns.remove("acme", "a1") and not turns.remove("acme", "a1")
    assert turns.take(2, 2, 0.0) is None and turns.waiting() == 0
