"""The MCP server's defaults that its command line and its code share (written once here)."""

MAX_WAITING = 4  # tool calls that may wait for one login while another runs; one more is refused as busy
REFUSED_LOG_INTERVAL = 60.0  # seconds: a source's refused (401) requests are logged once per interval, then counted
