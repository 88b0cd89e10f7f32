"""An MCP client on the official Python SDK, for Airlock's tests.

Connects over Streamable HTTP or legacy SSE, runs one operation and prints
the result as one JSON object on stdout:

  list-tools           {"tools": [names...]}
  call NAME JSON_ARGS  {"isError": bool, "text": "...", "meta": {...}}

Protocol failures print {"error": "..."} and exit 2.
"""

import argparse
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    if args.transport == "sse":
        transport = sse_client(args.url, headers=headers)
    else:
        transport = streamable_http_client(args.url, http_client=create_mcp_http_client(headers=headers))
    async with transport as streams:
        read_stream, write_stream = streams[0], streams[1]
        async with ClientSession(read_stream, write_stream) as session:
            await session.initialize()
            if args.operation == "list-tools":
                result = await session.list_tools()
                return {"tools": sorted(tool.name for tool in result.tools)}
            result = await session.call_tool(args.name, json.loads(args.arguments))
            text = "".join(getattr(block, "text", "") for block in result.content)
            # SDK 2 names the field is_error; SDK 1 (the client matrix's previous major) isError.
            is_error = getattr(result, "is_error", getattr(result, "isError", None))
            return {"isError": bool(is_error), "text": text, "meta": result.meta}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    parser.add_argument("--token")
    sub = parser.add_subparsers(dest="operation", required=True)
    sub.add_parser("list-tools")
    call = sub.add_parser("call")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", default="{}")
    args = parser.parse_args()
    try:
        print(json.dumps(asyncio.run(run(args))))
    except Exception as error:  # report any failure as data for the test to assert on
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        sys.exit(2)


if __name__ == "__main__":
    main()
