"""Ops through the Running interface: the admin console's rows come from plain snapshots, reload's outcomes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from proxy.auth.scram import make_verifier
from proxy.config import Config, load_config, parse_config
from proxy.metrics import Metrics
from proxy.ops import ClientRow, Ops, Running, ServerRow, Snapshot
from proxy.pooling import PoolRow
from proxy.session import SessionRow


def make_config(tmp_path: Path) -> Config:
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    return parse_config({
        "secrets_file": "s.toml",
        "backends": {"main": {}},
        "tenants": {"acme": {"strategy": "database", "database": "acme"},
                    "globex": {"strategy": "database", "database": "globex"}},
        "users": {"alice": {"tenant": "acme"}},
    }, base=tmp_path)


ALICE = SessionRow("ab12", "alice", "acme", "psql", "10.0.0.1", True, "ready", "I", False)
SNAPSHOT = Snapshot(
    listening=True, pending=["globex"],
    clients=[ClientRow(ALICE, 12.34, 100, 200)],
    servers=[ServerRow("main", "pgt_acme", "acme", 4242, False, "active", "ab12", 12.0, "acme"),
             ServerRow("main/r1", "pgt_acme", "acme", 4343, False, "idle", None, 1.0, "acme", "r1", 0.25)],
    pools=[PoolRow("acme", "main", "acme", "pgt_acme", "session", 1, 2, 1, 0, 0, 0, 0, 3.25, 20)],
)


def ops(config: Config, *, problems: list[str] | None = None, killed: list[str] | None = None) -> Ops:
    return Ops(Running(
        config=lambda: config, snapshot=lambda: SNAPSHOT, prepare_tenant=lambda _name: [],
        apply_config=lambda _new: problems or [], kill=lambda sid: killed is not None and not killed.append(sid),
        unlock=lambda user: len(user), metrics=Metrics(max_tenants=10),
    ))


def test_console_rows_come_from_the_snapshot(tmp_path: Path) -> None:
    o = ops(make_config(tmp_path))
    columns, rows = o.tenants()
    assert columns[0] == "tenant"
    assert [(r[0], r[5], r[6]) for r in rows] == [("acme", "ready", 1), ("globex", "pending", 0)]
    assert o.clients()[1] == [("ab12", "alice", "acme", "psql", "10.0.0.1", "tls", "ready", "I", 12.3, 100, 200, None)]
    assert o.servers()[1] == [("acme", "main", "pgt_acme", "acme", 4242, "ab12", "plain", "active", 12.0, "primary",
                               None), ("acme", "main/r1", "pgt_acme", "acme", 4343, None, "plain", "idle", 1.0,
                                       "replica", 0.25)]
    columns, rows = o.pools()
    assert dict(zip(columns, rows[0], strict=True)) == {
        "tenant": "acme", "backend": "main", "database": "acme", "role": "pgt_acme", "pool_mode": "session",
        "cl_active": 1, "cl_waiting": 2, "sv_active": 1, "sv_idle": 0, "sv_pinned": 0, "sv_used": 0,
        "sv_connecting": 0, "maxwait_s": 3.2, "pool_size": 20}


def test_kill_and_unlock_go_to_the_running_proxy(tmp_path: Path) -> None:
    killed: list[str] = []
    o = ops(make_config(tmp_path), killed=killed)
    assert o.kill_client("ab12") and killed == ["ab12"]
    assert o.unlock("alice") == 5


def test_reload_without_a_file_and_with_problems(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert asyncio.run(ops(config).reload()) == (False, "the configuration was not loaded from a file")
    (tmp_path / "p.toml").write_text(
        'secrets_file = "s.toml"\n[backends.main]\n[tenants.acme]\nstrategy = "database"\ndatabase = "acme"\n'
        '[users.alice]\ntenant = "acme"\n'
    )
    from_file = load_config(tmp_path / "p.toml")
    rejected = ops(from_file, problems=["acme: RLS is off"])
    ok, message = asyncio.run(rejected.reload())
    assert not ok and message == "reload rejected, old configuration stays in force: acme: RLS is off"
    ok, message = asyncio.run(ops(from_file).reload())
    assert ok and message == "configuration reloaded: 1 tenant(s), 1 user(s)"


def test_a_registry_change_tells_an_unreadable_registry_from_a_rejected_config(tmp_path: Path) -> None:
    """A registry that cannot be read is `unreachable` (the watch tries again); what the config or rows say is
    `rejected` (not tried again until the registry changes); SIGHUP's reload reports either as rejected."""
    from proxy.config import ConfigError

    make_config(tmp_path)  # writes the secrets file
    (tmp_path / "p.toml").write_text(
        'secrets_file = "s.toml"\n[backends.main]\n[tenants.acme]\nstrategy = "database"\ndatabase = "acme"\n'
        '[users.alice]\ntenant = "acme"\n'
    )
    config = load_config(tmp_path / "p.toml")

    def with_load(load: object) -> Ops:
        return Ops(Running(
            config=lambda: config, snapshot=lambda: SNAPSHOT, prepare_tenant=lambda _n: [],
            apply_config=lambda _new: [], kill=lambda _sid: False, unlock=lambda _u: 0,
            metrics=Metrics(max_tenants=10), load=load,  # type: ignore[arg-type]
        ))

    def blip() -> Config:
        raise RuntimeError("cannot read the registry: terminating connection due to administrator command")

    def bad_row() -> Config:
        raise ConfigError("users.mallory.profile: must be default or agent")

    status, message = asyncio.run(with_load(blip).reload_changes())
    assert status == "unreachable" and "administrator command" in message
    status, message = asyncio.run(with_load(bad_row).reload_changes())
    assert status == "rejected" and "users.mallory.profile" in message
    assert asyncio.run(with_load(lambda: config).reload_changes())[0] == "applied"
    ok, message = asyncio.run(with_load(blip).reload())
    assert not ok and message.startswith("reload rejected, old configuration stays in force: cannot read")



