"""pgtenant: a PostgreSQL wire-protocol proxy that keeps each BI client inside one tenant's data."""

__version__ = "0.1.0"
