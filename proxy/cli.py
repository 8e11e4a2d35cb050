"""The `pgtenant` command line: run, check-config, passwd (and the subcommands later issues add)."""

from __future__ import annotations

import argparse
import getpass
import sys

from proxy.config import ConfigError, load_config


def _cmd_run(args: argparse.Namespace) -> int:
    from proxy import driver, logs

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pgtenant: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.logging.level, config.logging.format)
    try:
        driver.run(config)
    except driver.StartupError as exc:
        logs.get_logger("pgtenant").error("startup_failed", problem=str(exc))
        print(f"pgtenant: cannot start: {exc}", file=sys.stderr)
        return 3
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pgtenant: invalid configuration: {exc}", file=sys.stderr)
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
    import os

    from proxy.provision import provision

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pgtenant: invalid configuration: {exc}", file=sys.stderr)
        return 2
    dsn = args.admin_dsn or os.environ.get("PGTENANT_ADMIN_DSN")
    if not dsn:
        print("pgtenant: provision needs --admin-dsn or PGTENANT_ADMIN_DSN (a role that may create roles, "
              "databases, schemas and policies)", file=sys.stderr)
        return 2
    import psycopg

    try:
        provision(config, dsn, log=lambda line: print(line))
    except psycopg.Error as exc:
        print(f"pgtenant: provision failed: {exc}", file=sys.stderr)
        return 1
    print("provisioned")
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
    p.set_defaults(func=_cmd_provision)
    p = sub.add_parser("passwd", help="read a password from stdin and print its SCRAM-SHA-256 verifier")
    p.add_argument("user")
    p.add_argument("--iterations", type=int, default=4096)
    p.set_defaults(func=_cmd_passwd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
