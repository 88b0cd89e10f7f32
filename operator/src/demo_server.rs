//! The demo MCP server `airlock up --demo` puts behind the gateway, built
//! with the official Rust SDK (`rmcp`): one read-only tool, two high-risk
//! ones and one that reads privileged data, so that a policy has something
//! to allow, hold and deny.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_router};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct DemoServer;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Deployment {
    /// The model and version to deploy, e.g. `fraud-detector:v7`.
    pub model: String,
    /// `dev`, `staging` or `prod`.
    pub environment: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RuntimeSetting {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SecretName {
    pub name: String,
}

#[tool_router(server_handler)]
impl DemoServer {
    #[tool(description = "Read the serving status of every model (read-only).")]
    fn get_status(&self) -> String {
        "fraud-detector:v6 serving in prod (3/3 replicas ready)".into()
    }

    #[tool(description = "Deploy a model version to an environment (high risk).")]
    fn deploy_model(
        &self,
        Parameters(Deployment { model, environment }): Parameters<Deployment>,
    ) -> String {
        format!("deployed {model} to {environment}")
    }

    #[tool(description = "Change a runtime configuration value (high risk).")]
    fn update_runtime_config(
        &self,
        Parameters(RuntimeSetting { key, value }): Parameters<RuntimeSetting>,
    ) -> String {
        format!("set {key} = {value}")
    }

    #[tool(description = "Read a secret (privileged data).")]
    fn read_secret(&self, Parameters(SecretName { name }): Parameters<SecretName>) -> String {
        format!("secret {name}: hunter2")
    }
}

/// Which `Host` headers the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosts {
    /// Loopback names only: the SDK's guard against DNS rebinding, for a
    /// server on a desktop's 127.0.0.1.
    Loopback,
    /// Any: a server in a pod is reached by its pod IP or Service name.
    Any,
}

/// Serves the demo server over Streamable HTTP at `/mcp` on `listener`.
pub fn serve(listener: tokio::net::TcpListener, hosts: Hosts) -> tokio::task::JoinHandle<()> {
    let config = match hosts {
        Hosts::Loopback => StreamableHttpServerConfig::default(),
        Hosts::Any => StreamableHttpServerConfig::default().disable_allowed_hosts(),
    };
    let service = StreamableHttpService::new(
        || Ok(DemoServer),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(session_end_is_no_content));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("demo MCP server stopped: {e}");
        }
    })
}

/// A session ended with DELETE is answered 204 No Content. rmcp answers
/// 202 Accepted, which the transport's specification allows (it names no
/// success status), but the Python SDK takes only 200 or 204 and prints
/// "Session termination failed: 202" at every clean exit of its client.
async fn session_end_is_no_content(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let ending = request.method() == axum::http::Method::DELETE;
    let mut response = next.run(request).await;
    if ending && response.status() == axum::http::StatusCode::ACCEPTED {
        *response.status_mut() = axum::http::StatusCode::NO_CONTENT;
    }
    response
}
