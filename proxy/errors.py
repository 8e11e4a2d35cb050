"""Every client-visible error: one place that builds ErrorResponse/NoticeResponse with a SQLSTATE."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.protocol.messages import encode_error_fields


@dataclass(frozen=True, slots=True)
class PgError(Exception):
    """An error the proxy reports to a client as an ErrorResponse."""

    sqlstate: str
    message: str
    severity: str = "ERROR"
    detail: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        return f"{self.severity} {self.sqlstate}: {self.message}"

    @property
    def fatal(self) -> bool:
        return self.severity in ("FATAL", "PANIC")

    def fields(self) -> dict[str, str]:
        out = {"S": self.severity, "V": self.severity, "C": self.sqlstate, "M": self.message}
        if self.detail:
            out["D"] = self.detail
        if self.hint:
            out["H"] = self.hint
        return out

    def encode(self) -> bytes:
        """The full ErrorResponse message ('E')."""
        return encode_error_fields(b"E", self.fields())


def protocol_violation(message: str) -> PgError:
    return PgError("08P01", message, "FATAL")


def malformed_message(message: str) -> PgError:
    """A message PostgreSQL cannot read either (its pq_getmsg* errors): ERROR, the session goes on."""
    return PgError("08P01", message, "ERROR")


def unencrypted_data_after(request: str) -> PgError:
    """Bytes pipelined after an SSLRequest/GSSENCRequest (CVE-2021-23222): PostgreSQL's words."""
    return PgError(
        "08P01", f"received unencrypted data after {request}", "FATAL",
        detail="This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
    )


def message_too_large(length: int, limit: int) -> PgError:
    return PgError(
        "54000",
        f"message of {length} bytes exceeds pgtenant's limit of {limit} bytes",
        "FATAL",
        hint="Raise limits.max_message_length in the pgtenant configuration if this is legitimate.",
    )


def unsupported_protocol(major: int, minor: int) -> PgError:
    return PgError(
        "0A000",
        f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
        "FATAL",
    )


def no_user() -> PgError:
    return PgError("28000", "no PostgreSQL user name specified in startup packet", "FATAL")


def auth_failed(user: str) -> PgError:
    # The same text for unknown users and wrong passwords, as PostgreSQL does.
    return PgError("28P01", f'password authentication failed for user "{user}"', "FATAL")


def auth_throttled(user: str, retry_after: float) -> PgError:
    # The same for unknown and real users: the budgets count both alike.
    return PgError(
        "28P01",
        f'too many failed authentication attempts for user "{user}"; login refused, '
        f"try again in {max(1, round(retry_after))} seconds",
        "FATAL",
        hint="Failed logins are limited per user and client address (pgtenant limits.max_auth_failures).",
    )


def too_many_waiting(limit: str) -> PgError:
    return _prelogin_cap("waiting to log in", limit, "the oldest waiting connection is closed")


def too_many_logging_in(limit: str) -> PgError:
    return _prelogin_cap("logging in", limit, "try again in a moment")


def _prelogin_cap(what: str, limit: str, then: str) -> PgError:
    where = "from this address" if limit == "address" else "in all"
    return PgError(
        "53300",
        f"too many connections {what} {where}; {then}",
        "FATAL",
        hint="pgtenant limits connections that have not logged in yet (limits.max_prelogin_connections*).",
    )


def tls_required() -> PgError:
    return PgError(
        "28000",
        "pgtenant accepts only TLS connections",
        "FATAL",
        hint="Connect with sslmode=require (or verify-full).",
    )


def database_not_allowed(name: str) -> PgError:
    # Never say whether the database exists elsewhere.
    return PgError("3D000", f'database "{name}" does not exist', "FATAL")


def startup_parameter_not_allowed(name: str, via_options: bool) -> PgError:
    where = "startup option -c" if via_options else "startup parameter"
    return PgError(
        "42501",
        f'{where} "{name}" is not allowed by pgtenant',
        "FATAL",
        hint="Remove it from the connection settings, or add it to "
        "startup.allowed_parameters in the pgtenant configuration if it is safe.",
    )


