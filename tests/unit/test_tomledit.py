"""File edits of the CLI keep every comment, change exactly their entry, and refuse what they cannot do safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from proxy.tomledit import UnsafeEdit, add_tenant, add_user, move_tenant, remove_user, set_verifier, value

V1 = ("SCRAM-SHA-256$4096:c2FsdHNhbHQ=$zMqJ8k8FpC7CY8Io6qVbZrdP1k1b9QQ9mF7d4sW7b3E="
      ":Vfhh0k0K0Sx6LDOa3ySdBBTy9HzPJvdnM9rDTrqF8gU=")
V2 = V1.replace("c2FsdHNhbHQ=", "b3RoZXJzYWx0")

CONFIG = """# top comment
secrets_file = "secrets.toml"

[backends.main]
host = "db"   # the database host

[tenants.acme]
strategy = "shared"
database = "saas"   # its database
tenant_id = "acme"

# alice is the analyst
[users.alice]
tenant = "acme"

# bob's comment
[users.bob]
tenant = "acme"
"""
SECRETS = f"""# secrets comment
[users]
alice = "{V1}"   # rotated 2026
bob = "{V1}"
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "pgtenant.toml").write_text(CONFIG)
    (tmp_path / "secrets.toml").write_text(SECRETS)
    return tmp_path / "pgtenant.toml"


def test_add_user_appends_and_keeps_every_comment(files: Path) -> None:
    add_user(files, "carol", "acme", V2, {"profile": "agent"})
    text, secrets = files.read_text(), (files.parent / "secrets.toml").read_text()
    assert text.startswith(CONFIG) and text.endswith('[users.carol]\ntenant = "acme"\nprofile = "agent"\n')
    assert "# rotated 2026" in secrets and "# secrets comment" in secrets
    cfg = load_config(files)
    assert cfg.users["carol"].profile == "agent" and str(cfg.users["carol"].verifier) == V2


def test_remove_user_takes_its_table_and_verifier_only(files: Path) -> None:
    remove_user(files, "alice")
    text, secrets = files.read_text(), (files.parent / "secrets.toml").read_text()
    assert "[users.alice]" not in text and "# bob's comment\n[users.bob]" in text and "# top comment" in text
    assert "alice" not in secrets and "bob = " in secrets
    assert set(load_config(files).users) == {"bob"}


def test_passwd_and_move_keep_trailing_comments(files: Path) -> None:
    set_verifier(files, "alice", V2)
    move_tenant(files, "acme", None, "saas2")
    assert 'database = "saas2"   # its database' in files.read_text()
    cfg = load_config(files)
    assert str(cfg.users["alice"].verifier) == V2 and cfg.tenants["acme"].database == "saas2"


def test_add_tenant(files: Path) -> None:
    add_tenant(files, "new co", {"strategy": "database", "database": "n", "schemas": ["public", "x"]})
    assert load_config(files).tenants["new co"].schemas == ("public", "x")
    assert '[tenants."new co"]' in files.read_text()


def test_a_change_the_config_would_reject_writes_nothing(files: Path) -> None:
    with pytest.raises(ConfigError, match=r"users\.carol\.tenant: unknown tenant 'nowhere'"):
        add_user(files, "carol", "nowhere", V2, {})
    with pytest.raises(ConfigError, match=r"tenants\.x\.tenant_id: required"):
        add_tenant(files, "x", {"strategy": "shared", "database": "saas"})
    with pytest.raises(ConfigError, match="already in"):
        add_user(files, "alice", "acme", V2, {})
    assert files.read_text() == CONFIG and (files.parent / "secrets.toml").read_text() == SECRETS


def test_a_layout_line_edits_cannot_change_safely_is_refused(files: Path) -> None:
    inline = ('secrets_file = "secrets.toml"\nusers = { alice = { tenant = "acme" }, bob = { tenant = "acme" } }\n'
              + CONFIG[CONFIG.index("[backends.main]"):CONFIG.index("# alice")])
    files.write_text(inline)
    with pytest.raises(UnsafeEdit, match="would not be valid TOML"):
        add_user(files, "carol", "acme", V2, {})
    assert files.read_text() == inline
    (files.parent / "secrets.toml").write_text(f'users = {{ alice = "{V1}", bob = "{V1}" }}\n')
    files.write_text(CONFIG)
    with pytest.raises(UnsafeEdit, match="edit it by hand"):
        set_verifier(files, "alice", V2)
    assert files.read_text() == CONFIG


def test_values() -> None:
    assert [value(v) for v in (True, 3, 1.5, "a\"b", ["x"], {"k": 1})] == [
        "true", "3", "1.5", '"a\\"b"', '["x"]', "{ k = 1 }"]
