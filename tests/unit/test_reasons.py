"""Close reasons: every reason the core can give is a member, and each carries the labels it is counted under."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.auth import scram
from proxy.auth.throttle import LIMITS
from proxy.login import LoginEvent
from proxy.reasons import INVALID_CREDENTIALS, CloseReason
from proxy.session import Event


def test_every_failed_login_reason_is_a_member() -> None:
    reasons = set(re.findall(r'AuthFailed\(\s*"([a-z_]+)"', Path(scram.__file__).with_suffix(".py").read_text()))
    assert reasons >= {"unknown_user", "bad_proof", "malformed"}
    for reason in reasons:
        member = CloseReason.auth_failed(reason)
        assert member.value == f"auth_failed:{reason}" and member.auth == ("failure", reason)


@pytest.mark.parametrize("limit", LIMITS)
def test_every_failed_login_budget_is_a_member(limit: str) -> None:
    member = CloseReason.auth_throttled(limit)
    assert (member.value, member.auth, member.limit, member.prelogin) == (
        f"auth_throttled:{limit}", ("refused", "throttled"), limit, False
    )


@pytest.mark.parametrize(("limit", "refused", "label"), [
    ("address", False, "address"), ("total", False, "total"),
    ("address", True, "address_refused"), ("total", True, "total_refused"),
])
def test_prelogin_caps_carry_their_label(limit: str, refused: bool, label: str) -> None:
    member = CloseReason.prelogin_cap(limit, refused)
    assert member.prelogin and member.limit == label and member.auth is None


@pytest.mark.parametrize("event", [*LoginEvent, *Event])
def test_every_unexpected_event_is_a_member(event: Event | LoginEvent) -> None:
    assert CloseReason.unexpected(event.value) == f"unexpected_{event.value}"


def test_unknown_reasons_are_refused() -> None:
    with pytest.raises(ValueError):
        CloseReason.auth_failed("made_up")


def test_the_value_is_what_logs_say() -> None:
    """A StrEnum: logs, JSON and comparisons with the old strings see the value."""
    assert CloseReason.CLIENT_TERMINATE == "client_terminate"
    assert f"{CloseReason.SERVER_FATAL}" == "server_fatal"


def test_private_failures_are_one_reason_unless_asked() -> None:
    assert CloseReason.AUTH_FAILED_BAD_PROOF.auth_labels(False) == ("failure", INVALID_CREDENTIALS)
    assert CloseReason.AUTH_FAILED_UNKNOWN_USER.auth_labels(True) == ("failure", "unknown_user")
    assert CloseReason.AUTH_FAILED_MALFORMED.auth_labels(False) == ("failure", "malformed")
    assert CloseReason.STARTUP_TIMEOUT.auth_labels(False) == ("refused", "startup_timeout")
    assert CloseReason.BACKEND.auth_labels(True) is None
