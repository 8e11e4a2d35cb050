"""Decides which client startup parameters (and `options -c` settings) reach the backend, pure."""

from __future__ import annotations

from collections.abc import Iterable

from proxy import errors
from proxy.errors import PgError

# Parameters the proxy itself consumes or replaces; never forwarded as given.
_CONSUMED = frozenset({"user", "database", "options"})
# Claims a client may pass for the audit log only (never authentication, never forwarded).
END_USER_CLAIM = "pgtenant.end_user"
_RESERVED_PREFIXES = ("pgtenant.",)


def split_options(options: str) -> list[str]:
    """Split an `options` value like PostgreSQL's pg_split_opts: whitespace separates, backslash escapes."""
    out: list[str] = []
    cur: list[str] = []
    in_word = False
    escaped = False
    for ch in options:
        if escaped:
            cur.append(ch)
            escaped = False
            in_word = True
        elif ch == "\\":
            escaped = True
            in_word = True
        elif ch.isspace():
            if in_word:
                out.append("".join(cur))
                cur = []
                in_word = False
        else:
            cur.append(ch)
            in_word = True
    if escaped:
        cur.append("\\")
    if in_word:
        out.append("".join(cur))
    return out


def parse_options(options: str) -> list[tuple[str, str]]:
    """`-c name=value` / `--name=value` pairs from an options string; ValueError on anything else."""
    words = split_options(options)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c":
            if i + 1 >= len(words):
                raise ValueError("-c without a setting")
            setting = words[i + 1]
            i += 2
        elif w.startswith("-c") or w.startswith("--"):
            setting = w[2:]
            i += 1
        else:
            raise ValueError(f"only -c name=value settings are supported, got {w!r}")
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise ValueError(f"{setting!r} is not of the form name=value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


# Startup settings allowed only with these values (policy/settings.PINNED_VALUES says why for SET).
STARTUP_PINNED: dict[str, frozenset[str]] = {"client_min_messages": frozenset({"notice", "warning", "error"})}


def backend_parameters(
    client: dict[str, str], allowed: Iterable[str]
) -> tuple[dict[str, str], PgError | None]:
    """The startup parameters to forward, or the FATAL error that refuses the connection.

    Client parameters and `options -c` settings pass one allow-list; every forwarded one is sent
    as a plain startup parameter (never as `options`), so the backend sees exactly what was checked.
    """
    allowed_set = frozenset(a.lower() for a in allowed)
    out: dict[str, str] = {}
    if client.get("replication", "").lower() not in ("", "false", "off", "no", "0"):
        return {}, errors.replication_not_allowed()
    items: list[tuple[str, str, bool]] = [
        (k, v, False) for k, v in client.items() if k not in _CONSUMED and k != "replication"
    ]
    if client.get("options"):
        try:
            items += [(k, v, True) for k, v in parse_options(client["options"])]
        except ValueError as exc:
            return {}, errors.bad_startup_options(str(exc))
    for name, value, via_options in items:
        key = name.lower()
        if key == END_USER_CLAIM:
            continue
        if key.startswith(_RESERVED_PREFIXES) or key not in allowed_set:
            return {}, errors.startup_parameter_not_allowed(name, via_options)
        if key in STARTUP_PINNED and value.strip().lower() not in STARTUP_PINNED[key]:
            return {}, errors.startup_parameter_not_allowed(f"{name}={value}", via_options)
        if key == "client_encoding":
            value = normalize_client_encoding(value)
            if value.replace("-", "").replace("_", "").lower() not in ("utf8", "unicode", "sqlascii"):
                # The policy engine parses SQL as UTF-8, exactly as the server then must (SQL_ASCII,
                # what libpq picks under the C locale, passes bytes through unconverted: the same text).
                return {}, errors.client_encoding_not_utf8(value)
        out[name] = value
    return out, None


def normalize_client_encoding(value: str) -> str:
    """asyncpg sends `'utf-8'` with quotes; PostgreSQL accepts the quoted form only via SET, so unquote it."""
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == "'":
        v = v[1:-1]
    return v


def end_user_claim(client: dict[str, str]) -> str | None:
    """The `pgtenant.end_user` claim from the startup packet or `options -c`, if any (max 200 chars)."""
    value = next((v for k, v in client.items() if k.lower() == END_USER_CLAIM), None)
    if value is None and client.get("options"):
        try:
            value = next((v for k, v in parse_options(client["options"]) if k.lower() == END_USER_CLAIM), None)
        except ValueError:
            return None
    return value[:200] if value else None
