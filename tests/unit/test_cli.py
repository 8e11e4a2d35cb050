"""proxy/cli.py: the mcp and mcp-token subcommands' arguments and output."""

from __future__ import annotations

import hashlib
import tomllib

import pytest

from proxy.cli import main


def test_mcp_token_prints_the_token_once_and_the_entry_with_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp-token", "report-bot", "--dsn", "host=127.0.0.1 user=acme_bot password='s3cret'"]) == 0
    out, err = capsys.readouterr()
    token = err.strip().splitlines()[-1]
    entry = tomllib.loads(out)["agents"]["report-bot"]
    assert entry == {"token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                     "dsn": "host=127.0.0.1 user=acme_bot password='s3cret'"}
    assert token not in out


def test_mcp_token_refuses_a_name_that_is_not_a_plain_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp-token", "a.b", "--dsn", "user=x"]) == 2
    assert "letters, digits" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "problem"), [
    (["mcp"], "mcp needs --dsn"),
    (["mcp", "--http", "127.0.0.1"], "--http wants HOST:PORT"),
    (["mcp", "--http", "127.0.0.1:99999", "--tokens", "t"], "--http wants HOST:PORT"),
    (["mcp", "--http", "127.0.0.1:8000"], "--http needs --tokens"),
    (["mcp", "--http", "127.0.0.1:8000", "--tokens", "/nonexistent/tokens.toml"], "No such file"),
    (["mcp", "--dsn", "user=x", "--max-rows", "0"], "at least 1"),
    (["mcp", "--dsn", "user=x", "--statement-timeout", "-1"], "--statement-timeout 0..86400"),
    (["mcp", "--http", "127.0.0.1:8000", "--tokens", "t", "--max-waiting", "-1"], "--max-waiting 0..1000"),
])
def test_mcp_refuses_bad_arguments_before_serving(argv: list[str], problem: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PGTENANT_MCP_DSN", raising=False)
    assert main(argv) == 2
    assert problem in capsys.readouterr().err
