"""SIGHUPs that reach `pgtenant run` before it serves: kept (one reload once it serves), never the default action."""

from __future__ import annotations

import signal

received: list[int] = []  # the SIGHUPs kept until the proxy's event loop takes the signal over (io/listener.serve)


def keep() -> None:
    """From now on a SIGHUP is kept in `received` instead of ending the process (its default action): a reload sent
    while the proxy imports, loads its config or prepares its tenants, or by a supervisor to a worker still starting
    (review 20 F12)."""
    signal.signal(signal.SIGHUP, lambda signum, _frame: received.append(signum))