def bad_startup_options(reason: str) -> PgError:
    return PgError("08P01", f"invalid startup options: {reason}", "FATAL")


def replication_not_allowed() -> PgError:
    return PgError("42501", "replication connections are not allowed through pgtenant", "FATAL")


def backend_unreachable(target: str, reason: str) -> PgError:
    return PgError(
        "08001",
        f'pgtenant could not connect to backend "{target}": {reason}',
        "FATAL",
        hint="The database behind pgtenant is unavailable; try again later or contact the operator.",
    )


def backend_refused(target: str, refusal: PgError) -> PgError:
    """The backend answered the proxy's login with an error (53300 too many clients, 57P03 starting up, 3D000...):
    the client gets its SQLSTATE, detail and hint, the message says it came from behind pgtenant."""
    return PgError(
        refusal.sqlstate,
        f'pgtenant could not connect to backend "{target}": {refusal.message}',
        "FATAL",
        detail=refusal.detail,
        hint=refusal.hint,
    )


def too_many_clients(limit: int) -> PgError:
    """pgtenant's own connection limit (PostgreSQL's SQLSTATE and words, and whose limit it is)."""
    return PgError(
        "53300",
        f"sorry, too many clients already: pgtenant accepts at most {limit} client connections",
        "FATAL",
        hint="The limit is limits.max_client_connections in the pgtenant configuration; try again later.",
    )


def startup_timeout() -> PgError:
    return PgError("08006", "canceling authentication due to timeout", "FATAL")


def admin_shutdown() -> PgError:
    return PgError("57P01", "terminating connection due to administrator command", "FATAL")


def server_closed() -> PgError:
    return PgError("08006", "the backend connection closed unexpectedly", "FATAL")


def internal_error() -> PgError:
    return PgError("XX000", "internal error in pgtenant; the connection is closed", "FATAL")


def user_removed(user: str) -> PgError:
    return PgError("28000", f'role "{user}" is no longer allowed to connect', "FATAL")


def policy_denied(sqlstate: str, message: str, hint: str, rule: str) -> PgError:
    """A statement refused by the tenant policy; the session stays usable."""
    if sqlstate == "22021":  # data errors read as PostgreSQL's own
        return PgError(sqlstate, message, "ERROR", hint=hint or None)
    text = message if rule in message else f"{message} (rule {rule})"
    return PgError(sqlstate, text if text.startswith("pgtenant") else f"pgtenant: {text}", "ERROR", hint=hint or None)


def snapshot_not_imported() -> PgError:
    """Any failure of SET TRANSACTION SNAPSHOT, as one answer: PostgreSQL tells "cannot import a snapshot from a
    different database" from "invalid snapshot identifier", which finds other databases' exports by scanning ids."""
    return PgError(
        "22023", "invalid snapshot identifier, or a snapshot that cannot be imported here",
        hint="Import a snapshot exported by a transaction of this database that is still open, first thing in a "
        "REPEATABLE READ or SERIALIZABLE transaction (pg_dump -j does).",
    )


def tenant_unavailable(tenant: str) -> PgError:
    return PgError(
        "57P03",
        f'tenant "{tenant}" is not available: its database does not enforce the tenant boundary',
        "FATAL",
        hint="The operator must fix the database (see the pgtenant log, `pgtenant provision`).",
    )


def client_encoding_not_utf8(value: str) -> PgError:
    return PgError(
        "0A000",
        f'client_encoding "{value}" is not supported by pgtenant; only UTF8 is',
        "FATAL",
        hint="Connect with client_encoding=UTF8 (the default of most drivers).",
    )


def backend_settings_unsafe(problem: str) -> PgError:
    return PgError(
        "08006",
        f"pgtenant closed the session: {problem}, so SQL would not be read the way pgtenant checks it",
        "FATAL",
        hint="The operator must not override standard_conforming_strings or client_encoding for pgtenant's roles.",
    )
