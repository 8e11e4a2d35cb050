"""The README's "your own database" commands, run as written (the admin DSN pointed at a throwaway cluster)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _readme_line(prefix: str, *, dry_run: bool = False) -> list[str]:
    import shlex

    line = next(x.strip() for x in README.splitlines()
                if x.strip().startswith(prefix) and ("--dry-run" in x) == dry_run)
    return shlex.split(line)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_run_with_the_example_config_as_written() -> None:
    args = _readme_line("pgtenant run --config")
    if not (_free(6432) and _free(9187)):
        pytest.skip("ports 6432/9187 are in use on this machine")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args[1:]], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while _free(6432):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "pgtenant did not listen on 6432"
            time.sleep(0.05)
        # No PostgreSQL behind it here: it runs, and says it is not ready, naming the backend.
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen("http://127.0.0.1:9187/readyz", timeout=10)
        assert exc.value.code == 503
        body = json.loads(exc.value.read())
        assert body["backends"] == {"main": False} and set(body["tenants_pending"]) == {"acme", "globex", "initech"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_provision_command_as_written(tmp_path: Path) -> None:
    args = _readme_line("pgtenant provision --config")
    dry = _readme_line("pgtenant provision --config", dry_run=True)
    cluster = PgCluster(ssl=False)
    cluster.start()
    try:
        for argv in (args, dry):
            i = argv.index("--admin-dsn")
            argv[i + 1] = cluster.dsn()  # the README's placeholder DSN, pointed at the throwaway cluster
        res = subprocess.run([sys.executable, "-m", "proxy", *dry[1:]], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        assert 'CREATE ROLE "pgtenant" LOGIN' in res.stdout and "CREATE DATABASE \"saas\"" in res.stdout
        assert not cluster.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pgtenant'")  # nothing was run
        res = subprocess.run([sys.executable, "-m", "proxy", *args[1:]], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.rstrip().endswith("provisioned")
        assert re.search(r"role pgtenant: created", res.stdout)
        roles = cluster.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'pgtenant'")
        assert roles == [(False, False)]
        again = subprocess.run([sys.executable, "-m", "proxy", *args[1:]], cwd=ROOT, capture_output=True, text=True,
                               timeout=120, check=False)
        assert again.returncode == 0 and "role pgtenant: unchanged" in again.stdout  # idempotent, password kept
    finally:
        cluster.stop()
