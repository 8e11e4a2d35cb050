"""Startup parameter and `options` allow-listing."""

from __future__ import annotations

import pytest

from proxy.config import DEFAULT_ALLOWED_PARAMETERS
from proxy.startup import backend_parameters, normalize_client_encoding, parse_options, split_options


def test_split_options_like_postgres() -> None:
    assert split_options(r"-c a=b  -c c=d\ e") == ["-c", "a=b", "-c", "c=d e"]
    assert split_options("") == []


def test_parse_options_forms() -> None:
    assert parse_options("-c statement_timeout=5s --lock-timeout=1s -cTimeZone=UTC") == [
        ("statement_timeout", "5s"), ("lock_timeout", "1s"), ("TimeZone", "UTC"),
    ]
    for bad in ("-c", "-P", "-c novalue", "x=y"):
        with pytest.raises(ValueError):
            parse_options(bad)


def test_allowed_parameters_forwarded() -> None:
    params, err = backend_parameters(
        {"user": "a", "database": "d", "application_name": "Tableau", "client_encoding": "'utf-8'",
         "DateStyle": "ISO", "options": "-c statement_timeout=5000"},
        DEFAULT_ALLOWED_PARAMETERS,
    )
    assert err is None
    assert params == {"application_name": "Tableau", "client_encoding": "utf-8", "DateStyle": "ISO",
                      "statement_timeout": "5000"}


@pytest.mark.parametrize(
    ("client", "sqlstate", "needle"),
    [
        ({"search_path": "other"}, "42501", '"search_path"'),
        ({"options": "-c pgtenant.tenant_id=x"}, "42501", '"pgtenant.tenant_id"'),
        ({"PGTENANT.TENANT_ID": "x"}, "42501", "PGTENANT.TENANT_ID"),
        ({"options": "-c session_authorization=postgres"}, "42501", "session_authorization"),
        ({"replication": "true"}, "42501", "replication"),
        ({"options": "-D /tmp"}, "08P01", "only -c"),
        ({"client_encoding": "LATIN1"}, "0A000", "LATIN1"),
        ({"options": "-c client_encoding=SJIS"}, "0A000", "SJIS"),
    ],
)
def test_refused(client: dict, sqlstate: str, needle: str) -> None:
    params, err = backend_parameters({"user": "a", **client}, DEFAULT_ALLOWED_PARAMETERS)
    assert params == {} and err is not None
    assert err.sqlstate == sqlstate and needle in err.message
    assert err.severity == "FATAL"


def test_reserved_prefix_cannot_be_allowed() -> None:
    _, err = backend_parameters({"pgtenant.tenant_id": "x"}, {*DEFAULT_ALLOWED_PARAMETERS, "pgtenant.tenant_id"})
    assert err is not None and err.sqlstate == "42501"


def test_utf8_spellings_accepted() -> None:
    for enc in ("UTF8", "'utf-8'", "unicode", "SQL_ASCII"):
        _, err = backend_parameters({"client_encoding": enc}, DEFAULT_ALLOWED_PARAMETERS)
        assert err is None, enc


def test_client_encoding_unquoted() -> None:
    assert normalize_client_encoding("'utf-8'") == "utf-8"
    assert normalize_client_encoding("UTF8") == "UTF8"
