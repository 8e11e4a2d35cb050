"""Functions reached without a call through the MCP door (red team 9s8 F1): an agent-profile login's attribute
notation and operator of a SECURITY DEFINER app function are refused; the functions are created while the proxy
runs, so this is the snapshot a reload reads."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_mcp import _error, _rows, proxy  # noqa: F401
from tests.support.mcpclient import http_calls, http_server
from tests.support.proxyproc import ProxyProcess

SETUP_SAAS = """
CREATE FUNCTION public.rt_mcp_sd(o public.orders) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  'SELECT string_agg(DISTINCT tenant_id, '','') || '' / '' || count(*) FROM public.orders';
CREATE FUNCTION public.rt_mcp_op(a int, b int) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS
  'SELECT string_agg(DISTINCT tenant_id, '','') || '' / '' || count(*) FROM public.orders';
CREATE OPERATOR public.#@@# (LEFTARG = int, RIGHTARG = int, FUNCTION = public.rt_mcp_op);
"""
TEARDOWN_SAAS = """
DROP OPERATOR public.#@@# (int, int);
DROP FUNCTION public.rt_mcp_op(int, int);
DROP FUNCTION public.rt_mcp_sd(public.orders);
"""


def test_mcp_door_reaches_no_app_function(proxy: ProxyProcess, tmp_path: Path) -> None:  # noqa: F811
    # The proxy's lock alone: these SECURITY DEFINER functions read every tenant's rows, which the preflight refuses
    # (proxy/definers.py, issue 18/14), so the reload that reads them runs with [preflight] enforce = false.
    proxy.preflight_enforce = False
    proxy.write_config()
    proxy.cluster.execute(SETUP_SAAS, dbname="saas")
    try:
        proxy.reload("reloaded")
        calls = [("query", {"sql": "SELECT count(*) FROM orders"}),
                 ("query", {"sql": "SELECT o.rt_mcp_sd FROM orders o LIMIT 1"}),
                 ("query", {"sql": "SELECT 1 #@@# 2"}),
                 ("query", {"sql": "SELECT o.rt_mcp_sd FROM orders o LIMIT 1", "dialect": "mysql"})]
        with http_server(tmp_path / "mcp", {"acme-bot": proxy.dsn("alice")}) as server:
            res = http_calls(server.url, server.tokens["acme-bot"], calls)
        assert _rows(res[0]) == [[200]]
        for r in res[1:]:
            message = _error(r)
            assert "42501" in message and "rt_mcp_" in message and "not allowed" in message, message
    finally:
        proxy.cluster.execute(TEARDOWN_SAAS, dbname="saas")
        proxy.preflight_enforce = True
        proxy.write_config()
        proxy.reload("reloaded")
