"""`pgtenant registry init`, `pgtenant tenants add/list/move`, `pgtenant users add/remove/passwd`: against the
registry (`--registry DSN`, or the config's [registry]) or the config file (proxy.tomledit)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.config import Config, ConfigError, load_config


def _fail(message: str, code: int = 2) -> int:
    print(f"pgtenant: {message}", file=sys.stderr)
    return code


def _target(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """(registry DSN or None, config path or None): `--registry`, else the config's [registry] dsn, else the file."""
    config = Path(args.config) if args.config else None
    dsn = args.registry or os.environ.get("PGTENANT_REGISTRY_DSN")
    if dsn is None and config is not None:
        dsn = load_config(config).registry.dsn
    return dsn, config


def _password(args: argparse.Namespace, user: str) -> str:
    """The new password: from `--password-env VAR`, a prompt (twice) on a terminal, else one line of stdin."""
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise ConfigError(f"--password-env: environment variable {args.password_env} is not set")
    elif sys.stdin.isatty():
        value = getpass.getpass(f"Password for {user}: ")
        if getpass.getpass("Again: ") != value:
            raise ConfigError("passwords do not match")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ConfigError("empty password")
    return value


def _verifier(args: argparse.Namespace, user: str) -> str:
    from proxy.auth.scram import make_verifier

    return str(make_verifier(_password(args, user), iterations=args.iterations))


def _settings(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs: VALUE as JSON (numbers, booleans, lists), else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _run(args: argparse.Namespace, registry: Callable[[str, Path | None], str],
         file: Callable[[Path], str]) -> int:
    """Run a change against the registry or the file; print its outcome; exit 0, or 1/2 with the problem. A
    registry change's message is followed by its change number."""
    from proxy import registrystore, tomledit

    try:
        dsn, config = _target(args)
        if dsn is not None:
            print(registry(dsn, config))
            if config is None:
                print("pgtenant: note: not checked against a config file (pass --config to check it before "
                      "it is written)", file=sys.stderr)
        elif config is not None:
            print(file(config))
        else:
            return _fail("no target: pass --registry DSN (or set PGTENANT_REGISTRY_DSN) or --config FILE")
    except ConfigError as exc:
        return _fail(f"refused, nothing changed: {exc}")
    except tomledit.UnsafeEdit as exc:
        return _fail(f"refused, nothing changed: {exc}")
    except registrystore.RegistryError as exc:
        return _fail(f"registry: {exc}", 1)
    return 0


def _change(args: argparse.Namespace, apply: Callable[[Any], None], done: str,
            edit: Callable[[Path], None], edited: str) -> int:
    """A change: `apply(connection)` in one registry transaction (printed: `done` and the change number), or
    `edit(config path)` of the file (printed: `edited`, and that a SIGHUP applies it)."""
    from proxy import registrystore

    def registry(dsn: str, config: Path | None) -> str:
        return f"{done} (registry change {registrystore.change(dsn, config, apply)})"

    def file(config: Path) -> str:
        edit(config)
        return f"{edited} in {config} (SIGHUP the proxy to apply it)"

    return _run(args, registry, file)


def _cmd_registry_init(args: argparse.Namespace) -> int:
    from proxy import registrystore

    dsn = args.dsn or os.environ.get("PGTENANT_REGISTRY_DSN")
    try:
        if not dsn and args.config:
            dsn = load_config(args.config).registry.dsn
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}")
    if not dsn:
        return _fail("registry init needs --dsn (or PGTENANT_REGISTRY_DSN, or a config whose [registry] has a dsn)")
    try:
        registrystore.init(dsn)
    except registrystore.RegistryError as exc:
        return _fail(str(exc), 1)
    print("registry ready")
    return 0


def _tenant_table(args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, Any] = {"strategy": args.strategy, "database": args.database, **_settings(args.set)}
    for key in ("backend", "tenant_id", "schema"):
        if getattr(args, key) is not None:
            table[key] = getattr(args, key)
    return table


def _cmd_tenants_add(args: argparse.Namespace) -> int:
    from proxy import registrystore, tomledit

    try:
        table = _tenant_table(args)
    except ConfigError as exc:
        return _fail(str(exc))
    return _change(args, lambda c: registrystore.add_tenant(c, args.name, table), f"tenant {args.name} added",
                   lambda cfg: tomledit.add_tenant(cfg, args.name, table), f"tenant {args.name} added")


def _cmd_tenants_move(args: argparse.Namespace) -> int:
    from proxy import registrystore, tomledit

    if args.backend is None and args.database is None:
        return _fail("tenants move needs --backend and/or --database")
    return _change(args, lambda c: registrystore.move_tenant(c, args.name, args.backend, args.database),
                   f"tenant {args.name} moved (its open sessions end when the proxies apply the change)",
                   lambda cfg: tomledit.move_tenant(cfg, args.name, args.backend, args.database),
                   f"tenant {args.name} moved")


def _cmd_tenants_list(args: argparse.Namespace) -> int:
    from proxy import registrystore
    from proxy.registrydb import overlay

    def listing(config: Config, from_registry: set[str]) -> str:
        users: dict[str, int] = {}
        for u in config.users.values():
            users[u.tenant] = users.get(u.tenant, 0) + 1
        return _table([(t.name, t.strategy, t.backend, t.database, users.get(t.name, 0),
                        "registry" if t.name in from_registry else "file") for t in config.tenants.values()])

    def registry(dsn: str, cfg: Path | None) -> str:
        rows = registrystore.read(dsn)
        names = {row[0] for row in rows.tenants}
        if cfg is not None:  # the merged view the proxy serves
            return listing(load_config(cfg, overlay(rows)), names)
        users: dict[str, int] = {}
        for _name, tenant, _v, _o in rows.users:
            users[tenant] = users.get(tenant, 0) + 1
        return _table([(n, s, b or "", d, users.get(n, 0), "registry") for n, s, b, d, _ in rows.tenants])

    return _run(args, registry, lambda cfg: listing(load_config(cfg), set()))


