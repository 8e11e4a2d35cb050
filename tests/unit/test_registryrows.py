"""Registry rows the validation refuses are rejected alone; every other change, removals included, applies (red team
9b2 P4: one rejected row froze every later change on every instance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth.scram import make_verifier
from proxy.config import Config, ConfigError, RegistryOverlay, parse_config
from proxy.registrydb import RegistryRows
from proxy.registryrows import MAX_REJECTED, check, row_of

V = str(make_verifier("pw", iterations=4096))


def _validate(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The validation of a file with backend main, tenant acme and no users, the registry's rows over it."""
    (tmp_path / "s.toml").write_text("")

    def validate(overlay: RegistryOverlay) -> Config:
        return parse_config({"secrets_file": "s.toml", "backends": {"main": {}},
                             "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"}}},
                            base=tmp_path, overlay=overlay)

    return validate


def _rows(*users: tuple[str, str, dict], tenants: tuple = ()) -> RegistryRows:  # type: ignore[type-arg]
    return RegistryRows(tenants=list(tenants), users=[(n, t, V, o) for n, t, o in users], version=7)


def test_a_user_of_an_unknown_tenant_is_rejected_alone_and_a_removal_applies(tmp_path: Path) -> None:
    """Red team 9b2 P4 repro 1: `users add newguy --tenant acmee` (a typo) was rejected with the whole registry, so
    `users remove mallory` after it applied nowhere."""
    validate = _validate(tmp_path)
    first = check(_rows(("mallory", "acme", {}), ("keep", "acme", {})), validate)
    assert set(first.config.users) == {"mallory", "keep"} and not first.rejected
    later = check(_rows(("keep", "acme", {}), ("newguy", "acmee", {})), validate)
    assert set(later.config.users) == {"keep"}  # mallory's removal applied; newguy not admitted
    assert later.rejected == {"users.newguy": "users.newguy.tenant: unknown tenant 'acmee'"}
    assert later.config.registry_version == 7


def test_a_rejected_row_is_left_out(tmp_path: Path) -> None:
    """Whatever version of it was valid before (every instance alike: tests/unit/test_registrystore.py)."""
    validate = _validate(tmp_path)
    later = check(_rows(("bob", "acme", {"profile": "wizard"}), ("new", "acme", {})), validate)
    assert "bob" not in later.config.users and "new" in later.config.users
    assert list(later.rejected) == ["users.bob"] and "users.bob.profile" in later.rejected["users.bob"]


def test_a_row_that_contradicts_itself_and_a_tenants_users_fall_alone(tmp_path: Path) -> None:
    """A tenant row the overlay refuses (a column in its options) is left out (it had no applied version); its users
    are then not admitted, each reported; other tenants' users apply."""
    validate = _validate(tmp_path)
    rows = _rows(("ann", "newco", {}), ("al", "acme", {}), ("bo", "acme", {"tenant": "x"}),
                 tenants=[("newco", "shared", None, "saas", {"database": "other", "tenant_id": "n"})])
    result = check(rows, validate)
    assert set(result.config.users) == {"al"} and "newco" not in result.config.tenants
    assert set(result.rejected) == {"tenants.newco", "users.bo", "users.ann"}


def test_bulk_insert_with_one_bad_row_applies_the_others(tmp_path: Path) -> None:
    """Red team 9b2 P4 repro 2: 10,000 users in one transaction, one of them bad: none applied anywhere, and a later
    DELETE neither. Now the 9,999 apply."""
    validate = _validate(tmp_path)
    users = [(f"bulk{i}", "acme", {"tenant": "bigco"} if i == 5000 else {}) for i in range(10_000)]
    result = check(_rows(*users), validate)
    assert len(result.config.users) == 9_999 and list(result.rejected) == ["users.bulk5000"]


def test_a_problem_of_the_file_or_too_many_bad_rows_rejects_the_whole(tmp_path: Path) -> None:
    validate = _validate(tmp_path)

    def broken(overlay: RegistryOverlay) -> Config:
        raise ConfigError("backends.main.port: must be 1..65535")

    with pytest.raises(ConfigError, match=r"backends\.main\.port"):
        check(_rows(("al", "acme", {})), broken)
    with pytest.raises(ConfigError, match="unknown tenant"):
        check(_rows(*((f"u{i}", "nope", {}) for i in range(MAX_REJECTED + 1))), validate)


@pytest.mark.parametrize(("problem", "row"), [
    ("users.a.b.tenant: unknown tenant 'x'", ("users", "a.b")),  # the longest name the overlay has
    ("users.a: expected a table", ("users", "a")),
    ("secrets.users.a: no SCRAM verifier for this user", ("users", "a")),
    ("registry users.a: options must be a JSON object", ("users", "a")),
    ("admin.users: 'a' is also a tenant user; admin logins must be separate", ("users", "a")),
    ("tenants.t.tenant_id: required", ("tenants", "t")),
    ("registry tenant_settings (t, pool_size): 'pool_size' is set by the tenants row itself", ("tenants", "t")),
    ("users.filer.tenant: unknown tenant 't'", None),  # a user of the file: the file is the problem
    ("limits.max_rows: must be positive", None),
])
def test_a_problem_names_its_registry_row(problem: str, row: tuple[str, str] | None) -> None:
    overlay = RegistryOverlay(tenants={"t": {}}, users={"a": {}, "a.b": {}})
    assert row_of(problem, overlay) == row


def _validate_with_file_users(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A file with tenants acme and globex, user bob of acme and user filey of globex (verifiers in its secrets)."""
    (tmp_path / "s.toml").write_text(f'[users]\nbob = "{V}"\nfiley = "{V}"\n')

    def validate(overlay: RegistryOverlay) -> Config:
        return parse_config({"secrets_file": "s.toml", "backends": {"main": {}},
                             "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"},
                                         "globex": {"strategy": "shared", "database": "saas", "tenant_id": "globex"}},
                             "users": {"bob": {"tenant": "acme"}, "filey": {"tenant": "globex"}}},
                            base=tmp_path, overlay=overlay)

    return validate


def test_a_rejected_user_row_does_not_bring_back_the_files_entry_of_that_name(tmp_path: Path) -> None:
    """wp-res19's residue: the file has bob on acme, the registry moved him to globex and then wrote a bad row for him;
    leaving the row out let the file's bob (acme) apply: access the registry had taken away came back."""
    validate = _validate_with_file_users(tmp_path)
    moved = check(_rows(("bob", "globex", {})), validate)
    assert moved.config.users["bob"].tenant == "globex"
    bad = check(_rows(("bob", "globex", {"profile": "wizard"})), validate)
    assert "bob" not in bad.config.users and list(bad.rejected) == ["users.bob"]
    assert "filey" in bad.config.users  # the rest of the file applies


def test_a_rejected_tenant_row_withholds_the_files_tenant_and_its_file_users(tmp_path: Path) -> None:
    """A bad registry row for a tenant the file also has: neither version applies, and the file's users of it are not
    admitted (instead of the whole registry rejected over the file's now tenant-less users)."""
    validate = _validate_with_file_users(tmp_path)
    bad_globex = ("globex", "shared", None, "saas", {"database": "other", "tenant_id": "g"})  # options contradict
    rows = _rows(("al", "acme", {}), tenants=[bad_globex])
    result = check(rows, validate)
    assert "globex" not in result.config.tenants and "filey" not in result.config.users
    assert set(result.config.users) == {"al", "bob"} and list(result.rejected) == ["tenants.globex"]
