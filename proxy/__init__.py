"""pgtenant: a PostgreSQL wire-protocol proxy that keeps each BI client inside one tenant's data."""

from proxy import _accel

__version__ = "0.1.0"

_accel.install()
