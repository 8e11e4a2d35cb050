"""proxy.dbidentity: the comparison of what two servers say they are, and which tenants the checker asks again."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from proxy import dbidentity
from proxy.auth.scram import make_verifier
from proxy.config import Config, ConfigError, parse_config
from proxy.dbidentity import Checker, Identity, database_tenants, same

REGISTRY = Identity(7001, 16384, 100)


@pytest.mark.parametrize(("tenant", "seen", "expected"), [
    (Identity(7001, 16384, 200), None, True),  # one cluster, one database
    (Identity(7001, 16390, 200), None, False),  # one cluster, another database
    (Identity(7002, 16384, 200), None, False),  # another cluster with a database of the same oid
    (Identity(7002, 16384, 200), 16384, False),  # both clusters known: what pg_stat_activity said is not asked
    (Identity(None, 16384, 200), 16384, True),  # the tenant's role may not read pg_control_system(): seen there
    (Identity(None, 16384, 200), 16390, False),  # seen in the registry's cluster, in another database
    (Identity(None, 16384, 200), None, False),  # not seen: another server
])
def test_same(tenant: Identity, seen: int | None, expected: bool) -> None:
    assert same(REGISTRY, tenant, seen) is expected


def test_an_unknown_registry_cluster_also_relies_on_being_seen() -> None:
    registry = Identity(None, 16384, 100)
    assert same(registry, Identity(7001, 16384, 200), 16384)
    assert not same(registry, Identity(7001, 16384, 200), None)


def config(tmp_path: Path, tenants: dict) -> Config:
    tenants = {name: {"backend": "main", **keys} for name, keys in tenants.items()}
    (tmp_path / "s.toml").write_text(f'[users]\nalice = "{make_verifier("pw")}"\n')
    return parse_config({
        "secrets_file": "s.toml", "backends": {"main": {"host": "db"}, "other": {"host": "db2"}},
        "tenants": tenants, "users": {"alice": {"tenant": next(iter(tenants))}},
    }, base=tmp_path)


def test_database_tenants_leave_out_those_unchanged(tmp_path: Path) -> None:
    before = config(tmp_path, {"a": {"strategy": "database", "database": "a"},
                               "b": {"strategy": "database", "database": "b"},
                               "s": {"strategy": "shared", "database": "saas", "tenant_id": "s"}})
    after = config(tmp_path, {"a": {"strategy": "database", "database": "a"},
                              "b": {"strategy": "database", "database": "b", "backend": "other"},  # moved
                              "c": {"strategy": "database", "database": "c"},  # added
                              "s": {"strategy": "shared", "database": "saas", "tenant_id": "s"}})
    assert [t.name for t, _ in database_tenants(after)] == ["a", "b", "c"]
    assert [t.name for t, _ in database_tenants(after, before)] == ["b", "c"]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_checker_remembers_targets_for_a_while(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    verdicts = {"a": False, "b": None}  # a: another database; b: unreachable

    def compare(registry: Identity, backend: object, database: str, conn: object) -> bool | None:
        asked.append(database)
        return verdicts[database]

    monkeypatch.setattr(dbidentity, "read", lambda conn: REGISTRY)
    monkeypatch.setattr(dbidentity, "_compare", compare)
    clock = Clock()
    checker = Checker(clock)
    cfg = config(tmp_path, {"a": {"strategy": "database", "database": "a"},
                            "b": {"strategy": "database", "database": "b"}})
    checker.check(database_tenants(cfg), object())  # type: ignore[arg-type]
    checker.check(database_tenants(cfg), object())  # type: ignore[arg-type]
    assert asked == ["a", "b"]
    clock.now = dbidentity.UNREACHABLE_FOR + 1  # the unreachable one is tried again sooner
    checker.check(database_tenants(cfg), object())  # type: ignore[arg-type]
    assert asked == ["a", "b", "b"]
    clock.now = dbidentity.KNOWN_FOR + 1
    verdicts["a"] = True  # (a name now resolving elsewhere, say)
    with pytest.raises(ConfigError, match=r"tenants\.a: .* is the registry's own database, as PostgreSQL"):
        checker.check(database_tenants(cfg), object())  # type: ignore[arg-type]


def test_targets_are_asked_at_once_and_the_first_tenant_found_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Residue of issue 19: the first load of N database tenants asked them one after the other (up to 5 s each for
    an unreachable one). Now up to CONCURRENCY at a time: each comparison here waits until all four are under way
    (one after the other, the first would wait forever: the barrier breaks)."""
    barrier = threading.Barrier(4, timeout=30)
    asked: list[str] = []

    def compare(registry: Identity, backend: object, database: str, conn: object) -> bool | None:
        asked.append(database)
        barrier.wait()
        return database in ("c", "d")

    monkeypatch.setattr(dbidentity, "read", lambda conn: REGISTRY)
    monkeypatch.setattr(dbidentity, "_compare", compare)
    cfg = config(tmp_path, {name: {"strategy": "database", "database": name} for name in "abcd"})
    with pytest.raises(ConfigError, match=r"^tenants\.c: "):
        Checker(Clock()).check(database_tenants(cfg), object())  # type: ignore[arg-type]
    assert sorted(asked) == ["a", "b", "c", "d"]