def _table(rows: list[tuple[Any, ...]]) -> str:
    head = ("tenant", "strategy", "backend", "database", "users", "source")
    return "\n".join("\t".join(str(v) for v in row) for row in [head, *rows])


def _cmd_users_add(args: argparse.Namespace) -> int:
    from proxy import registrystore, tomledit

    try:
        options: dict[str, Any] = _settings(args.set)
        if args.profile:
            options["profile"] = args.profile
        verifier = _verifier(args, args.name)
    except ConfigError as exc:
        return _fail(str(exc))
    return _change(args, lambda c: registrystore.add_user(c, args.name, args.tenant, verifier, options,
                                                          registry_tenant=not args.config),
                   f"user {args.name} added to tenant {args.tenant}",
                   lambda cfg: tomledit.add_user(cfg, args.name, args.tenant, verifier, options),
                   f"user {args.name} added to tenant {args.tenant}")


def _cmd_users_remove(args: argparse.Namespace) -> int:
    from proxy import registrystore, tomledit

    return _change(args, lambda c: registrystore.remove_user(c, args.name),
                   f"user {args.name} removed (its open sessions end when the proxies apply the change)",
                   lambda cfg: tomledit.remove_user(cfg, args.name), f"user {args.name} removed")


def _cmd_users_passwd(args: argparse.Namespace) -> int:
    from proxy import registrystore, tomledit

    try:
        verifier = _verifier(args, args.name)
    except ConfigError as exc:
        return _fail(str(exc))
    return _change(args, lambda c: registrystore.set_verifier(c, args.name, verifier),
                   f"password of {args.name} changed (open sessions stay; new logins need the new password)",
                   lambda cfg: tomledit.set_verifier(cfg, args.name, verifier), f"password of {args.name} changed")


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="the proxy's TOML configuration: edited itself when it has no [registry] "
                   "dsn; otherwise the change is checked against it before it is written")
    p.add_argument("--registry", metavar="DSN", help="libpq DSN of the registry database (default: "
                   "$PGTENANT_REGISTRY_DSN, else the config's [registry] dsn)")


def _password_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable "
                   "(default: a prompt on a terminal, else one line of standard input)")
    p.add_argument("--iterations", type=int, default=4096, help="SCRAM iterations (default 4096)")


def add_parsers(sub: Any) -> None:
    """The `registry`, `tenants` and `users` commands, on the main parser's subcommands."""
    p = sub.add_parser("registry", help="the tenant registry in PostgreSQL")
    rs = p.add_subparsers(dest="registry_command", required=True)
    q = rs.add_parser("init", help="create the registry's schema, tables and change trigger (idempotent)")
    q.add_argument("--dsn", help="libpq DSN of the registry database (default: $PGTENANT_REGISTRY_DSN)")
    q.add_argument("--config", "-c", help="take the DSN from this config's [registry]")
    q.set_defaults(func=_cmd_registry_init)

    p = sub.add_parser("tenants", help="add, list or move tenants (in the registry or the config file)")
    ts = p.add_subparsers(dest="tenants_command", required=True)
    q = ts.add_parser("add", help="add a tenant")
    q.add_argument("name")
    q.add_argument("--strategy", required=True, choices=("shared", "schema", "database"))
    q.add_argument("--database", required=True, help="its database on the backend")
    q.add_argument("--backend", help="a backend of the config (default: its only one)")
    q.add_argument("--tenant-id", dest="tenant_id", help="shared strategy: its value of the tenant column")
    q.add_argument("--schema", help="schema strategy: its schema")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other [tenants.X] key, VALUE as JSON or a string (repeatable)")
    _target_options(q)
    q.set_defaults(func=_cmd_tenants_add)
    q = ts.add_parser("list", help="list the tenants")
    _target_options(q)
    q.set_defaults(func=_cmd_tenants_list)
    q = ts.add_parser("move", help="move a tenant to another backend and/or database (its sessions end)")
    q.add_argument("name")
    q.add_argument("--backend")
    q.add_argument("--database")
    _target_options(q)
    q.set_defaults(func=_cmd_tenants_move)

    p = sub.add_parser("users", help="add or remove users, or change a password (in the registry or the file)")
    us = p.add_subparsers(dest="users_command", required=True)
    q = us.add_parser("add", help="add a user (its password is stored as a SCRAM-SHA-256 verifier only)")
    q.add_argument("name")
    q.add_argument("--tenant", required=True)
    q.add_argument("--profile", choices=("default", "agent"))
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other [users.X] key, VALUE as JSON or a string (repeatable)")
    _password_options(q)
    _target_options(q)
    q.set_defaults(func=_cmd_users_add)
    q = us.add_parser("remove", help="remove a user (its open sessions end when the proxies apply the change)")
    q.add_argument("name")
    _target_options(q)
    q.set_defaults(func=_cmd_users_remove)
    q = us.add_parser("passwd", help="set a user's password")
    q.add_argument("name")
    _password_options(q)
    _target_options(q)
    q.set_defaults(func=_cmd_users_passwd)
