"""Which queued decision a free decision worker takes next: tenants in turn, a share each, a reserve, and a penalty
for a tenant whose decision ran out of time (pure: the caller says how many workers are free and what time it is)."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

# A tenant whose decision hit limits.decision_timeout is served last, one task at a time, for this many timeouts.
PENALTY_TIMEOUTS = 6.0


class Turns(Generic[T]):
    """Each tenant's queued tasks and running count. `take(free, count, now)` picks the next task for one of `free`
    idle (or startable) workers out of `count`:

    * tenants are served in turn (round robin over those with queued tasks);
    * while another tenant waits, one runs at most max(1, count // 2) tasks;
    * with two or more workers, the busiest tenant (running the most tasks) never takes the last free one: it
      stays for another tenant's task to come (one tenant's slow decisions cannot hold every worker when another
      tenant's statement arrives);
    * a tenant whose decision ran out of time (`finished(..., timed_out=True)`) is penalized for
      `penalty` seconds: it runs one task at a time, and only while no other tenant waits.
    """

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty
        self.queues: dict[str, deque[T]] = {}
        self.order: deque[str] = deque()  # tenants with queued tasks, in the order they are served
        self.running: dict[str, int] = {}
        self.penalized: dict[str, float] = {}  # tenant -> until when

    def add(self, tenant: str, task: T) -> None:
        queue = self.queues.get(tenant)
        if queue is None:
            queue = self.queues[tenant] = deque()
        if not queue:
            self.order.append(tenant)
        queue.append(task)

    def remove(self, tenant: str, task: T) -> bool:
        """Drop a queued task (its client left); False when it is not queued."""
        queue = self.queues.get(tenant)
        if queue is None or task not in queue:
            return False
        queue.remove(task)
        if not queue:
            self.order.remove(tenant)
        return True

    def waiting(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def take(self, free: int, count: int, now: float) -> tuple[str, T] | None:
        """The next (tenant, task) to start on a free worker (counted as running), or None."""
        if free <= 0 or not self.order:
            return None
        for gone in [t for t, until in self.penalized.items() if until <= now]:
            del self.penalized[gone]
        fresh = [t for t in self.order if t not in self.penalized]
        for _ in range(len(self.order)):
            tenant = self.order[0]
            self.order.rotate(-1)
            if self._may_start(tenant, free, count, fresh):
                queue = self.queues[tenant]
                task = queue.popleft()
                if not queue:
                    self.order.remove(tenant)
                self.running[tenant] = self.running.get(tenant, 0) + 1
                return tenant, task
        return None

    def _may_start(self, tenant: str, free: int, count: int, fresh: list[str]) -> bool:
        running = self.running.get(tenant, 0)
        if tenant in self.penalized:
            return running == 0 and not fresh
        if running and free == 1 and count >= 2 and running >= max(self.running.values()):
            return False  # the reserve: the last free worker is not for the busiest tenant
        others = len(self.order) > 1
        return not (others and running >= max(1, count // 2))

    def finished(self, tenant: str, now: float, timed_out: bool = False) -> None:
        """A started task of `tenant` is done (answered, failed or out of time)."""
        self.running[tenant] -= 1
        if not self.running[tenant]:
            del self.running[tenant]
        if timed_out:
            self.penalized[tenant] = now + self.penalty
