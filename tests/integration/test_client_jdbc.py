"""pgJDBC (the real driver, via tests/support/java/JdbcProbe.java) through pgtenant.

Covers what BI tools built on pgJDBC (DBeaver, Metabase, Tableau's JDBC path...) do: catalog
browsing with DatabaseMetaData, server-side prepared statements with binary results, cursor
fetches through a named portal, Statement.cancel (a plaintext CancelRequest, also for TLS
sessions), TLS with certificate verification, and startup errors with their SQLStates.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.certs import TlsFiles
from tests.support.jdbc import JdbcError, require_jdbc, run_jdbc
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(autouse=True)
def _require_jdbc() -> None:
    require_jdbc()


def _jdbc(proxy: ProxyProcess, user: str, scenario: str, *args: str | int, **params: str | int) -> Any:
    """Run a JdbcProbe scenario as ``user`` against the proxy (plaintext unless ``params`` say otherwise)."""
    params.setdefault("sslmode", "disable")
    return run_jdbc(proxy.jdbc_url(user, **params), user, proxy.password(user), scenario, *args)


def _tagged() -> tuple[str, dict[str, str]]:
    """A unique application_name and the URL parameters that put it into the startup packet.

    pgJDBC only sends application_name at startup with assumeMinServerVersion >= 9.0 (otherwise
    it issues a SET after connecting), so the proxy's ``auth_ok`` log line can be found by it.
    """
    app = f"jdbc-{uuid.uuid4().hex[:12]}"
    return app, {"ApplicationName": app, "assumeMinServerVersion": "9.0"}


def _auth_ok_events(proxy: ProxyProcess, application_name: str) -> list[dict[str, Any]]:
    return [e for e in proxy.log_events()
            if e.get("event") == "auth_ok" and e.get("application_name") == application_name]


# --- DatabaseMetaData --------------------------------------------------------------------------


def test_get_tables_database_tenant(proxy: ProxyProcess) -> None:
    out = _jdbc(proxy, "ivan", "metadata", "orders", "public")
    assert out["product"] == "PostgreSQL"
    assert out["product_version"].startswith(str(proxy.cluster.major))
    assert out["qualified_tables"] == ["public.orders"]
    assert [(c["name"], c["type"], c["nullable"]) for c in out["columns"]] == [
        ("id", "int4", "NO"), ("amount", "numeric", "NO")]


def test_get_tables_schema_tenant(proxy: ProxyProcess) -> None:
    out = _jdbc(proxy, "gina", "metadata", "orders", "globex")
    assert out["qualified_tables"] == ["globex.orders"]
    assert [(c["name"], c["type"], c["position"]) for c in out["columns"]] == [
        ("id", "int4", 1), ("amount", "numeric", 2)]
    # Browsing every schema (what a BI tool's navigator does) finds it too, and the pinned
    # search_path resolves the unqualified name to the tenant's schema.
    everything = _jdbc(proxy, "gina", "metadata", "", "*")
    assert "globex.orders" in everything["qualified_tables"]
    counted = _jdbc(proxy, "gina", "query", "SELECT count(*), current_schema() FROM orders")
    assert counted["rows"] == [["40", "globex"]]


# --- extended protocol: server-side prepared statements, portals -------------------------------


def test_prepared_statement_switches_to_server_side_binary(proxy: ProxyProcess) -> None:
    out = _jdbc(proxy, "ivan", "prepared", 10)
    rows = out["rows"]
    threshold = out["prepare_threshold"]
    assert threshold == 5
    assert [r["sum"] for r in rows] == [i * 1000 + 1 for i in range(1, 11)]
    assert [r["product"] for r in rows] == [f"{2 * i}.50" for i in range(1, 11)]
    # Unnamed statements with text results first; from the threshold on the named statement S_1
    # (Parse/Describe once), whose later executions request binary int8 and numeric results.
    assert [r["server_prepared"] for r in rows] == [i >= threshold for i in range(1, 11)]
    assert [r["binary"] for r in rows[:threshold]] == [[False, False]] * threshold, rows
    assert [r["binary"] for r in rows[threshold:]] == [[True, True]] * (10 - threshold), rows
    # As on a direct connection, in every pool mode (docs/statements.md): the client's own S_1, never pgtenant's names.
    assert out["prepared_statements"] == ["S_1"], out["prepared_statements"]


def test_fetch_size_reads_through_named_portal(proxy: ProxyProcess) -> None:
    out = _jdbc(proxy, "ivan", "fetchsize", 1000, 100)
    assert (out["count"], out["sum"], out["fetch_size"]) == (1000, 500500, 100)
    assert "C_1" in out["portals"], out


# --- cancel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_statement_cancel(proxy: ProxyProcess, sslmode: str) -> None:
    # pgJDBC opens a new plaintext socket for the CancelRequest, even when the session uses TLS. pg_sleep(30)
    # cancelled after 1 s: "due to user request" (57014) is the cancel's own message, so no clock is needed.
    out = _jdbc(proxy, "ivan", "cancel", 1000, 30, sslmode=sslmode)
    assert out["sqlstate"] == "57014", out
    assert "canceling statement due to user request" in out["message"]
    assert out["cancel_error"] is None
    assert out["usable_after"] is True


# --- TLS --------------------------------------------------------------------------------------


def test_tls_verify_full(proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    # (The probe's "ssl" scenario reads pg_stat_ssl, which pgtenant refuses (catalog_denied): it lists
    # every session. The client leg's TLS is what the proxy logs at auth_ok.)
    app, tag = _tagged()
    out = _jdbc(proxy, "ivan", "query", "SELECT count(*) FROM orders", ssl="true", sslmode="verify-full",
                sslrootcert=str(tls_certs.ca_file), **tag)
    assert out["rows"] == [["7"]]
    [event] = _auth_ok_events(proxy, app)
    assert (event["tls"], event["user"], event["tenant"]) == (True, "ivan", "initech")


def test_tls_require(proxy: ProxyProcess) -> None:
    app, tag = _tagged()
    out = _jdbc(proxy, "alice", "query", "SELECT current_setting('pgtenant.tenant_id')", sslmode="require", **tag)
    assert out["rows"] == [["acme"]]
    [event] = _auth_ok_events(proxy, app)
    assert (event["tls"], event["tenant"]) == (True, "acme")


def test_tls_verify_full_rejects_other_ca(proxy: ProxyProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.support.certs import make_certs

    other = make_certs(tmp_path_factory.mktemp("jdbc-otherca")).ca_file
    with pytest.raises(JdbcError) as info:
        _jdbc(proxy, "ivan", "query", "SELECT 1", sslmode="verify-full", sslrootcert=str(other))
    assert info.value.sqlstate == "08006"


def test_tls_channel_binding_require(proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    info = run_jdbc(proxy.jdbc_url("ivan"), "ivan", "", "driverinfo")
    if "channelBinding" not in info["properties"]:
        # pgJDBC < 42.7.5 (Debian 12 ships 42.5.5) has no channelBinding property and hard-codes
        # ScramClient.ChannelBinding.NO: it picks SCRAM-SHA-256 even when SCRAM-SHA-256-PLUS is offered.
        pytest.skip(f"pgJDBC {info['package_version']} cannot do SCRAM channel binding (no channelBinding property)")
    app, tag = _tagged()
    out = _jdbc(proxy, "ivan", "query", "SELECT current_database()", sslmode="verify-full",
                sslrootcert=str(tls_certs.ca_file), channelBinding="require", **tag)
    assert out["rows"] == [["initech"]]
    [event] = _auth_ok_events(proxy, app)
    assert event["tls"] is True


def test_tls_session_when_plus_is_offered_without_channel_binding(proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    # Over TLS pgtenant offers SCRAM-SHA-256-PLUS and SCRAM-SHA-256; a driver without channel
    # binding support (gs2 flag "n") must still get in, with the right tenant.
    out = _jdbc(proxy, "gina", "query", "SELECT count(*) FROM orders", sslmode="verify-full",
                sslrootcert=str(tls_certs.ca_file))
    assert out["rows"] == [["40"]]


# --- startup errors ---------------------------------------------------------------------------


def test_wrong_password_is_28p01(proxy: ProxyProcess) -> None:
    with pytest.raises(JdbcError) as info:
        run_jdbc(proxy.jdbc_url("ivan", sslmode="disable"), "ivan", "not-the-password", "query", "SELECT 1")
    assert info.value.sqlstate == "28P01"
    assert 'password authentication failed for user "ivan"' in info.value.driver_message


def test_other_tenants_database_is_3d000(proxy: ProxyProcess) -> None:
    url = f"jdbc:postgresql://127.0.0.1:{proxy.port}/saas?sslmode=disable"
    with pytest.raises(JdbcError) as info:
        run_jdbc(url, "ivan", proxy.password("ivan"), "query", "SELECT 1")
    assert info.value.sqlstate == "3D000"
    assert 'database "saas" does not exist' in info.value.driver_message
