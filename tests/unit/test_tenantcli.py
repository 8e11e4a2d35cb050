"""`pgtenant tenants/users` against a config file: the edits, the password sources, the refusals (exit codes)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from proxy.auth.scram import ScramVerifier, make_verifier
from proxy.cli import main
from proxy.config import load_config
from tests.unit.test_tomledit import CONFIG, SECRETS


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pgtenant.toml").write_text(CONFIG)
    (tmp_path / "secrets.toml").write_text(SECRETS)
    monkeypatch.delenv("PGTENANT_REGISTRY_DSN", raising=False)
    return tmp_path / "pgtenant.toml"


def verifies(cfg: Path, user: str, password: str) -> bool:
    """The stored verifier is the password's (same salt and iterations, same keys)."""
    v: ScramVerifier = load_config(cfg).users[user].verifier
    return str(make_verifier(password, iterations=v.iterations, salt=v.salt)) == str(v)


def test_users_add_reads_the_password_from_the_environment(cfg: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PW", "s3cret")
    assert main(["users", "add", "carol", "--tenant", "acme", "-c", str(cfg), "--password-env", "PW"]) == 0
    assert "user carol added to tenant acme in" in capsys.readouterr().out
    assert verifies(cfg, "carol", "s3cret") and "s3cret" not in (cfg.parent / "secrets.toml").read_text()


def test_users_passwd_reads_a_line_of_stdin(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("new-pw\n"))
    assert main(["users", "passwd", "alice", "-c", str(cfg)]) == 0
    assert verifies(cfg, "alice", "new-pw")


def test_refusals_change_nothing(cfg: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["users", "add", "carol", "--tenant", "acme", "-c", str(cfg)]) == 2
    assert "empty password" in capsys.readouterr().err
    assert main(["users", "remove", "nobody", "-c", str(cfg)]) == 2
    assert "refused, nothing changed: users.nobody: not in" in capsys.readouterr().err
    assert main(["tenants", "add", "x", "--strategy", "shared", "--database", "d", "-c", str(cfg)]) == 2
    assert "tenants.x.tenant_id: required" in capsys.readouterr().err
    assert main(["tenants", "move", "acme", "-c", str(cfg)]) == 2
    assert main(["tenants", "list"]) == 2
    assert "no target" in capsys.readouterr().err
    assert cfg.read_text() == CONFIG and (cfg.parent / "secrets.toml").read_text() == SECRETS


def test_tenants_add_move_list(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenants", "add", "initech", "--strategy", "database", "--database", "initech",
                 "--set", "pool_size=4", "--set", "schemas=[\"public\",\"app\"]", "-c", str(cfg)]) == 0
    assert main(["tenants", "move", "initech", "--database", "initech2", "-c", str(cfg)]) == 0
    t = load_config(cfg).tenants["initech"]
    assert (t.database, t.pool_size, t.schemas) == ("initech2", 4, ("public", "app"))
    capsys.readouterr()
    assert main(["tenants", "list", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "tenant\tstrategy\tbackend\tdatabase\tusers\tsource", "acme\tshared\tmain\tsaas\t2\tfile",
        "initech\tdatabase\tmain\tinitech2\t0\tfile"]


def test_a_config_with_a_registry_sends_changes_there(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg.write_text(CONFIG.replace("[backends.main]", '[registry]\ndsn = "host=/nonexistent dbname=r"\n\n'
                                  "[backends.main]"))
    assert main(["users", "remove", "alice", "-c", str(cfg)]) == 1
    assert "registry: cannot connect to the registry" in capsys.readouterr().err
    assert "[users.alice]" in cfg.read_text()
