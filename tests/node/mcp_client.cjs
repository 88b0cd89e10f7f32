// An MCP client on the official TypeScript SDK, for Airlock's tests: the
// same contract as tests/python/mcp_client.py. Connects over Streamable
// HTTP, runs one operation and prints the result as one JSON object:
//
//   list-tools           {"tools": [names...]}
//   call NAME JSON_ARGS  {"isError": bool, "text": "...", "meta": {...}}
//
// Protocol failures print {"error": "..."} and exit 2. Run with NODE_PATH
// set to the locked packages (.tools/node_modules).
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

function parse(argv) {
  const args = { url: null, token: null, rest: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--url") args.url = argv[++i];
    else if (argv[i] === "--token") args.token = argv[++i];
    else args.rest.push(argv[i]);
  }
  const [operation, name, json] = args.rest;
  if (!args.url || !["list-tools", "call"].includes(operation) || (operation === "call" && !name)) {
    throw new Error("usage: mcp_client.cjs --url URL [--token T] list-tools | call NAME [JSON]");
  }
  return { ...args, operation, name, arguments: JSON.parse(json || "{}") };
}

async function run(args) {
  const headers = args.token ? { Authorization: `Bearer ${args.token}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(args.url), { requestInit: { headers } });
  const client = new Client({ name: "airlock-tests", version: "1" });
  await client.connect(transport);
  try {
    if (args.operation === "list-tools") {
      const { tools } = await client.listTools();
      return { tools: tools.map((t) => t.name).sort() };
    }
    // Longer than the gateway's longest hold (50 s in airlock up).
    const result = await client.callTool({ name: args.name, arguments: args.arguments }, undefined, {
      timeout: 120_000,
    });
    const text = result.content.map((block) => block.text || "").join("");
    return { isError: Boolean(result.isError), text, meta: result._meta ?? null };
  } finally {
    await transport.terminateSession().catch(() => {});
    await client.close();
  }
}

Promise.resolve()
  .then(() => run(parse(process.argv.slice(2))))
  .then(
  (out) => console.log(JSON.stringify(out)),
  (error) => {
    console.log(JSON.stringify({ error: `${error.name}: ${error.message}` }));
    process.exit(2);
  },
);
