"""Registry rows the config's validation refuses, each rejected alone: the rest of the registry applies."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from proxy.config import Config, ConfigError, RegistryOverlay
from proxy.registrydb import RegistryRows, row_problems

# More rows rejected than this in one reload: the registry as a whole is rejected (each rejection costs a validation
# of the whole config, and that many bad rows is a broken writer, not a typo).
MAX_REJECTED = 64

Row = tuple[str, str]  # ("users" | "tenants", name)

# Where a validation problem names a registry row: the config's own key paths, the overlay's, the secrets' and admin.
_NAMED = re.compile(r"^(?:registry |secrets\.)?(users|tenants)\.")
_ADMIN_CLASH = re.compile(r"^admin\.users: '(.+)' is also a tenant user")
_SETTING = re.compile(r"^registry tenant_settings \((.+?), ")


@dataclass(frozen=True, slots=True)
class Checked:
    """The config with every row it refused left out, and those rows' problems."""

    config: Config
    overlay: RegistryOverlay  # what was applied of the registry
    rejected: Mapping[str, str] = field(default_factory=dict)  # "users.NAME" / "tenants.NAME" -> the problem


def row_of(problem: str, overlay: RegistryOverlay) -> Row | None:
    """The registry row a validation problem is about, if it names one of `overlay`'s (else None: the file's)."""
    if m := _ADMIN_CLASH.match(problem):
        return ("users", m.group(1)) if m.group(1) in overlay.users else None
    if m := _SETTING.match(problem):
        return ("tenants", m.group(1)) if m.group(1) in overlay.tenants else None
    m = _NAMED.match(problem)
    if m is None:
        return None
    kind, rest = m.group(1), problem[m.end():]
    table = overlay.users if kind == "users" else overlay.tenants
    # The name runs to a '.' or ':' (names may hold either: the longest one the overlay has wins).
    ends = [i for i, c in enumerate(rest) if c in ".:"]
    for end in reversed(ends):
        if rest[:end] in table:
            return kind, rest[:end]
    return None


def without(overlay: RegistryOverlay, row: Row) -> RegistryOverlay:
    """`overlay` with `row` left out whole: the file's entry of that name does not apply either (nor, for a tenant,
    the file's users of it), so a rejected row never brings back an older placement or login the file still holds."""
    kind, name = row
    tenants, users, verifiers = dict(overlay.tenants), dict(overlay.users), dict(overlay.verifiers)
    (tenants if kind == "tenants" else users).pop(name, None)
    if kind == "users":
        verifiers.pop(name, None)
    return RegistryOverlay(tenants, users, verifiers, overlay.version, overlay.withheld | {(kind, name)})


def check(rows: RegistryRows, validate: Callable[[RegistryOverlay], Config]) -> Checked:
    """Validate the registry's rows over the file (`validate`: load and check the merged config); a row the validation
    refuses is rejected alone: left out (a user whose tenant is missing is not admitted), by every instance alike,
    whatever version of it an instance applied before (what applies follows from the registry and the file alone:
    a new instance and an old one serve the same). ConfigError when the file itself is the problem or more than
    MAX_REJECTED rows are refused."""
    current, rejected = row_problems(rows)
    for kind_name in rejected:
        kind, _, name = kind_name.partition(".")
        current = without(current, (kind, name))
    while True:
        try:
            return Checked(validate(current), current, rejected)
        except ConfigError as exc:
            row = row_of(str(exc), current)
            if row is None or len(rejected) >= MAX_REJECTED:
                raise
            rejected.setdefault(f"{row[0]}.{row[1]}", str(exc))
            current = without(current, row)