def test_readiness_follows_the_registry_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    up = [False]
    o = Ops(Running(
        config=lambda: config, snapshot=lambda: Snapshot(True, [], [], []), prepare_tenant=lambda _n: [],
        apply_config=lambda _new: [], kill=lambda _sid: False, unlock=lambda _u: 0, metrics=Metrics(max_tenants=10),
        registry_connected=lambda: up[0],
    ))

    async def reachable(*_a: object, **_k: object) -> tuple[None, _Closed]:
        return None, _Closed()

    async def check() -> tuple[bool, dict[str, object]]:
        o._ready_cache = None
        return await o.ready()

    monkeypatch.setattr(asyncio, "open_connection", reachable)  # every backend answers
    ok, detail = asyncio.run(check())
    assert not ok and detail["registry"] is False
    up[0] = True
    ok, detail = asyncio.run(check())
    assert ok and detail["registry"] is True
    # Connected, but a change is known to be unapplied (a reload could not read the registry); then another
    # instance took this one's slot (red team 9b N3).
    for key in ("registry_current", "instance_slot"):
        state = [False]
        o.proxy = dataclasses.replace(o.proxy, **{key: lambda state=state: state[0]})
        ok, detail = asyncio.run(check())
        assert not ok and detail["registry"] is True and detail[key] is False
        state[0] = True
        ok, detail = asyncio.run(check())
        assert ok and detail[key] is True
    assert "registry" not in asyncio.run(ops(config).ready())[1]  # no registry configured: not part of readiness


class _Closed:
    def close(self) -> None:
        pass


def test_a_registry_state_whose_apply_was_refused_is_not_shown_as_in_force(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Residue of issue 19: the loader took a registry state as applied as soon as it validated, even when applying
    it was then refused (a failed preflight): its rejected rows showed in /readyz and the metric as if in force (and,
    while a rejected row kept its previous version, the next load fell back to that never-applied version)."""
    from proxy import registrystore
    from proxy.registrydb import RegistryRows

    (tmp_path / "s.toml").write_text("")
    (tmp_path / "p.toml").write_text(
        'secrets_file = "s.toml"\n[registry]\ndsn = "host=registry.invalid dbname=registry"\n[backends.main]\n'
        '[tenants.acme]\nstrategy = "shared"\ndatabase = "saas"\ntenant_id = "acme"\n'
        '[tenants.globex]\nstrategy = "shared"\ndatabase = "saas"\ntenant_id = "globex"\n'
    )
    verifier = str(make_verifier("pw", iterations=4096))
    registry: list[RegistryRows] = []
    monkeypatch.setattr(registrystore, "read", lambda _dsn: registry[-1])
    loader = registrystore.Loader(tmp_path / "p.toml")
    config = load_config(tmp_path / "p.toml")
    refuse: list[str] = []
    applied: list[Config] = []

    def apply(new: Config) -> list[str]:
        applied.append(new)
        return list(refuse)

    running = Ops(Running(
        config=lambda: config, snapshot=lambda: SNAPSHOT, prepare_tenant=lambda _n: [], apply_config=apply,
        kill=lambda _sid: False, unlock=lambda _u: 0, metrics=Metrics(max_tenants=10), load=loader,
        registry_rejected=lambda: loader.rejected, loaded_applied=loader.applied))

    def rows(*users: tuple[str, str, str], version: int) -> RegistryRows:
        return RegistryRows(users=[(n, t, verifier, {"profile": p}) for n, t, p in users], version=version)

    registry.append(rows(("bob", "acme", "agent"), version=1))
    assert asyncio.run(running.reload_changes())[0] == "applied" and loader.rejected == {}
    registry.append(rows(("bob", "globex", "agent"), ("eve", "acme", "wizard"), version=2))
    refuse.append("tenant globex: preflight failed")
    assert asyncio.run(running.reload_changes())[0] == "rejected"  # bob stays at acme, eve was never in force
    assert loader.rejected == {} and list(loader.last_rejected) == ["users.eve"]
    refuse.clear()
    registry.append(rows(("bob", "globex", "wizard"), version=3))  # a bad row: left out
    assert asyncio.run(running.reload_changes())[0] == "applied"
    assert "bob" not in applied[-1].users and list(loader.rejected) == ["users.bob"]
