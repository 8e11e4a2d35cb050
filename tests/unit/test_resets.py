"""resets: a RESET of a client's startup setting reaches PostgreSQL as the SET of the client's startup value."""

from __future__ import annotations

import pytest

from proxy.policy import Allow, Rewrite, TenantPolicy, decide
from proxy.policy.model import SETTING
from proxy.policy.settings import set_config_statement
from proxy.resets import resets, restoring, set_statement

POLICY = TenantPolicy(tenant="acme", strategy="database")
STARTUP = {"application_name": set_config_statement("application_name", "it's me"),
           "datestyle": set_config_statement("DateStyle", "SQL, DMY")}


def changes_of(sql: str) -> tuple:
    decision = decide(POLICY, sql)
    assert isinstance(decision, (Allow, Rewrite)), decision
    return decision.changes


def test_set_statement_gives_what_the_startup_statement_gives() -> None:
    assert set_statement(STARTUP["application_name"]) == "SET application_name TO 'it''s me'"
    assert set_statement(STARTUP["datestyle"]) == "SET datestyle TO 'SQL, DMY'"
    # a list of quoted entries: SET 'a, b' would be one entry; set_config() reads it as a list
    assert set_statement(set_config_statement("search_path", "a, b")) is None
    assert set_statement("SET work_mem TO '4MB'") is None  # (not the proxy's startup form)


@pytest.mark.parametrize(("sql", "sent", "retagged"), [
    ("RESET application_name", "SET application_name TO 'it''s me'", (0,)),
    ("reset  DateStyle ;", "SET datestyle TO 'SQL, DMY' ;", (0,)),
    ("SET DateStyle TO DEFAULT", "SET datestyle TO 'SQL, DMY'", ()),  # (its tag is SET already)
    ("BEGIN; RESET DateStyle; SHOW DateStyle", "BEGIN; SET datestyle TO 'SQL, DMY'; SHOW DateStyle", (1,)),
    ("RESET work_mem; /* x */ RESET application_name; SELECT 'RESET datestyle'",
     "RESET work_mem; /* x */ SET application_name TO 'it''s me'; SELECT 'RESET datestyle'", (1,)),
])
def test_a_reset_of_a_startup_setting_becomes_the_set_of_its_startup_value(sql: str, sent: str,
                                                                          retagged: tuple[int, ...]) -> None:
    changes = changes_of(sql)
    assert resets(changes, STARTUP)
    restored = restoring(sql, changes, STARTUP)
    assert restored is not None
    assert (restored.sql, restored.retagged, restored.swallowed) == (sent, retagged, ())
    assert restored.sql.count(";") == sql.count(";")  # (statement positions stay those the policy decided)
    settings = [(c.at, c.name, c.shown) for c in restored.changes if c.op == SETTING]
    assert all(shown == STARTUP[name] for _, name, shown in settings if name in STARTUP)  # recorded as set
    assert ("work_mem" in sql) == any(name == "work_mem" and shown is None for _, name, shown in settings)


def test_reset_all_is_followed_by_the_sets_of_every_startup_value() -> None:
    sql = "BEGIN; RESET ALL"
    restored = restoring(sql, changes_of(sql), STARTUP)
    assert restored is not None
    assert restored.sql == "BEGIN; RESET ALL; SET application_name TO 'it''s me'; SET datestyle TO 'SQL, DMY'"
    assert restored.swallowed == (2, 3) and restored.retagged == ()
    assert {(c.at, c.name, c.shown) for c in restored.changes if c.op == SETTING} == {
        (1, "application_name", STARTUP["application_name"]), (1, "datestyle", STARTUP["datestyle"])}
    assert restoring("RESET ALL", changes_of("RESET ALL"), STARTUP, extended=True) is None  # one statement only
    assert restoring("RESET ALL", changes_of("RESET ALL"), {}) is None  # nothing of its own to give back


def test_what_is_not_a_startup_setting_stays_as_it_is() -> None:
    for sql in ("RESET work_mem", "SET application_name = 'x'", "SELECT 1"):
        changes = changes_of(sql)
        assert not resets(changes, STARTUP) or restoring(sql, changes, STARTUP) is None
    path = {"search_path": set_config_statement("search_path", "a, b")}
    assert restoring("RESET search_path", changes_of("RESET search_path"), path) is None
