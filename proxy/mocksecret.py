"""The secret behind unknown users' fake SCRAM salts: configured, else persisted beside the config, else random."""

from __future__ import annotations

import os
import secrets
from dataclasses import replace

from proxy.config import Config
from proxy.logs import get_logger

log = get_logger("pgtenant.auth")

FILE_NAME = "pgtenant-auth-mock-secret"  # beside the config file, mode 0600, made at the first start


def with_mock_secret(config: Config, current: Config | None = None) -> Config:
    """`config` with a mock secret that stays the same across reloads and restarts wherever possible.

    A configured `auth_mock_secret` is used as it is. Without one, a reload keeps the running secret, and a
    start reads (or first creates) FILE_NAME beside the config file. Only when that file cannot be read or
    written is a random secret used, with a warning: unknown users' salts then change at every start.
    """
    if not config.auth_mock_secret_random:
        return config
    if current is not None:
        return replace(config, auth_mock_secret=current.auth_mock_secret)
    if config.source is not None:
        path = config.source.parent / FILE_NAME
        try:
            return replace(config, auth_mock_secret=_read_or_create(path), auth_mock_secret_random=False)
        except OSError as exc:
            problem = f"{path}: {exc.strerror or exc}"
        except ValueError as exc:
            problem = f"{path}: {exc}"
    else:
        problem = "the configuration was not loaded from a file"
    log.warning(
        "auth_mock_secret_random", problem=problem,
        consequence="unknown users get other fake SCRAM salts after every restart, which tells them from real "
        "users; set auth_mock_secret in the secrets file (the same on every replica)",
    )
    return config


def _read_or_create(path: os.PathLike[str]) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, "rb") as fh:
            text = fh.read().strip()
        if len(text) < 32:
            raise ValueError("holds fewer than 32 characters; delete it to have a new one made") from None
        return text
    text = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as fh:
        fh.write(text + b"\n")
    log.info("auth_mock_secret_created", path=str(path))
    return text
