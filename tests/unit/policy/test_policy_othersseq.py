"""A database tenant sharing its database: an unqualified name reaches the shared tenants' relation only where
PostgreSQL would find theirs first on the effective search_path (wp-9a7b's over-refusal; review 17 F4)."""

from __future__ import annotations

import pytest

from proxy.policy import Deny, TenantPolicy, decide


def _dan(path: tuple[str, ...]) -> TenantPolicy:
    return TenantPolicy(tenant="dan", strategy="database", database_shared=True, search_path=path,
                        others_tables=frozenset({("public", "orders")}),
                        others_sequences=frozenset({("public", "orders_id_seq")}),
                        others_shadows=frozenset({("dan_s", "orders"), ("dan_s", "orders_id_seq")}))


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM orders", "SELECT last_value FROM orders_id_seq",
                                 "SELECT pg_sequence_last_value('orders_id_seq')"])
def test_the_first_schema_holding_the_name_decides(sql: str) -> None:
    assert not isinstance(decide(_dan(("dan_s", "public")), sql), Deny)
    theirs = decide(_dan(("public", "dan_s")), sql)
    assert isinstance(theirs, Deny) and theirs.rule in ("others_table", "others_sequence"), theirs
    # a schema holding neither before public: still theirs
    assert isinstance(decide(_dan(("elsewhere", "public", "dan_s")), sql), Deny)


def test_the_session_search_path_decides() -> None:
    """The path set in the session (its context), not the configured one."""
    policy = _dan(("public",))
    sql = "SET search_path TO dan_s, public; SELECT count(*) FROM orders"
    assert not isinstance(decide(policy, sql), Deny), decide(policy, sql)
    denied = decide(policy, "SET search_path TO public, dan_s; SELECT count(*) FROM orders")
    assert isinstance(denied, Deny) and denied.rule == "others_table", denied


# Red team 9a10 B2: a sequence name as PostgreSQL reads a reg* literal (stringToQualifiedNameList): an unquoted name
# has its ASCII letters downcased only, and every name is truncated to 63 bytes at a character boundary.
LONG = "zz_invoice_number_sequence_for_the_acme_tenant_xxxxxxxxx_id_seq"  # 63 bytes


def _theirs() -> TenantPolicy:
    return TenantPolicy(tenant="dan", strategy="database", database_shared=True, search_path=("public",),
                        others_sequences=frozenset({("public", LONG), ("public", "zz_Élan_id_seq")}))


@pytest.mark.parametrize("literal", [f"public.{LONG}EXTRA", f'public."{LONG}EXTRA"', f"{LONG}Ü",
                                     "public.zz_Élan_id_seq", 'public."zz_Élan_id_seq"', "ZZ_Élan_ID_SEQ"])
@pytest.mark.parametrize("function", ["pg_sequence_last_value", "currval", "pg_sequence_parameters"])
def test_a_name_postgresql_folds_or_truncates_to_theirs_is_refused(function: str, literal: str) -> None:
    decision = decide(_theirs(), f"SELECT {function}('{literal}')")
    assert isinstance(decision, Deny) and decision.rule == "others_sequence", decision


@pytest.mark.parametrize("literal", ["public.zz_élan_id_seq", 'public."ZZ_Élan_id_seq"', f"public.{LONG[:-1]}"])
def test_a_name_postgresql_reads_as_another_is_not_theirs(literal: str) -> None:
    assert not isinstance(decide(_theirs(), f"SELECT pg_sequence_last_value('{literal}')"), Deny)


def _parent(writes: bool = False) -> TenantPolicy:
    return TenantPolicy(tenant="dan", strategy="database", database_shared=True, search_path=("public",),
                        allow_writes=writes, others_tables=frozenset({("public", "orders"), ("public", "base")}),
                        others_parents=frozenset({("public", "base")}))


@pytest.mark.parametrize("sql", ["SELECT * FROM ONLY base", "SELECT * FROM ONLY (public.base)", "TABLE ONLY base",
                                 "SELECT 1 WHERE EXISTS (SELECT FROM ONLY base)", "UPDATE ONLY base SET a = 1",
                                 "DELETE FROM ONLY public.base WHERE a = 1",
                                 "MERGE INTO ONLY base b USING (SELECT 1 AS a) s ON b.a = s.a WHEN MATCHED THEN DELETE",
                                 ])
def test_only_an_inheritance_parent_reaches_its_own_rows(sql: str) -> None:
    """wp-def21b / wp-only: an inheritance parent of theirs without the tenant column, named ONLY, reaches its own
    rows only (PostgreSQL's grants decide); a read-only tenant's write is `read_only`, as for any table."""
    assert not isinstance(decide(_parent(writes=True), sql), Deny), decide(_parent(writes=True), sql)
    if not sql.startswith("SELECT") and not sql.startswith("TABLE"):
        denied = decide(_parent(), sql)
        assert isinstance(denied, Deny) and denied.rule == "read_only", denied


@pytest.mark.parametrize("sql", ["SELECT * FROM base", "SELECT * FROM public.base*", "TABLE base",
                                 "SELECT * FROM ONLY base JOIN base b2 ON true", "SELECT * FROM ONLY orders",
                                 "UPDATE base SET a = 1", "DELETE FROM base", "INSERT INTO base VALUES (1)",
                                 "TRUNCATE ONLY base", "LOCK TABLE ONLY base IN ACCESS SHARE MODE",
                                 "COPY base TO STDOUT", "SELECT * FROM ONLY base TABLESAMPLE SYSTEM (50)",
                                 "EXPLAIN SELECT * FROM base"])
def test_a_parent_without_only_or_not_read_is_refused(sql: str) -> None:
    denied = decide(_parent(writes=True), sql)
    assert isinstance(denied, Deny) and denied.rule == "others_table", denied
