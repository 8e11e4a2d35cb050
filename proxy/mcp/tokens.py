"""Agents' bearer tokens for `pgtenant mcp --http`: minted once, stored as SHA-256 hashes, each mapped to one login."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

PREFIX = "pgtmcp_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # a TOML bare key
_HEX = re.compile(r"[0-9a-f]{64}")
KEYS = frozenset({"token_sha256", "dsn"})


class TokenFileError(ValueError):
    """The tokens file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Agent:
    """One agent: its name (for logs), its token's SHA-256 and the pgtenant login (libpq DSN) it acts as."""

    name: str
    token_sha256: bytes
    dsn: str


def mint() -> tuple[str, str]:
    """A new random token (256 bits) and the hex SHA-256 to store; the token itself is stored nowhere."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, digest(token).hex()


def digest(token: str) -> bytes:
    """The stored form of a token. A plain hash suffices: tokens are random, 256 bits, never passwords."""
    return hashlib.sha256(token.encode()).digest()


def stanza(name: str, token_sha256: str, dsn: str) -> str:
    """The tokens-file entry for one agent (TOML)."""
    return f"[agents.{name}]\ntoken_sha256 = \"{token_sha256}\"\ndsn = {_toml_string(dsn)}\n"


@dataclass(frozen=True)
class TokenBook:
    """The agents of a tokens file; `agent_for` compares a presented token with every hash in constant time."""

    agents: tuple[Agent, ...]

    def agent_for(self, token: str) -> Agent | None:
        presented = digest(token)
        found = None
        for agent in self.agents:  # no early exit: the time taken does not say which entry matched
            if hmac.compare_digest(presented, agent.token_sha256):
                found = agent
        return found


def load(path: str | Path, warn: list[str] | None = None) -> TokenBook:
    """Read a tokens file: `[agents.<name>]` tables with `token_sha256` and `dsn`. A file others may read (the
    DSNs carry passwords) adds a line to `warn`."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
        mode = p.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{path}: not valid TOML: {exc}") from None
    if warn is not None and os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn.append(f"{path} is readable by other users and holds pgtenant passwords: chmod 600 {path}")
    extra = set(data) - {"agents"}
    if extra:
        raise TokenFileError(f"{path}: unknown top-level key(s) {sorted(extra)}; expected [agents.<name>] tables")
    agents = []
    seen: set[bytes] = set()
    for name, entry in (data.get("agents") or {}).items():
        where = f"{path}: agents.{name}"
        if not NAME.fullmatch(name):
            raise TokenFileError(f"{where}: a name is letters, digits, '_' and '-' (at most 63)")
        if not isinstance(entry, dict) or set(entry) != KEYS:
            raise TokenFileError(f"{where}: needs exactly the keys {sorted(KEYS)}")
        hexdigest, dsn = entry["token_sha256"], entry["dsn"]
        if not isinstance(hexdigest, str) or not _HEX.fullmatch(hexdigest):
            raise TokenFileError(f"{where}: token_sha256 must be 64 lowercase hex digits (`pgtenant mcp-token` "
                                 "prints it)")
        if not isinstance(dsn, str) or not dsn.strip():
            raise TokenFileError(f"{where}: dsn must be a libpq connection string of a pgtenant login")
        raw = bytes.fromhex(hexdigest)
        if raw in seen:
            raise TokenFileError(f"{where}: the same token hash as another agent")
        seen.add(raw)
        agents.append(Agent(name, raw, dsn))
    if not agents:
        raise TokenFileError(f"{path}: no [agents.<name>] entry: nobody could connect")
    return TokenBook(tuple(agents))


def _toml_string(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'
