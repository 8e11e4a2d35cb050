"""Line edits of the config and secrets files that keep every comment: each edit is re-parsed and must change
exactly what it means to (else it is refused, UnsafeEdit), and the result must pass the config's validation."""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.config import ConfigError, parse_config

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


class UnsafeEdit(RuntimeError):
    """The file's layout is not one these line edits can change safely (inline tables, dotted keys...)."""


def key(name: str) -> str:
    """A TOML key: bare when it can be, else a quoted string."""
    return name if _BARE.fullmatch(name) else json.dumps(name)


def value(v: Any) -> str:
    """A TOML value for a JSON-like one."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write a {type(v).__name__} value in TOML")


def table_text(header: str, table: Mapping[str, Any]) -> str:
    return f"\n[{header}]\n" + "".join(f"{key(k)} = {value(v)}\n" for k, v in table.items())


def _header_name(parts: tuple[str, ...]) -> str:
    return ".".join(key(p) for p in parts)


def _header_path(line: str) -> tuple[str, ...] | None:
    """The key path of a table header line ([a."b c"] -> ("a", "b c")), or None for any other line."""
    m = _HEADER.match(line)
    if m is None:
        return None
    try:
        found: Any = tomllib.loads(f"[{m.group(1)}]\n")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(found, dict) and len(found) == 1:
        (k, found), = found.items()
        path.append(k)
    return tuple(path)


def _block(lines: list[str], parts: tuple[str, ...]) -> tuple[int, int] | None:
    """The lines [start, end) of the table `parts` (its header to the next header), or None."""
    start = None
    for i, line in enumerate(lines):
        path = _header_path(line)
        if path is None:
            continue
        if start is not None:
            return start, i
        if path == parts:
            start = i
    return None if start is None else (start, len(lines))


def _own_lines(lines: list[str], start: int, end: int) -> int:
    """The end of a block without the comments and blank lines at its bottom (they belong to the next table)."""
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end


def _subtables(lines: list[str], parts: tuple[str, ...]) -> list[tuple[int, int]]:
    """The blocks of `parts` and of its sub-tables ([users.x] and [users.x.agent]), without their bottom comments."""
    out = []
    for i, line in enumerate(lines):
        path = _header_path(line)
        if path is not None and path[:len(parts)] == parts:
            block = _block(lines[i:], path)
            assert block is not None
            out.append((i, _own_lines(lines, i, i + block[1])))
    return out


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _expect(path: Path, text: str, expected: Mapping[str, Any]) -> None:
    try:
        got = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UnsafeEdit(f"{path}: the edit would not be valid TOML ({exc}); edit it by hand") from exc
    if got != expected:
        raise UnsafeEdit(f"{path}: its layout (inline tables or dotted keys?) is not one this command can edit "
                         "without touching other entries; edit it by hand")


def _write(path: Path, text: str) -> None:
    """Replace the file atomically (a temporary file beside it, renamed over it), keeping its mode."""
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Files:
    """The config file and its secrets file, edited together and written only once both check out."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.text, self.raw = _load(config)
        self.expected = copy.deepcopy(self.raw)
        name = self.raw.get("secrets_file")
        self.secrets: Path | None = (config.parent / name) if isinstance(name, str) else None
        if self.secrets is not None:
            self.secrets_text, self.secrets_raw = _load(self.secrets)
        else:
            self.secrets_text, self.secrets_raw = "", {}
        self.secrets_expected = copy.deepcopy(self.secrets_raw)

    def need_secrets(self) -> Path:
        if self.secrets is None:
            raise UnsafeEdit(f"{self.config}: has no secrets_file to hold the verifier; add one "
                             "(secrets_file = \"secrets.toml\") first")
        return self.secrets

    def commit(self) -> None:
        _expect(self.config, self.text, self.expected)
        if self.secrets is not None:
            _expect(self.secrets, self.secrets_text, self.secrets_expected)
        parse_config(self.expected, base=self.config.parent, source=self.config,
                     secrets_raw=self.secrets_expected)  # ConfigError: nothing is written
        if self.secrets is not None and self.secrets_text != _load(self.secrets)[0]:
            _write(self.secrets, self.secrets_text)
        _write(self.config, self.text)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    out = raw.setdefault(name, {})
    if not isinstance(out, dict):
        raise UnsafeEdit(f"{name}: not a table")
    return out


