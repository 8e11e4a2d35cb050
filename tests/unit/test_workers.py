"""Decision workers: each answer reaches its session once; tenants take turns; the time budget fails closed."""

from __future__ import annotations

import asyncio
import pickle
import socket

from proxy.policy.cache import DecisionCache, Gate, Pending
from proxy.policy.engine import Limits, decide
from proxy.policy.model import EMPTY_CONTEXT, Allow, Decision, Deny, Rewrite, SessionContext, TenantPolicy
from proxy.registry import Tenant
from proxy.workers import _LENGTH, DecisionWorkers, _Worker, frame

SHARED = TenantPolicy(tenant="acme", strategy="shared", tenant_value="acme",
                      scoped_tables={("public", "orders"): "tenant_id"})


def pending(tenant: str, sql: str, policy: TenantPolicy = SHARED) -> Pending:
    gate = Gate(DecisionCache(), {tenant: policy}.get, Tenant(tenant, policy.strategy, tenant), lambda *_: None,
                Limits(1000, 250_000))
    return Pending(gate, policy, sql)


class FakeProcess:
    def __init__(self) -> None:
        self.killed = False

    def poll(self) -> int | None:
        return -9 if self.killed else None

    def kill(self) -> None:
        self.killed = True

    def wait(self, timeout: float | None = None) -> int:
        return -9


class PlayedWorker(_Worker):
    """A worker the test plays: it reads the tasks from the other end of the socket pair and answers them."""

    started: list[PlayedWorker] = []

    def __init__(self) -> None:
        ours, self.theirs = socket.socketpair()
        ours.setblocking(False)
        self.sock, self.inbox, self.task, self.process = ours, bytearray(), None, FakeProcess()
        PlayedWorker.started.append(self)

    def received(self) -> tuple[int, TenantPolicy, str, Limits]:
        (length,) = _LENGTH.unpack(self.theirs.recv(_LENGTH.size, socket.MSG_WAITALL))
        return pickle.loads(self.theirs.recv(length, socket.MSG_WAITALL))

    def answer(self, task_id: int, decision: Decision) -> None:
        self.theirs.sendall(frame((task_id, decision, {"total": 0.001})))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_tenants_take_turns_and_a_busy_tenant_leaves_the_last_worker_free() -> None:
    async def main() -> None:
        PlayedWorker.started = []
        workers = DecisionWorkers(2, 60, start=PlayedWorker)
        answered: list[str] = []
        for i in range(4):
            workers.submit(pending("acme", f"SELECT {i}"), lambda d, st, i=i: answered.append(f"acme {i}"))
        await settle()
        [one] = PlayedWorker.started  # the second worker stays free for another tenant
        assert one.received()[2] == "SELECT 0"
        workers.submit(pending("globex", "SELECT 'g'"), lambda d, st: answered.append("globex"))
        await settle()
        _, two = PlayedWorker.started
        task_id, policy, sql, limits = two.received()
        assert sql == "SELECT 'g'" and policy == SHARED and limits == Limits(1000, 250_000)  # at once
        one.answer(1, Allow())
        two.answer(task_id, Allow())
        await settle()
        assert answered == ["acme 0", "globex"]
        assert one.received()[2] == "SELECT 1"
        workers.close()

    run(main())


def test_the_budget_starts_when_a_task_is_dispatched_not_while_it_waits() -> None:
    async def main() -> None:
        PlayedWorker.started = []
        workers = DecisionWorkers(1, 0.2, start=PlayedWorker)
        answered: list[Decision] = []
        workers.submit(pending("acme", "SELECT 1"), lambda d, st: answered.append(d))
        workers.submit(pending("globex", "SELECT 2"), lambda d, st: answered.append(d))
        await settle()
        [worker] = PlayedWorker.started
        assert worker.received()[2] == "SELECT 1"
        await asyncio.sleep(0.15)  # globex waited most of a budget in the queue
        worker.answer(1, Allow())
        await settle()
        task_id, _, sql, _ = worker.received()
        assert sql == "SELECT 2"
        await asyncio.sleep(0.1)  # 0.25 s after submission: past the budget if it had started then
        worker.answer(task_id, Allow())
        await settle()
        assert answered == [Allow(), Allow()]
        workers.close()

    run(main())


