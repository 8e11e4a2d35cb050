"""Which settings a session's changes leave at the session default (a RESET of a startup setting shows its value)."""

from __future__ import annotations

import pytest

from proxy.reported import reset_to_default, shared_status


@pytest.mark.parametrize(("changes", "expected"), [
    ((), False),
    ((("application_name", ""),), True),  # RESET application_name
    ((("application_name", "SET application_name TO 'b'"),), False),
    ((("application_name", ""), ("application_name", "SET application_name TO 'b'")), False),  # RESET, then SET
    ((("application_name", "SET application_name TO 'b'"), ("application_name", "")), True),
    ((("*", ""),), True),  # RESET ALL / DISCARD ALL
    ((("*", ""), ("application_name", "SET application_name TO 'b'")), False),  # then SET again
    ((("timezone", ""),), False),  # another setting's RESET
    ((("application_name", "SET application_name TO 'b'"), ("*", "")), True),
])
def test_reset_to_default(changes: tuple[tuple[str, str], ...], expected: bool) -> None:
    assert reset_to_default("application_name", changes) is expected


def test_shared_status_is_one_dict_per_set_of_values_and_never_changed_in_place() -> None:
    first = shared_status({"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
    assert shared_status({"DateStyle": "ISO, MDY", "TimeZone": "UTC"}) is first
    assert shared_status({"TimeZone": "CET", "DateStyle": "ISO, MDY"}) is not first
    with pytest.raises(TypeError):
        first["TimeZone"] = "CET"
    assert dict(first) == {"TimeZone": "UTC", "DateStyle": "ISO, MDY"}
