"""Tenant-isolation policy engine: pure decisions (allow / rewrite / deny) on PostgreSQL SQL text."""

from proxy.policy.cache import DecisionCache
from proxy.policy.engine import decide
from proxy.policy.model import REAPPLY_CONTEXT, Allow, Decision, Deny, Rewrite, TenantPolicy

__all__ = ["REAPPLY_CONTEXT", "Allow", "Decision", "DecisionCache", "Deny", "Rewrite", "TenantPolicy", "decide"]