def test_a_decision_past_its_budget_is_denied_and_its_worker_replaced() -> None:
    async def main() -> None:
        PlayedWorker.started = []
        restarts: list[str] = []
        workers = DecisionWorkers(1, 0.05, on_restart=restarts.append, start=PlayedWorker)
        done: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        workers.submit(pending("acme", "SELECT 1"), lambda d, st: done.set_result(d))
        late: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        workers.submit(pending("acme", "SELECT 2"), lambda d, st: late.set_result(d))  # queued behind it
        decision = await asyncio.wait_for(done, 10)
        assert isinstance(decision, Deny) and (decision.sqlstate, decision.rule) == ("57014", "decision_timeout")
        [first, *_] = PlayedWorker.started
        assert first.process.killed and restarts[0] == "timeout"
        assert isinstance(await asyncio.wait_for(late, 10), Deny)  # its own budget ran out too, queued or not
        workers.close()

    run(main())


def test_a_task_nobody_waits_for_is_dropped_from_its_queue() -> None:
    async def main() -> None:
        PlayedWorker.started = []
        workers = DecisionWorkers(1, 60, start=PlayedWorker)
        answered: list[str] = []
        workers.submit(pending("acme", "SELECT 1"), lambda d, st: answered.append("first"))
        second = workers.submit(pending("acme", "SELECT 2"), lambda d, st: answered.append("second"))
        workers.cancel(second)
        await settle()
        [worker] = PlayedWorker.started
        assert worker.received()[2] == "SELECT 1"
        worker.answer(1, Allow())
        await settle()
        assert answered == ["first"] and worker.task is None
        workers.close()

    run(main())


def test_a_real_worker_decides_and_a_failed_one_is_replaced() -> None:
    async def main() -> None:
        restarts: list[str] = []
        workers = DecisionWorkers(1, 60, on_restart=restarts.append)
        loop = asyncio.get_running_loop()

        async def decide(sql: str) -> Decision:
            done: asyncio.Future[Decision] = loop.create_future()
            workers.submit(pending("acme", sql), lambda d, st: done.set_result(d))
            return await asyncio.wait_for(done, 60)

        rewrite = await decide("SELECT * FROM orders" + " " * 5000)
        assert isinstance(rewrite, Rewrite) and "\"tenant_id\" = 'acme'" in rewrite.sql
        [worker] = workers._workers
        worker.process.kill()
        failed = await decide("SELECT 1")
        assert isinstance(failed, Deny) and failed.sqlstate == "XX000" and restarts == ["failed"]
        assert isinstance(await decide("SELECT 1"), Allow)  # a new worker
        workers.close()

    run(main())


def test_a_session_policy_reaches_a_worker_with_its_context() -> None:
    """A session's policy (`with_context`: its temporary relations, its search_path) crossed to a worker as the
    tenant's base policy: a decision offloaded under load (past the inline allowance) resolved names as if the
    session had no temporary table or view and its search_path were the default (full suite, PG 15: `EXPLAIN SELECT *
    FROM vc` over a temporary view of pg_class allowed). It crosses with its context now."""
    context = SessionContext(temp_tables=frozenset({"orders"}), temp_views=frozenset({"vc"}))
    session = SHARED.with_context(context)
    back = pickle.loads(frame(session)[_LENGTH.size:])
    assert back == session and back.key == session.key
    assert (back.temp_tables, back.temp_views, back.path) == (session.temp_tables, session.temp_views, session.path)
    assert pickle.loads(frame(SHARED)[_LENGTH.size:]).context == EMPTY_CONTEXT  # a base policy stays a base policy

    async def main() -> None:
        workers = DecisionWorkers(1, 60, on_restart=lambda _: None)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Decision] = loop.create_future()
        workers.submit(pending("acme", "SELECT * FROM orders", session), lambda d, st: done.set_result(d))
        offloaded = await asyncio.wait_for(done, 60)
        workers.close()
        inline = decide(session, "SELECT * FROM orders", {}, Limits(1000, 250_000))
        assert isinstance(inline, Rewrite) and inline.sql == "SELECT * FROM pg_temp.orders"  # the session's own
        assert offloaded == inline

    run(main())
