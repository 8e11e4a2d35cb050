"""proxy.registrystore's Loader: what of the registry a (re)load serves, the same on every instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import registrystore
from proxy.auth.scram import make_verifier
from proxy.registrydb import RegistryRows

V = str(make_verifier("pw", iterations=4096))


def test_an_old_instance_and_a_new_one_serve_a_bad_updated_row_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Residue of issue 19: a row updated to a version the validation refuses stayed at its previous version on the
    instances that had applied one, while a new instance (a restart, a scale-out) left it out: behind one balancer
    a login worked or failed by the instance it reached. Now it is left out by every instance; the rest applies."""
    (tmp_path / "s.toml").write_text("")
    (tmp_path / "p.toml").write_text(
        'secrets_file = "s.toml"\n[registry]\ndsn = "host=registry.invalid dbname=registry"\n[backends.main]\n'
        '[tenants.acme]\nstrategy = "shared"\ndatabase = "saas"\ntenant_id = "acme"\n')
    registry: list[RegistryRows] = []
    monkeypatch.setattr(registrystore, "read", lambda _dsn: registry[-1])
    registry.append(RegistryRows(users=[("bob", "acme", V, {"profile": "agent"}), ("al", "acme", V, {})], version=1))
    old = registrystore.Loader(tmp_path / "p.toml")
    assert set(old().users) == {"bob", "al"}
    old.applied()
    registry.append(RegistryRows(users=[("bob", "acme", V, {"profile": "wizard"}), ("al", "acme", V, {}),
                                        ("cy", "acme", V, {})], version=2))
    on_old, on_new = old(), registrystore.Loader(tmp_path / "p.toml")()
    assert set(on_old.users) == set(on_new.users) == {"al", "cy"}
    assert list(old.last_rejected) == ["users.bob"] and "users.bob.profile" in old.last_rejected["users.bob"]
