"""The tenant registry's names in PostgreSQL that the policy keeps from tenants: schema, channel, lock class."""

SCHEMA = "pgtenant_registry"  # never reachable through the proxy (tenancy.py hides it from every tenant)
CHANNEL = "pgtenant_registry"  # the NOTIFY channel a change is announced on (payload: its change number)
INSTANCE_LOCK = 0x70677463  # the advisory lock class (two-key form) of instance slots ("pgtc")
