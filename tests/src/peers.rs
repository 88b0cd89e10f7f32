//! MCP servers and clients on the official SDKs, as real peers.

use crate::paths::{node, node_modules, python, python_previous_sdk, repo_root};
use crate::process::Process;
use crate::{free_port, wait_for};
use anyhow::Context;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How a peer speaks MCP over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP answering with JSON bodies.
    StreamableJson,
    /// Streamable HTTP answering with SSE streams.
    StreamableSse,
    /// The 2024-11-05 HTTP+SSE transport (GET /sse, POST to the announced endpoint).
    LegacySse,
}

impl Transport {
    fn client_flag(self) -> &'static str {
        match self {
            Transport::StreamableJson | Transport::StreamableSse => "streamable-http",
            Transport::LegacySse => "sse",
        }
    }

    /// The path a client connects to.
    pub fn path(self) -> &'static str {
        match self {
            Transport::StreamableJson | Transport::StreamableSse => "/mcp",
            Transport::LegacySse => "/sse",
        }
    }
}

/// A running MCP server.
pub struct McpServer {
    pub port: u16,
    pub transport: Transport,
    process: Process,
    _dir: tempfile::TempDir,
}

impl McpServer {
    /// The Python SDK server of `tests/python/mcp_server.py` (tools: echo, add,
    /// get_status, deploy_model).
    pub async fn python(transport: Transport) -> anyhow::Result<McpServer> {
        let port = free_port()?;
        let mut command = Command::new(python()?);
        command
            .arg(repo_root().join("tests/python/mcp_server.py"))
            .args(["--port", &port.to_string()]);
        match transport {
            Transport::StreamableJson => {
                command.args(["--transport", "streamable-http", "--json-response"]);
            }
            Transport::StreamableSse => {
                command.args(["--transport", "streamable-http"]);
            }
            Transport::LegacySse => {
                command.args(["--transport", "sse"]);
            }
        }
        McpServer::start("python-mcp-server", command, port, transport).await
    }

    /// `@modelcontextprotocol/server-everything`, in Streamable HTTP or legacy SSE mode.
    pub async fn everything(transport: Transport) -> anyhow::Result<McpServer> {
        let port = free_port()?;
        let modules = node_modules()?;
        let mode = match transport {
            Transport::LegacySse => "sse",
            _ => "streamableHttp",
        };
        let mut command = Command::new(node()?);
        command
            .arg("--require")
            .arg(repo_root().join("tests/node/loopback.cjs"))
            .arg(modules.join("@modelcontextprotocol/server-everything/dist/index.js"))
            .arg(mode)
            .env("PORT", port.to_string());
        McpServer::start("server-everything", command, port, transport).await
    }

