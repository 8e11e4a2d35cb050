"""Smoke: psycopg reaches PostgreSQL through pgtenant and lands in its tenant's database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess


def test_select_through_proxy(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        assert conn.execute("SELECT current_database(), count(*) FROM orders").fetchone() == ("initech", 7)


def test_startup_heap_is_frozen(proxy: ProxyProcess) -> None:
    """What the proxy made before serving (modules, parsers, policies) is kept out of the cyclic collector's full
    passes, which would otherwise walk all of it while every session waits."""
    [event] = [e for e in proxy.log_events() if e.get("event") == "heap_frozen"]
    assert event["objects"] > 10_000


def test_a_reload_sent_while_the_proxy_prepares_is_run_once_it_serves(
        pg: PgCluster, tmp_path: Path) -> None:
    """A SIGHUP that arrived while the proxy prepared its tenants (or as soon as its port accepted, before the reload
    handler was set) ended the process silently: its default action (wp-sd2's flaky reload test). It is kept and run
    as a reload once the proxy serves."""
    p = ProxyProcess(pg, tmp_path)
    p.provision()
    p.write_config()
    with p.log_path.open("ab") as logf:
        p.proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "--config", str(p.config_path)],
                                  stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        until(lambda: p.count_events("tenant_tables") > 0 or p.proc.poll() is not None, 60,
              what="the proxy preparing its tenants")
        p.proc.send_signal(signal.SIGHUP)
        until(lambda: p.count_events("reloaded") > 0 or p.proc.poll() is not None, 60,
              what="the deferred reload")
        assert p.proc.poll() is None, p.read_log()
        assert p.count_events("reloaded") == 1
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (7,)
    finally:
        p.stop()
