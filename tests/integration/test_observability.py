"""Metrics, readiness, audit, admin console and live reload of a running pgtenant, with real traffic."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import USERS, ProxyProcess, prepare_backend
from tests.support.psql import run_psql

ADMIN_PASSWORD = "ops-secret"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (labels must match exactly the given ones, in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if got == labels:
            return float(m.group(4))
    return 0.0


@pytest.fixture(scope="module")
def obs_proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    workdir = tmp_path_factory.mktemp("obs")
    p = ProxyProcess(
        pg, workdir, audit={"enabled": True, "file": str(workdir / "audit.log"), "redact": False},
        admin_users={"ops": ADMIN_PASSWORD},
    ).start()
    yield p
    p.stop()


def test_query_histogram_counts_real_traffic(obs_proxy: ProxyProcess) -> None:
    with psycopg.connect(obs_proxy.dsn("alice"), autocommit=True) as c:
        c.execute("SELECT pg_sleep(0.2)").fetchall()
        c.execute("SELECT count(*) FROM orders").fetchall()
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute("SELECT * FROM nope")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SET pgtenant.tenant_id = 'bigco'")
    text = scrape(obs_proxy.metrics_url)
    h = "pgtenant_query_duration_seconds"
    # pg_sleep(0.2) lands above the 0.1 s bucket (how far above depends on the machine's load: no upper bucket).
    le_01 = sample(text, h + "_bucket", tenant="acme", kind="select", outcome="ok", le="0.1")
    total = sample(text, h + "_count", tenant="acme", kind="select", outcome="ok")
    assert total >= 2 and total - le_01 >= 1, (le_01, total)
    assert sample(text, h + "_sum", tenant="acme", kind="select", outcome="ok") >= 0.2
    assert sample(text, h + "_count", tenant="acme", kind="select", outcome="error") >= 1
    assert sample(text, h + "_count", tenant="acme", kind="utility", outcome="denied") >= 1
    assert sample(text, "pgtenant_backend_errors_total", tenant="acme", sqlstate_class="42") >= 1
    assert sum(
        float(v) for v in re.findall(r'^pgtenant_denied_statements_total\{rule="[^"]+",tenant="acme"\} (\S+)$',
                                     text, re.M)
    ) + sum(
        float(v) for v in re.findall(r'^pgtenant_denied_statements_total\{tenant="acme",rule="[^"]+"\} (\S+)$',
                                     text, re.M)
    ) >= 1
    assert sample(text, "pgtenant_auth_attempts_total", outcome="success", reason="ok") >= 1
    assert sample(text, "pgtenant_client_rows_total", tenant="acme") >= 2
    assert sample(text, "pgtenant_client_sent_bytes_total", tenant="acme") > 0
    assert "pgtenant_backend_connect_duration_seconds_bucket" in text
    for stage in ("total", "gate", "rewrite", "verify"):  # rewrite: the acme SELECTs got tenant filters
        assert sample(text, "pgtenant_policy_decision_duration_seconds_count", stage=stage) >= 1, stage
    assert sample(text, "pgtenant_policy_cache_lookups_total", result="miss") >= 1
    assert "SELECT" not in text and "pg_sleep" not in text  # never SQL in labels


def test_tenant_label_cardinality_is_capped(obs_proxy: ProxyProcess) -> None:
    # max_tenants = 3: acme, bigco, globex keep their names; initech is counted as _other.
    with psycopg.connect(obs_proxy.dsn("ivan"), autocommit=True) as c:
        c.execute("SELECT 1").fetchall()
    text = scrape(obs_proxy.metrics_url)
    assert sample(text, "pgtenant_query_duration_seconds_count", tenant="_other", kind="select", outcome="ok") >= 1
    assert 'tenant="initech"' not in text
    tenants = set(re.findall(r'tenant="([^"]+)"', text))
    assert tenants <= {"acme", "bigco", "globex", "_other", "_none"}


def _fail_logins(proxy: ProxyProcess) -> str:
    """One wrong password and one unknown user; the metrics text after them."""
    for user in ("alice", "nosuchuser"):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"host=127.0.0.1 port={proxy.port} user={user} password=bad sslmode=disable")
    return scrape(proxy.metrics_url)


def test_auth_failures_do_not_tell_unknown_users_from_wrong_passwords(obs_proxy: ProxyProcess) -> None:
    before = sample(scrape(obs_proxy.metrics_url), "pgtenant_auth_attempts_total", outcome="failure",
                    reason="invalid_credentials")
    text = _fail_logins(obs_proxy)
    assert sample(text, "pgtenant_auth_attempts_total", outcome="failure", reason="invalid_credentials") == before + 2
    assert "unknown_user" not in text and "bad_proof" not in text


def test_auth_failure_detail_is_an_operators_choice(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("detail"), metrics={"auth_failure_detail": True}).start()
    try:
        text = _fail_logins(p)
        assert sample(text, "pgtenant_auth_attempts_total", outcome="failure", reason="bad_proof") == 1
        assert sample(text, "pgtenant_auth_attempts_total", outcome="failure", reason="unknown_user") == 1
    finally:
        p.stop()


def test_health_and_readiness(obs_proxy: ProxyProcess) -> None:
    with urllib.request.urlopen(obs_proxy.metrics_url + "/healthz", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(obs_proxy.metrics_url + "/readyz", timeout=5) as r:
        body = json.loads(r.read())
    assert body["ready"] is True and body["backends"] == {"main": True} and body["tenants_pending"] == []
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(obs_proxy.metrics_url + "/nope", timeout=5)
    assert exc.value.code == 404


def test_audit_lines(obs_proxy: ProxyProcess) -> None:
    with psycopg.connect(obs_proxy.dsn("alice", options="-c pgtenant.end_user=jane@acme.example"),
                         autocommit=True) as c:
        rows = c.execute("-- Metabase:: userID: 7 queryType: MBQL\n"
                         "SELECT id FROM orders WHERE amount > 1000").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT set_config('pgtenant.tenant_id', 'bigco', false)")
    path = Path(obs_proxy.config_path).parent / "audit.log"

    def both_written() -> list[dict] | None:  # the audit file is flushed in batches
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        return lines if any("set_config" in (x.get("sql") or "") for x in lines) else None

    lines = until(both_written, what="the audit lines of both statements")
    sel = [x for x in lines if "amount > 1000" in (x.get("sql") or "")]
    assert sel, lines[-3:]
    rec = sel[-1]
    assert rec["tenant"] == "acme" and rec["user"] == "alice" and rec["kind"] == "select"
    assert rec["decision"] == "rewrite" and "acme" in rec["rewritten_sql"] and rec["outcome"] == "ok"
    assert rec["end_user"] == "jane@acme.example"  # the startup claim wins over the SQL remark
    assert rec["rows"] == len(rows) and isinstance(rec["duration_ms"], int | float) and rec["session_id"]
    denied = [x for x in lines if "set_config" in (x.get("sql") or "")][-1]
    assert denied["decision"] == "deny" and denied["outcome"] == "denied" and denied["rule"]


def test_audit_redaction(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    workdir = tmp_path_factory.mktemp("redact")
    p = ProxyProcess(pg, workdir, audit={"enabled": True, "file": str(workdir / "a.log"), "redact": True}).start()
    try:
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as c:
            c.execute("SELECT 'secret-value' AS s, 4242 WHERE 'x' <> 'y'").fetchall()
        lines = until(lambda: (workdir / "a.log").read_text().splitlines(), what="the audit line")
        rec = json.loads(lines[-1])
        assert rec["sql"] == "SELECT ? AS s, ? WHERE ? <> ?"
        assert "secret-value" not in (workdir / "a.log").read_text()
    finally:
        p.stop()


def test_admin_console_via_psql(obs_proxy: ProxyProcess) -> None:
    with psycopg.connect(obs_proxy.dsn("gina"), autocommit=True) as other:
        other.execute("SELECT 1").fetchall()
        conninfo = f"host=127.0.0.1 port={obs_proxy.port} user=ops dbname=pgtenant sslmode=disable"
        res = run_psql(conninfo, "SHOW TENANTS;\nSHOW CLIENTS;\nSHOW SERVERS;\nSHOW STATS;\nSHOW CONFIG;\n",
                       password=ADMIN_PASSWORD, args=("-A", "-F", "|"))
        assert res.returncode == 0, res.stderr
        assert "acme|shared|main|saas|pgtenant_backend|ready|" in res.stdout
        assert "gina|globex|" in res.stdout  # the open session in SHOW CLIENTS
        assert "tenant|queries|errors|denied|rows|p50_ms|p95_ms|p99_ms" in res.stdout
        bad = run_psql(conninfo, "SELECT 1;\n", password=ADMIN_PASSWORD)
        assert bad.returncode != 0 and "unknown command" in bad.stderr
        sid = next(line.split("|")[0] for line in res.stdout.splitlines() if "|gina|globex|" in line)
        kill = run_psql(conninfo, f"KILL_CLIENT {sid};\n", password=ADMIN_PASSWORD)
        assert kill.returncode == 0, kill.stderr
        with pytest.raises(psycopg.OperationalError, match="administrator command"):
            other.execute("SELECT 1")


def test_tenant_user_cannot_reach_admin_console(obs_proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match='database "pgtenant" does not exist'):
        psycopg.connect(obs_proxy.dsn("alice", dbname="pgtenant"))
    with pytest.raises(psycopg.OperationalError, match='database "saas" does not exist'):
        psycopg.connect(f"host=127.0.0.1 port={obs_proxy.port} user=ops password={ADMIN_PASSWORD} dbname=saas "
                        "sslmode=disable")


def test_sighup_reload(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("reload")).start()
    try:
        keep = psycopg.connect(p.dsn("gina"), autocommit=True)
        gone = psycopg.connect(p.dsn("bruno"), autocommit=True)
        assert p.proc is not None
        # 1. An invalid new config is rejected and the old one stays in force.
        good = p.config_path.read_text()
        p.config_path.write_text(good + "\n[users.broken]\ntenant = 'nope'\n")
        p.reload(expect="reload_rejected")
        assert keep.execute("SELECT 1").fetchone() == (1,)
        # 2. Add a user (dora -> acme) and remove bruno.
        p.extra_users = {"dora": ("acme", "dora-pw")}
        users_backup = dict(USERS)
        try:
            USERS.pop("bruno")
            p.write_config()
        finally:
            USERS.clear()
            USERS.update(users_backup)
        p.reload(expect="reloaded")
        with psycopg.connect(p.dsn("dora")) as c:
            assert c.execute("SELECT current_setting('pgtenant.tenant_id')").fetchone() == ("acme",)
        assert keep.execute("SELECT count(*) FROM orders").fetchone() == (40,)  # untouched session
        with pytest.raises(psycopg.OperationalError, match='role "bruno" is no longer allowed'):
            gone.execute("SELECT 1")
        keep.close()
        gone.close()
    finally:
        p.stop()


def test_readyz_follows_the_backend(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cluster of its own, stopped and started again: /readyz goes 503 and comes back."""
    cluster = PgCluster(ssl=False)
    cluster.start()
    try:
        prepare_backend(cluster)
        p = ProxyProcess(cluster, tmp_path_factory.mktemp("ready"), backend_sslmode="disable").start()
        try:
            assert _ready(p) == 200
            cluster.pause()
            assert _ready(p) == 503
            with pytest.raises(psycopg.OperationalError):  # a tenant session meanwhile: 08001, not a hang
                psycopg.connect(p.dsn("ivan"))
            cluster.resume()
            deadline = time.monotonic() + 30
            while _ready(p) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _ready(p) == 200
        finally:
            p.stop()
    finally:
        cluster.stop()


def _ready(p: ProxyProcess) -> int:
    time.sleep(1.05)  # readiness answers are cached for one second
    try:
        with urllib.request.urlopen(p.metrics_url + "/readyz", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
