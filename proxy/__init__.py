"""pgtenant: a PostgreSQL wire-protocol proxy that keeps each BI client inside one tenant's data."""

from proxy import _accel  # noqa: F401  # first: refuses to run beside stale compiled modules, picks the speed-ups

__version__ = "0.1.0"
