"""The error registry: every client-visible error is registered, renders as before, and no SQLSTATE lives elsewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from proxy import errors
from proxy.errors import REGISTRY, ErrorSpec, PgError, policy_denied
from proxy.policy.model import Deny
from proxy.policy.rules import RULES, deny
from proxy.protocol import messages as m

PROXY = Path(errors.__file__).resolve().parent
# The classes of SQLSTATE PostgreSQL defines (errcodes.txt): a five-character literal of one of them is a SQLSTATE.
_SQLSTATE = re.compile(
    r"(00|01|02|03|08|09|0A|0B|0F|0L|0P|0Z|20|21|22|23|24|25|26|27|28|2B|2D|2F|34|38|39|3B|3D|3F|40|42|44|53|54|55|57"
    r"|58|72|F0|HV|P0|XX)[0-9A-Z]{3}"
)
_SEVERITIES = {"ERROR", "FATAL", "PANIC", "NOTICE", "WARNING"}


def sqlstate_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant of the module that is exactly a SQLSTATE."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQLSTATE.fullmatch(node.value)
    ]


def test_no_sqlstate_literal_outside_the_registry() -> None:
    found = {
        f"{path.relative_to(PROXY.parent)}:{line}": value
        for path in sorted(PROXY.rglob("*.py"))
        if path.name != "errors.py" or path.parent != PROXY
        for line, value in sqlstate_literals(path.read_text())
    }
    assert not found, f"SQLSTATEs written outside proxy/errors.py (use its named constants): {found}"


def test_the_scan_sees_a_sqlstate() -> None:
    assert sqlstate_literals('x = PgError("42501", "no")\ny = "ARRAY"\nz = "128MB"') == [(1, "42501")]


@pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=list(REGISTRY))
def test_registry_entries_are_complete(spec: ErrorSpec) -> None:
    assert _SQLSTATE.fullmatch(spec.sqlstate) and spec.severity in _SEVERITIES and spec.message
    error = spec(*(f"<{name}>" for name in spec.fields))
    assert isinstance(error, PgError) and error.sqlstate == spec.sqlstate and "{" not in error.message


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_has_a_registered_sqlstate(rule: str) -> None:
    sqlstate, hint = RULES[rule]
    constants = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
    assert sqlstate in constants and isinstance(hint, str)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_denial_worded_by_pgtenant_has_a_hint(rule: str) -> None:
    """A denial the client reads as pgtenant's (its message names the rule) says what to do instead; those that
    read as PostgreSQL's own error (invalid text, a missing object) carry PostgreSQL's hint, none."""
    err = policy_denied(deny(rule, "refused"))
    assert err.hint or not err.message.startswith("pgtenant:"), rule


def test_spec_arguments_fill_fields_in_order() -> None:
    too_large = "message of {} bytes exceeds pgtenant's limit of {} bytes"
    assert errors.message_too_large(70000, 65535).message == too_large.format(70000, 65535)
    assert errors.message_too_large(limit=2, length=1).message == too_large.format(1, 2)
    with pytest.raises(TypeError):
        errors.no_user("extra")


def test_errors_read_as_before() -> None:
    """The client's bytes are those of the builders the registry replaced."""
    assert errors.auth_failed("bob").encode() == m.encode_error_fields(
        b"E", {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": 'password authentication failed for user "bob"'}
    )
    throttled = errors.auth_throttled("bob", 0.2)
    assert throttled.message == (
        'too many failed authentication attempts for user "bob"; login refused, try again in 1 seconds'
    )
    assert errors.too_many_waiting("address").message == (
        "too many connections waiting to log in from this address; the oldest waiting connection is closed"
    )
    assert errors.too_many_logging_in("total").message == (
        "too many connections logging in in all; try again in a moment"
    )
    assert errors.startup_parameter_not_allowed("x", True).message == 'startup option -c "x" is not allowed by pgtenant'
    refused = errors.backend_refused("db1", errors.backend_error({"C": "53300", "M": "too many", "H": "wait"}))
    assert (refused.sqlstate, refused.message, refused.hint, refused.severity) == (
        "53300", 'pgtenant could not connect to backend "db1": too many', "wait", "FATAL"
    )
    assert errors.backend_error({"M": "odd"}).sqlstate == "08001"
    assert errors.unencrypted_data_after("SSL request").detail.startswith("This could be either")


def test_notice_is_a_notice_response() -> None:
    assert errors.admin_reloaded("done").encode() == m.encode_error_fields(
        b"N", {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "done"}
    )


def test_policy_denied_renders_the_rule_and_the_statement() -> None:
    d = deny("set_role", "SET ROLE is not allowed")
    assert d.message == "SET ROLE is not allowed" and d.statement is None
    err = policy_denied(d)
    assert (err.sqlstate, err.severity, err.hint) == ("42501", "ERROR", RULES["set_role"][1])
    assert err.message == "pgtenant: SET ROLE is not allowed (rule set_role)"
    second = Deny(d.sqlstate, d.message, d.hint, d.rule, statement=(2, 3))
    assert policy_denied(second).message == "pgtenant: statement 2 of 3: SET ROLE is not allowed (rule set_role)"


def test_policy_denied_of_invalid_text_is_postgresql_s_own() -> None:
    err = policy_denied(deny("invalid_utf8", 'invalid byte sequence for encoding "UTF8"'))
    assert (err.sqlstate, err.message, err.hint) == ("22021", 'invalid byte sequence for encoding "UTF8"', None)
