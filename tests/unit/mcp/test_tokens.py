"""proxy/mcp/tokens.py: agent tokens minted once, stored as hashes, looked up in constant time."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path

import pytest

from proxy.mcp import tokens
from proxy.mcp.tokens import TokenFileError


def _book_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_mint_gives_a_random_token_and_its_sha256() -> None:
    token, hexdigest = tokens.mint()
    other, _ = tokens.mint()
    assert token.startswith(tokens.PREFIX) and len(token) >= len(tokens.PREFIX) + 43 and token != other
    assert hexdigest == hashlib.sha256(token.encode()).hexdigest()


def test_a_minted_stanza_loads_and_maps_the_token_to_its_login(tmp_path: Path) -> None:
    dsn = "host=127.0.0.1 port=6432 user=acme_bot password='p\"w\\\\x' dbname=acme"
    token_a, hash_a = tokens.mint()
    token_b, hash_b = tokens.mint()
    path = _book_file(tmp_path, tokens.stanza("bot-a", hash_a, dsn) + tokens.stanza("bot_b", hash_b, "user=b"))
    assert token_a not in path.read_text()
    book = tokens.load(path)
    found = book.agent_for(token_a)
    assert found is not None and found.name == "bot-a" and found.dsn == dsn
    assert book.agent_for(token_b).name == "bot_b"  # type: ignore[union-attr]
    assert book.agent_for(token_a + "x") is None and book.agent_for("") is None
    assert book.agent_for(hash_a) is None  # the stored hash is not itself a token


def test_the_lookup_compares_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the number of comparisons does not depend on which entry (if any) matched."""
    agents = []
    for i in range(5):
        token, hexdigest = tokens.mint()
        agents.append((token, tokens.Agent(f"a{i}", bytes.fromhex(hexdigest), "user=x")))
    book = tokens.TokenBook(tuple(agent for _, agent in agents))
    calls: list[int] = []
    real = tokens.hmac.compare_digest
    monkeypatch.setattr(tokens.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for presented in (agents[0][0], agents[4][0], "wrong"):
        calls.clear()
        book.agent_for(presented)
        assert len(calls) == 5


@pytest.mark.parametrize(("text", "problem"), [
    ("", "no \\[agents.<name>\\] entry"),
    ("[agents.a]\ntoken_sha256 = \"abc\"\ndsn = \"user=x\"\n", "64 lowercase hex"),
    (f"[agents.a]\ntoken_sha256 = \"{'A' * 64}\"\ndsn = \"user=x\"\n", "64 lowercase hex"),
    (f"[agents.a]\ntoken_sha256 = \"{'a' * 64}\"\n", "exactly the keys"),
    (f"[agents.a]\ntoken_sha256 = \"{'a' * 64}\"\ndsn = \"user=x\"\ntoken = \"t\"\n", "exactly the keys"),
    (f"[agents.a]\ntoken_sha256 = \"{'a' * 64}\"\ndsn = \"  \"\n", "dsn must be"),
    (f"[agents.a]\ntoken_sha256 = \"{'a' * 64}\"\ndsn = \"u=1\"\n[agents.b]\ntoken_sha256 = \"{'a' * 64}\"\n"
     "dsn = \"u=2\"\n", "same token hash"),
    (f"[agents.\"a b\"]\ntoken_sha256 = \"{'a' * 64}\"\ndsn = \"u=1\"\n", "a name is"),
    ("[tokens.a]\nx = 1\n", "unknown top-level"),
    ("[agents.a\n", "not valid TOML"),
])
def test_a_malformed_file_is_refused_with_the_reason(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(TokenFileError, match=problem):
        tokens.load(_book_file(tmp_path, text))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="No such file"):
        tokens.load(tmp_path / "absent.toml")


def test_a_file_others_may_read_is_loaded_with_a_warning(tmp_path: Path) -> None:
    _, hexdigest = tokens.mint()
    text = tokens.stanza("a", hexdigest, "user=x password=y")
    warnings: list[str] = []
    tokens.load(_book_file(tmp_path, text, 0o644), warnings)
    assert len(warnings) == 1 and "chmod 600" in warnings[0]
    warnings.clear()
    tokens.load(_book_file(tmp_path, text, 0o600), warnings)
    assert warnings == []


def test_the_stanza_is_toml_whatever_the_dsn_holds() -> None:
    dsn = 'password="a\\b" \t options=\x01'
    parsed = tomllib.loads(tokens.stanza("x", "0" * 64, dsn))
    assert parsed == {"agents": {"x": {"token_sha256": "0" * 64, "dsn": dsn}}}
