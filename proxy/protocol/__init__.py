"""PostgreSQL v3 wire protocol: message types, decoding of what the proxy acts on, and stream framing."""
