"""Compile and run JdbcProbe.java against the real pgJDBC driver and return its JSON result."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "JdbcProbe.java"
JAR_CANDIDATES: tuple[str, ...] = (
    "/usr/share/java/postgresql.jar",
    "/usr/share/java/postgresql-*.jar",
    "/usr/share/maven-repo/org/postgresql/postgresql/*/postgresql-*.jar",
)
JVM_FLAGS: tuple[str, ...] = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss1m", "-Xmx256m")


class JdbcError(RuntimeError):
    """The JDBC probe failed; carries the driver's SQLState (if any) and the Java stderr."""

    def __init__(self, message: str, *, sqlstate: str | None = None, stderr: str = "", returncode: int = 1,
                 error_class: str | None = None) -> None:
        """Store the failure details."""
        super().__init__(f"{message}\n--- java stderr ---\n{stderr}" if stderr else message)
        self.sqlstate = sqlstate
        self.stderr = stderr
        self.returncode = returncode
        self.error_class = error_class
        self.driver_message = message


def find_jdbc_jar() -> Path | None:
    """pgJDBC jar: env ``PGJDBC_JAR``, else Debian's libpostgresql-jdbc-java locations."""
    env = os.environ.get("PGJDBC_JAR")
    if env:
        return Path(env) if Path(env).is_file() else None
    for pattern in JAR_CANDIDATES:
        for hit in sorted(glob.glob(pattern)):
            if Path(hit).is_file():
                return Path(hit)
    return None


def _java_tool(name: str) -> str | None:
    """``java``/``javac`` from ``$JAVA_HOME/bin`` or PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        cand = Path(home) / "bin" / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which(name)


def jdbc_missing_reason() -> str | None:
    """Why JDBC tests cannot run here (None if java, javac and the pgJDBC jar are all present)."""
    missing = [tool for tool in ("java", "javac") if _java_tool(tool) is None]
    if find_jdbc_jar() is None:
        missing.append("pgJDBC jar (apt-get install libpostgresql-jdbc-java, or set PGJDBC_JAR)")
    return f"missing {', '.join(missing)}" if missing else None


def require_jdbc() -> None:
    """Skip the calling test if JDBC is unavailable, but fail under CI (env ``CI`` set)."""
    reason = jdbc_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        raise RuntimeError(f"JDBC is required in CI but unavailable: {reason}")
    import pytest

    pytest.skip(f"JDBC unavailable: {reason}")


def compile_probe() -> Path:
    """Compile JdbcProbe.java (cached by source+jar hash) and return the classes directory."""
    javac = _java_tool("javac")
    jar = find_jdbc_jar()
    if javac is None or jar is None:
        raise JdbcError(f"cannot compile JdbcProbe: {jdbc_missing_reason()}")
    digest = hashlib.sha256(JAVA_SOURCE.read_bytes() + str(jar.resolve()).encode()).hexdigest()[:16]
    cache_root = Path(tempfile.gettempdir()) / f"pgtenant-jdbc-{os.getuid()}"
    out = cache_root / digest
    if (out / "JdbcProbe.class").is_file():
        return out
    cache_root.mkdir(mode=0o700, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=cache_root))
    res = subprocess.run(
        [javac, "-encoding", "UTF-8", "-d", str(tmp), "-cp", str(jar), str(JAVA_SOURCE)],
        capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise JdbcError(f"javac failed ({res.returncode})", stderr=res.stdout + res.stderr, returncode=res.returncode)
    try:
        os.rename(tmp, out)
    except OSError:  # another process compiled it concurrently
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_jdbc(url: str, user: str, password: str, scenario: str, *args: str | int, timeout: float = 120.0) -> Any:
    """Run ``scenario`` of JdbcProbe against ``url`` and return the parsed JSON (dict or list).

    Scenarios: ``metadata [table] [schema]`` (schema pattern, default public, ``*`` = all),
    ``prepared [n]`` (rows report ``server_prepared`` and per-column ``binary``),
    ``fetchsize [rows] [fetch]``, ``openresults <seq> <open>``, ``autosaveerrors <errors> <open>`` (set autosave in
    the URL), ``cancel [delay_ms] [sleep_s]``, ``ssl`` (TLS options go in the URL),
    ``query <sql>``, ``script <step>...`` (steps on one connection, each with its results or error; see
    JdbcProbe.script), ``driverinfo`` (driver version and known property names; no connection).
    Raises JdbcError (with ``sqlstate`` and the Java stderr) if the probe fails.
    """
    java = _java_tool("java")
    jar = find_jdbc_jar()
    if java is None or jar is None:
        raise JdbcError(f"cannot run JdbcProbe: {jdbc_missing_reason()}")
    classes = compile_probe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGTENANT_JDBC_USER=user, PGTENANT_JDBC_PASSWORD=password)
    argv = [java, *JVM_FLAGS, "-cp", f"{classes}{os.pathsep}{jar}", "JdbcProbe", url, scenario,
            *[str(a) for a in args]]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise JdbcError(f"JdbcProbe {scenario} timed out after {timeout}s", stderr=stderr) from exc
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    payload: Any = None
    if lines:
        try:
            payload = json.loads(lines[-1])
        except json.JSONDecodeError:
            payload = None
    if res.returncode != 0:
        if isinstance(payload, dict) and "error" in payload:
            raise JdbcError(str(payload["error"]), sqlstate=payload.get("sqlstate"), stderr=res.stderr,
                            returncode=res.returncode, error_class=payload.get("class"))
        raise JdbcError(f"JdbcProbe {scenario} exited {res.returncode}: {res.stdout}", stderr=res.stderr,
                        returncode=res.returncode)
    if payload is None:
        raise JdbcError(f"JdbcProbe {scenario} printed no JSON: {res.stdout!r}", stderr=res.stderr)
    return payload
