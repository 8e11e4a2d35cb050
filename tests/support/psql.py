"""Run the real ``psql`` binary as a subprocess against a connection string."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .pgcluster import find_installations


class PsqlError(RuntimeError):
    """psql exited non-zero where success was required."""


@dataclass(frozen=True)
class PsqlResult:
    """Outcome of one psql run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> PsqlResult:
        """Return self, or raise PsqlError (with stderr) if psql failed."""
        if self.returncode != 0:
            raise PsqlError(
                f"psql exited {self.returncode}: {self.argv}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            )
        return self


def find_psql() -> str | None:
    """A psql executable: env ``PSQL``, else from a discovered installation (OpenSSL builds first), else PATH."""
    env = os.environ.get("PSQL")
    if env:
        return env
    installs = sorted(find_installations(), key=lambda i: not i.ssl)
    for inst in installs:
        cand = inst.bin("psql")
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("psql")


def run_psql(
    conninfo: str,
    script: str = "",
    *,
    password: str | None = None,
    args: Sequence[str] = (),
    timeout: float = 60.0,
    psql: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> PsqlResult:
    """Run ``psql -X -w -v ON_ERROR_STOP=1 -d <conninfo> [args] -f -`` feeding ``script`` on stdin.

    Inherited ``PG*`` variables are dropped so only ``conninfo``/``password``/``env`` matter;
    ``password`` is passed as ``PGPASSWORD``.  ``-w`` means psql never prompts.
    """
    exe = str(psql) if psql is not None else find_psql()
    if exe is None:
        raise PsqlError("psql not found (install postgresql-client or set PSQL)")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    child_env.update(PGCONNECT_TIMEOUT="10", PGAPPNAME="pgtenant-tests-psql")
    if password is not None:
        child_env["PGPASSWORD"] = password
    if env:
        child_env.update(env)
    argv = [exe, "-X", "-w", "-v", "ON_ERROR_STOP=1", "-d", conninfo, *args, "-f", "-"]
    res = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout, env=child_env,
                         check=False)
    result = PsqlResult(argv=argv, returncode=res.returncode, stdout=res.stdout, stderr=res.stderr)
    return result.check() if check else result


def interrupt_psql(psql: str, conninfo: str, password: str, sql: str, app: str,
                   running: Callable[[], bool]) -> PsqlResult:
    """Run ``psql -c sql`` (application_name ``app``) and press Ctrl-C (SIGINT: psql sends a CancelRequest) once
    ``running()`` sees the query active on the backend; fails if it never does within 15 s or psql then does not
    end within 15 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGAPPNAME=app, PGCONNECT_TIMEOUT="10")
    argv = [psql, "-X", "-w", "-d", conninfo, "-c", sql]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 15
        while not running():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the query never became active on the backend"
            time.sleep(0.05)  # poll interval, bounded by the deadline
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)  # the query otherwise: TimeoutExpired fails the test
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return PsqlResult(argv=argv, returncode=proc.returncode, stdout=stdout, stderr=stderr)
