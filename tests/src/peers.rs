//! MCP servers and clients on the official SDKs, as real peers.

use crate::paths::{node, node_modules, python, repo_root};
use crate::process::Process;
use crate::{free_port, wait_for};
use anyhow::Context;
use serde_json::Value;
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
    let mut command = tokio::process::Command::new(python()?);
    command
        .arg(repo_root().join("tests/python/mcp_client.py"))
        .args(["--url", &format!("{base_url}{}", transport.path())])
        .args(["--transport", transport.client_flag()]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.args(operation).kill_on_drop(true);
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