    async fn start(
        name: &str,
        command: Command,
        port: u16,
        transport: Transport,
    ) -> anyhow::Result<McpServer> {
        let dir = tempfile::Builder::new().prefix("airlock-mcp-").tempdir()?;
        let mut process = Process::spawn(name, command, dir.path())?;
        wait_for(
            &format!("{name} on port {port}"),
            Duration::from_secs(60),
            || {
                let running = process.check_running();
                let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                async move {
                    running?;
                    Ok(open.then_some(()))
                }
            },
        )
        .await?;
        Ok(McpServer {
            port,
            transport,
            process,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.transport.path())
    }

    pub fn log(&self) -> String {
        self.process.log_tail()
    }
}

/// Runs the Python SDK client (`tests/python/mcp_client.py`) against `base_url`
/// (scheme, host and port) and returns the JSON it prints.
pub async fn python_client(
    base_url: &str,
    transport: Transport,
    token: Option<&str>,
    operation: &[&str],
) -> anyhow::Result<Value> {
    python_script_client(python()?, base_url, transport, token, operation).await
}

async fn python_script_client(
    interpreter: PathBuf,
    base_url: &str,
    transport: Transport,
    token: Option<&str>,
    operation: &[&str],
) -> anyhow::Result<Value> {
    let mut command = tokio::process::Command::new(interpreter);
    command
        .arg(repo_root().join("tests/python/mcp_client.py"))
        .args(["--url", &format!("{base_url}{}", transport.path())])
        .args(["--transport", transport.client_flag()]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.args(operation);
    printed_json(command).await
}

/// Runs `command` (a client) to its end, within 120 s; the one JSON
/// document it printed on stdout.
async fn printed_json(mut command: tokio::process::Command) -> anyhow::Result<Value> {
    command.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .context("the MCP client did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "MCP client printed no JSON; stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A client of the client matrix: the official SDKs and the Inspector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The Python SDK, current major (`tests/python/mcp_client.py`).
    PythonSdk,
    /// The Python SDK's previous major, running the same script.
    PythonSdkPrevious,
    /// The TypeScript SDK (`tests/node/mcp_client.cjs`).
    TypeScriptSdk,
    /// The MCP Inspector in CLI mode (`inspector --cli`), on the TypeScript SDK's v2.
    InspectorCli,
}

impl Client {
    pub const ALL: [Client; 4] = [
        Client::PythonSdk,
        Client::PythonSdkPrevious,
        Client::TypeScriptSdk,
        Client::InspectorCli,
    ];

    /// Over Streamable HTTP at `url` (…/mcp), as the holder of `token`:
    /// `tool` called with the JSON object `arguments`, or with no tool, the
    /// tool list. Reported as `tests/python/mcp_client.py` prints it:
    /// `{"tools": [names]}`, `{"isError", "text", "meta"}` or `{"error"}`.
    pub async fn run(
        self,
        url: &str,
        token: &str,
        call: Option<(&str, &Value)>,
    ) -> anyhow::Result<Value> {
        let arguments = call.map(|(_, a)| a.to_string()).unwrap_or_default();
        let operation: Vec<&str> = match call {
            Some((tool, _)) => vec!["call", tool, &arguments],
            None => vec!["list-tools"],
        };
        let base = url.trim_end_matches(Transport::StreamableJson.path());
        let interpreter = match self {
            Client::PythonSdk => python()?,
            Client::PythonSdkPrevious => python_previous_sdk()?,
            Client::TypeScriptSdk => {
                let mut command = tokio::process::Command::new(node()?);
                command
                    .env("NODE_PATH", node_modules()?)
                    .arg(repo_root().join("tests/node/mcp_client.cjs"))
                    .args(["--url", url, "--token", token])
                    .args(&operation);
                return printed_json(command).await;
            }
            Client::InspectorCli => return inspector(url, token, call).await,
        };
        python_script_client(
            interpreter,
            base,
            Transport::StreamableJson,
            Some(token),
            &operation,
        )
        .await
    }
}

/// The Inspector's CLI, its answer reported as the other clients report.
async fn inspector(url: &str, token: &str, call: Option<(&str, &Value)>) -> anyhow::Result<Value> {
    // It keeps a catalog under $HOME: a home of its own, gone afterwards.
    let home = tempfile::Builder::new().prefix("inspector-").tempdir()?;
    let mut command = tokio::process::Command::new(node()?);
    command
        .env("HOME", home.path())
        .arg(
            node_modules()?.join("@modelcontextprotocol/inspector/clients/launcher/build/index.js"),
        )
        .args(["--cli", url, "--transport", "http"])
        .args(["--header", &format!("Authorization: Bearer {token}")]);
    match call {
        None => command.args(["--method", "tools/list"]),
        Some((tool, arguments)) => {
            command.args(["--method", "tools/call", "--tool-name", tool]);
            for (name, value) in arguments.as_object().into_iter().flatten() {
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string);
                command.args(["--tool-arg", &format!("{name}={value}")]);
            }
            &mut command
        }
    };
    let printed = printed_json(command).await?;
    if let Some(error) = printed.get("error") {
        return Ok(json!({"error": error.to_string()}));
    }
    if let Some(tools) = printed["tools"].as_array() {
        let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        names.sort();
        return Ok(json!({"tools": names}));
    }
    let text: String = printed["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block["text"].as_str())
        .collect();
    Ok(json!({
        "isError": printed["isError"].as_bool().unwrap_or(false),
        "text": text,
        "meta": printed.get("_meta").cloned().unwrap_or(Value::Null),
    }))
}
