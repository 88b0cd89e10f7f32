//! Real Envoy in front of real MCP servers: the official Python SDK client
//! lists tools through plain Envoy for every transport, and through Envoy
//! running the Airlock filter module.

use airlock_tests::envoy::{Envoy, EnvoyOptions};
use airlock_tests::paths::filter_wasm;
use airlock_tests::peers::{McpServer, Transport, python_client};
use serde_json::json;

async fn tools_through_plain_envoy(server: McpServer) -> anyhow::Result<Vec<String>> {
    let envoy = Envoy::start(EnvoyOptions::plain(server.port)).await?;
    let listed = python_client(&envoy.url, server.transport, None, &["list-tools"]).await?;
    let tools: Vec<String> = serde_json::from_value(listed["tools"].clone()).map_err(|e| {
        anyhow::anyhow!(
            "{e}: {listed}\nenvoy: {}\nserver: {}",
            envoy.log(),
            server.log()
        )
    })?;
    Ok(tools)
}

#[tokio::test]
async fn python_sdk_through_plain_envoy_every_transport() -> anyhow::Result<()> {
    for transport in [
        Transport::StreamableJson,
        Transport::StreamableSse,
        Transport::LegacySse,
    ] {
        let tools = tools_through_plain_envoy(McpServer::python(transport).await?).await?;
        assert_eq!(
            tools,
            ["add", "deploy_model", "echo", "get_status"],
            "{transport:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn server_everything_through_plain_envoy() -> anyhow::Result<()> {
    for transport in [Transport::StreamableSse, Transport::LegacySse] {
        let tools = tools_through_plain_envoy(McpServer::everything(transport).await?).await?;
        assert!(
            tools.iter().any(|t| t == "echo"),
            "{transport:?}: {tools:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn envoy_runs_the_filter_module() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let envoy = Envoy::start(EnvoyOptions::with_filter(
        server.port,
        filter_wasm()?,
        json!({}),
    ))
    .await?;
    let response = reqwest::Client::new()
        .post(format!("{}/mcp", envoy.url))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await?;
    assert_eq!(
        response
            .headers()
            .get("x-airlock-filter")
            .map(|v| v.to_str().unwrap_or_default()),
        Some(env!("CARGO_PKG_VERSION")),
        "envoy log:\n{}",
        envoy.log()
    );
    let listed =
        python_client(&envoy.url, Transport::StreamableJson, None, &["list-tools"]).await?;
    assert_eq!(
        listed["tools"],
        json!(["add", "deploy_model", "echo", "get_status"]),
        "{listed}"
    );
    Ok(())
}
