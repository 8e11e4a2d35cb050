"""A DBA's own statement_timeout default under a proxy limit: servers start with the lower of the two; pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.policy.settings import setting_milliseconds
from proxy.pooling import Connect, ServerRequest

NAME = "statement_timeout"
RETRY = 60.0  # seconds after a failed probe before a new server's start asks again (a reload asks at once)

# Whose default a server gets: (backend name, database, backend role). A replica's pool has a backend name of its own
# ("main/r1"): its default is the replica's.
Target = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Probe:
    """Learn the server's own statement_timeout for `request`'s backend, database and role: one connection of the
    proxy's own without the parameter, `SHOW statement_timeout` (every source: postgresql.conf, ALTER SYSTEM,
    ALTER DATABASE/ROLE ... SET); answered with `LearntDefaults.learnt(target, generation, value)`."""

    target: Target
    generation: int
    request: ServerRequest


@dataclass(frozen=True, slots=True)
class Start:
    """Open server `connect.server` with these startup parameters."""

    connect: Connect
    parameters: dict[str, str]


@dataclass(slots=True)
class _Entry:
    request: ServerRequest  # the latest request of the target (a reload's probe is made with it)
    value: int | None = None  # the learnt default in ms (0: none); None: unknown or the probe failed
    learnt: bool = False
    probing: int = 0  # the generation of the probe in flight (0: none)
    failed_at: float | None = None
    waiting: list[Connect] = field(default_factory=list)


def target(request: ServerRequest) -> Target | None:
    """Whose default `request`'s servers need (None: they start with no statement_timeout of the proxy's)."""
    if NAME not in request.parameters:
        return None
    return request.key.backend, request.key.database, request.key.role


def lower(default_ms: int | None, limit_ms: int) -> int:
    """The statement_timeout in force: the lower of the server's own default and the proxy's limit, 0 (no timeout)
    on either side counting as none; an unknown default (None) leaves the limit."""
    if default_ms is None or default_ms <= 0:
        return limit_ms
    if limit_ms <= 0:
        return default_ms
    return min(default_ms, limit_ms)


def started_parameters(parameters: dict[str, str], default_ms: int | None) -> dict[str, str]:
    """The startup parameters of a server whose pool asks for `parameters` (its statement_timeout the limit) where
    the server's own default is `default_ms`: the limit replaced by that default when it is lower."""
    limit = setting_milliseconds(parameters.get(NAME, ""))
    if limit is None:
        return parameters
    ms = lower(default_ms, limit)
    return parameters if ms == limit else {**parameters, NAME: f"{ms}ms"}


class LearntDefaults:
    """The defaults learnt per Target, and the server starts waiting for one (the I/O pool runs the Probes and
    Starts this returns)."""

    def __init__(self) -> None:
        self.entries: dict[Target, _Entry] = {}
        self.generation = 1

    def connect(self, connect: Connect, now: float) -> list[Probe | Start]:
        """The pool opens a server: started at once with what is known, or after a probe."""
        request = connect.request
        t = target(request)
        if t is None:
            return [Start(connect, request.parameters)]
        entry = self.entries.get(t)
        if entry is None:
            entry = self.entries[t] = _Entry(request)
        entry.request = request
        failed = entry.failed_at is not None and now - entry.failed_at >= RETRY
        if entry.learnt and not failed:
            return [Start(connect, started_parameters(request.parameters, entry.value))]
        entry.waiting.append(connect)
        if entry.probing:
            return []
        entry.probing = self.generation
        return [Probe(t, self.generation, request)]

    def learnt(self, t: Target, generation: int, value: int | None, now: float) -> list[Start]:
        """A probe answered (`value` in ms; None: it failed, the servers start with the limit as before): the
        servers waiting for it start. The answer of a probe older than a reload is dropped (a newer one runs)."""
        entry = self.entries.get(t)
        if entry is None or generation != entry.probing:
            return []
        entry.probing = 0
        entry.learnt = True
        entry.value = value
        entry.failed_at = now if value is None else None
        waiting, entry.waiting = entry.waiting, []
        return [Start(c, started_parameters(c.request.parameters, value)) for c in waiting]

    def reload(self) -> list[Probe]:
        """A reload: every default is learnt again now (a DBA's ALTER ROLE ... SET since is seen); servers started
        meanwhile wait for the new answer."""
        self.generation += 1
        out: list[Probe] = []
        for t, entry in self.entries.items():
            entry.learnt = False
            entry.probing = self.generation
            out.append(Probe(t, self.generation, entry.request))
        return out

    def outdated(self, t: Target, asked: dict[str, str], started: dict[str, str]) -> bool:
        """A server of target `t` whose pool asked for `asked` and that started with `started` no longer starts so
        (the default learnt since differs): it is not handed out again. False while unknown or after a failure."""
        entry = self.entries.get(t)
        if entry is None or not entry.learnt or entry.value is None:
            return False
        return started_parameters(asked, entry.value).get(NAME) != started.get(NAME)
