"""The mock secret behind unknown users' salts: stable across reloads and restarts, random only with a warning."""

from __future__ import annotations

from pathlib import Path

import structlog

from proxy import demo
from proxy.auth.scram import make_verifier
from proxy.config import load_config
from proxy.mocksecret import FILE_NAME, with_mock_secret


def write(tmp_path: Path, mock: str | None = None) -> Path:
    top = f'auth_mock_secret = "{mock}"\n' if mock else ""
    (tmp_path / "s.toml").write_text(top + f'[users]\nalice = "{make_verifier("pw")}"\n')
    (tmp_path / "p.toml").write_text(
        'secrets_file = "s.toml"\n[backends.main]\n[tenants.acme]\nstrategy = "shared"\ndatabase = "saas"\n'
        'tenant_id = "acme"\n[users.alice]\ntenant = "acme"\n'
    )
    return tmp_path / "p.toml"


def test_a_configured_secret_is_used_as_it_is(tmp_path: Path) -> None:
    config = with_mock_secret(load_config(write(tmp_path, "k" * 40)))
    assert config.auth_mock_secret == b"k" * 40 and not (tmp_path / FILE_NAME).exists()


def test_without_one_it_is_persisted_beside_the_config_and_kept_across_reloads_and_restarts(tmp_path: Path) -> None:
    path = write(tmp_path)
    first = with_mock_secret(load_config(path))
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600
    reloaded = with_mock_secret(load_config(path), first)  # SIGHUP / RELOAD
    restarted = with_mock_secret(load_config(path))
    assert first.auth_mock_secret == reloaded.auth_mock_secret == restarted.auth_mock_secret
    assert len(first.auth_mock_secret) >= 32


def test_random_only_with_a_loud_warning(tmp_path: Path) -> None:
    path = write(tmp_path)
    (tmp_path / FILE_NAME).mkdir()  # the secret cannot be read or persisted there
    with structlog.testing.capture_logs() as logs:
        config = with_mock_secret(load_config(path))
    assert config.auth_mock_secret_random and len(config.auth_mock_secret) == 32
    [warning] = [e for e in logs if e["event"] == "auth_mock_secret_random"]
    assert warning["log_level"] == "warning" and "set auth_mock_secret" in warning["consequence"]
    # a reload keeps that random secret rather than making another
    assert with_mock_secret(load_config(path), config).auth_mock_secret == config.auth_mock_secret


def test_a_short_persisted_secret_is_not_used(tmp_path: Path) -> None:
    path = write(tmp_path)
    (tmp_path / FILE_NAME).write_text("short\n")
    with structlog.testing.capture_logs() as logs:
        config = with_mock_secret(load_config(path))
    assert config.auth_mock_secret != b"short"
    assert any("fewer than 32" in e.get("problem", "") for e in logs)


def test_the_demo_configures_its_own_secret(tmp_path: Path) -> None:
    state = demo.DemoState.generate()
    state.save(tmp_path / "state.json")
    assert demo.DemoState.load(tmp_path / "state.json").auth_mock_secret == state.auth_mock_secret
    demo.write_config(tmp_path, {"secrets_file": "secrets.toml"}, state)
    assert f'auth_mock_secret = "{state.auth_mock_secret}"' in (tmp_path / "secrets.toml").read_text()
