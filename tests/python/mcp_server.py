"""A real MCP server on the official Python SDK, for Airlock's tests.

Serves Streamable HTTP at /mcp (JSON or SSE responses) or the legacy
HTTP+SSE transport at /sse, on the given port of 127.0.0.1 (or --host).
"""

import argparse

from mcp.server.mcpserver import MCPServer

server = MCPServer("airlock-test-server")


@server.tool()
def echo(message: str) -> str:
    """Returns the message unchanged."""
    return message


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def get_status() -> str:
    """Reports that the service is healthy (read-only)."""
    return "ok"


@server.tool()
def deploy_model(model: str, environment: str) -> str:
    """Deploys a model to an environment (high risk)."""
    return f"deployed {model} to {environment}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (a pod's test binds 0.0.0.0 on purpose)")
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    parser.add_argument("--json-response", action="store_true", help="answer with JSON, not SSE")
    args = parser.parse_args()
    if args.transport == "sse":
        server.run(transport="sse", host=args.host, port=args.port)
    else:
        server.run(
            transport="streamable-http",
            host=args.host,
            port=args.port,
            json_response=args.json_response,
        )


if __name__ == "__main__":
    main()
