"""An MCP server made with the official Python SDK (PyPI `mcp`), for voxd's interop tests.

    python mcp_server.py PORT          # streamable HTTP at http://127.0.0.1:PORT/mcp
    python mcp_server.py stdio         # on stdin/stdout

It offers three tools: `lookup_order` (answers), `refund` (fails, as a tool error) and
`shipping_rates` (answers text).
"""

import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("voxd-test-shop")


@server.tool()
def lookup_order(order: str) -> dict:
    """Where a customer's order is."""
    return {"order": order, "status": "shipped"}


@server.tool()
def refund(order: str) -> str:
    """Refund an order."""
    # A ToolError's message reaches the client (other exceptions are masked by the SDK).
    raise ToolError(f"refunds for order {order} are closed today")


@server.tool(structured_output=False)
def shipping_rates() -> str:
    """Today's shipping rates."""
    return "Standard 4.99, express 12.99."


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run(transport="stdio")
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
