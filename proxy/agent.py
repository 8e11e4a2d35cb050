"""The agent profile's session side: its server context (read-only, its own statement_timeout), the startup
parameters it refuses, and the MCP door's logins it requires; pure (the statement rules are proxy/policy/agent.py's,
the admission proxy/admission.py's)."""

from __future__ import annotations

from proxy import errors
from proxy.config import AgentConfig
from proxy.errors import PgError
from proxy.policy.agent import PINNED_SETTINGS
from proxy.pooling import ServerRequest, with_parameters

# The application_name `pgtenant mcp` logs in with (proxy/mcp/door.py): such a login must be of the agent profile.
DOOR_APPLICATION_NAME = "pgtenant-mcp"


def timeout_ms(limits: AgentConfig) -> int:
    """The agent's statement_timeout in milliseconds."""
    return round(limits.statement_timeout * 1000)


def server_parameters(limits: AgentConfig) -> dict[str, str]:
    """What an agent's server connection starts with besides its tenant context: read-only transactions and the
    agent's statement_timeout (startup parameters: RESET and DISCARD ALL return to them)."""
    return {"default_transaction_read_only": "on", "statement_timeout": f"{timeout_ms(limits)}ms"}


def server_request(request: ServerRequest, limits: AgentConfig) -> ServerRequest:
    """The pool request of an agent session: its own pool key (the read-only context is part of it), so an agent
    never gets a server of the tenant's ordinary sessions, nor they one of its."""
    return with_parameters(request, server_parameters(limits))


def startup_refusal(parameters: dict[str, str]) -> PgError | None:
    """A startup parameter (or `options -c` setting) the agent profile pins: the login is refused."""
    for name in parameters:
        if name.lower() in PINNED_SETTINGS:
            return errors.agent_startup_setting(name)
    return None


def door_refusal(user: str, parameters: dict[str, str], limits: AgentConfig | None) -> PgError | None:
    """The MCP door (`pgtenant mcp`, known by its application_name in `parameters`: the startup packet's own and
    its `options -c` settings) runs only as a login of the agent profile (`limits` None: the default profile):
    otherwise an agent would reach the data without the profile's guards (row cap, admission, function list,
    read-only at the server). Fail closed: the login is refused, with what to do."""
    if limits is not None:
        return None
    for name, value in parameters.items():
        if name.lower() == "application_name" and value.strip() == DOOR_APPLICATION_NAME:
            return errors.mcp_door_not_agent(application=DOOR_APPLICATION_NAME, user=user)
    return None