def add_tenant(config: Path, name: str, table: Mapping[str, Any]) -> None:
    f = _Files(config)
    tenants = _section(f.expected, "tenants")
    if name in tenants:
        raise ConfigError(f"tenants.{name}: already in {config}")
    tenants[name] = json.loads(json.dumps(table))
    f.text = f.text.rstrip("\n") + "\n" + table_text(_header_name(("tenants", name)), table)
    f.commit()


def move_tenant(config: Path, name: str, backend: str | None, database: str | None) -> None:
    f = _Files(config)
    tenant = _section(f.expected, "tenants").get(name)
    if tenant is None:
        raise ConfigError(f"tenants.{name}: not in {config}")
    lines = f.text.splitlines(keepends=True)
    block = _block(lines, ("tenants", name))
    if block is None:
        raise UnsafeEdit(f"{config}: tenants.{name} is not a [tenants.{name}] table; edit it by hand")
    for k, v in (("backend", backend), ("database", database)):
        if v is None:
            continue
        tenant[k] = v
        pattern = re.compile(rf"^(\s*{k}\s*=\s*)(\"[^\"\\]*\"|'[^']*')(.*)$", re.DOTALL)
        for i in range(*block):
            m = pattern.match(lines[i])
            if m:
                lines[i] = m.group(1) + value(v) + m.group(3)
                break
        else:
            lines.insert(block[0] + 1, f"{k} = {value(v)}\n")
            block = (block[0], block[1] + 1)
    f.text = "".join(lines)
    f.commit()


def add_user(config: Path, name: str, tenant: str, verifier: str, options: Mapping[str, Any]) -> None:
    f = _Files(config)
    f.need_secrets()
    users = _section(f.expected, "users")
    if name in users:
        raise ConfigError(f"users.{name}: already in {config}")
    table = {"tenant": tenant, **options}
    users[name] = json.loads(json.dumps(table))
    _section(f.secrets_expected, "users")[name] = verifier
    f.text = f.text.rstrip("\n") + "\n" + table_text(_header_name(("users", name)), table)
    lines = f.secrets_text.splitlines(keepends=True)
    block = _block(lines, ("users",))
    entry = f"{key(name)} = {value(verifier)}\n"
    if block is None:
        f.secrets_text = f.secrets_text.rstrip("\n") + "\n\n[users]\n" + entry
    else:
        lines.insert(block[0] + 1, entry)
        f.secrets_text = "".join(lines)
    f.commit()


def _secret_line(f: _Files, name: str) -> int:
    """The line of `name`'s verifier in the secrets file's [users] table."""
    lines = f.secrets_text.splitlines(keepends=True)
    block = _block(lines, ("users",))
    pattern = re.compile(rf"^\s*({re.escape(name)}|{re.escape(json.dumps(name))})\s*=")
    for i in range(*(block or (0, 0))):
        if pattern.match(lines[i]):
            return i
    raise UnsafeEdit(f"{f.secrets}: no `{key(name)} = ...` line in its [users] table; edit it by hand")


def remove_user(config: Path, name: str) -> None:
    f = _Files(config)
    users = _section(f.expected, "users")
    if name not in users:
        raise ConfigError(f"users.{name}: not in {config}")
    del users[name]
    lines = f.text.splitlines(keepends=True)
    for start, end in reversed(_subtables(lines, ("users", name))):
        del lines[start:end]
    f.text = "".join(lines)
    secret_users = f.secrets_expected.get("users", {})
    if name in secret_users:
        del secret_users[name]
        i = _secret_line(f, name)
        slines = f.secrets_text.splitlines(keepends=True)
        del slines[i]
        f.secrets_text = "".join(slines)
    f.commit()


def set_verifier(config: Path, name: str, verifier: str) -> None:
    f = _Files(config)
    f.need_secrets()
    if name not in _section(f.expected, "users"):
        raise ConfigError(f"users.{name}: not in {config}")
    secret_users = _section(f.secrets_expected, "users")
    secret_users[name] = verifier
    i = _secret_line(f, name)
    slines = f.secrets_text.splitlines(keepends=True)
    slines[i] = f"{key(name)} = {value(verifier)}\n"
    f.secrets_text = "".join(slines)
    f.commit()
