"""`pgtenant mcp`: a tenant-scoped Model Context Protocol door for AI agents, itself a client of pgtenant."""
