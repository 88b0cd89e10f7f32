//! Real Envoy in front of real MCP servers: the official Python SDK client
//! lists tools through plain Envoy for every transport. (Envoy running the
//! Airlock filter is tested in `filter`.)

use airlock_tests::envoy::{Envoy, EnvoyOptions};
use airlock_tests::peers::{McpServer, Transport, python_client};

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
