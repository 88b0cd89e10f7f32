//! A gateway as the filter tests and benchmarks use it: the development
//! issuer, the real approval service serving a policy, and Envoy running the
//! filter in front of an upstream MCP server.

use crate::approvals::{Approvals, CREDENTIAL};
use crate::envoy::{Envoy, EnvoyOptions};
use crate::issuer::{AUDIENCE, Issuer, TENANT};
use crate::paths::filter_wasm;
use crate::people::People;
use crate::wait_for;
use airlock_operator::dev_issuer::TokenRequest;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// The approvers of held calls in [`policies`].
pub const LEADS: &str = "leads";
pub const ENGINEERS: &str = "9a1d1f4e-0000-4000-8000-000000000001";

/// The policy of these tests: handshake for all, status for engineers,
/// deploying to production needs approval, secrets never.
pub fn policies() -> Value {
    json!([{
        "name": "test/model-ops",
        "version": "1",
        "spec": {
            "defaultAction": "Deny",
            "rules": [
                {"name": "handshake", "match": {"methods": ["initialize", "ping", "notifications/*", "tools/list"]}, "action": "Allow"},
                {"name": "read-status", "match": {"tools": ["get_status", "echo"]}, "principals": {"groups": [ENGINEERS]}, "action": "Allow"},
                {"name": "deploy-to-prod", "match": {"tools": ["deploy_model"], "arguments": [{"pointer": "/environment", "in": ["prod"]}]},
                 "action": "RequireApproval", "approval": {"approvers": {"groups": ["leads"]}}},
                {"name": "no-secrets", "match": {"tools": ["read_secret"]}, "action": "Deny"}
            ]
        }
    }])
}

pub struct Gateway {
    pub envoy: Envoy,
    pub issuer: Issuer,
    pub approvals: Approvals,
}

impl Gateway {
    /// A gateway in front of `upstream_port`, ready for calls.
    pub async fn start(upstream_port: u16) -> anyhow::Result<Gateway> {
        Gateway::start_with(upstream_port, json!({})).await
    }

    /// A gateway whose filter configuration also carries `extra`, ready for calls.
    pub async fn start_with(upstream_port: u16, extra: Value) -> anyhow::Result<Gateway> {
        let gateway = Gateway::launch(upstream_port, Some(policies()), extra).await?;
        gateway.wait_until_ready().await?;
        Ok(gateway)
    }

    /// Waits until the filter has loaded signing keys and policy: until then
    /// it answers 503. The probe is a call [`policies`] denies, so under them
    /// it never reaches the upstream.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let token = self.token(&[ENGINEERS])?;
        let http = reqwest::Client::new();
        wait_for(
            "the gateway to load signing keys and policy",
            Duration::from_secs(30),
            || {
                let request = self
                    .post(&http, &token, &call(0, "read_secret", json!({})))
                    .send();
                async move {
                    Ok(match request.await {
                        Ok(r) if r.status() != 503 => Some(()),
                        _ => None,
                    })
                }
            },
        )
        .await
    }

    /// Starts the issuer, the approval service serving `policies` (or down
    /// from the start, for `None`), and Envoy with the filter, without waiting
    /// for the filter to load anything.
    pub async fn launch(
        upstream_port: u16,
        policies: Option<Value>,
        extra: Value,
    ) -> anyhow::Result<Gateway> {
        Gateway::launch_on(Sidecar::standard()?, upstream_port, policies, extra).await
    }

    /// [`Gateway::launch`] with another filter module or worker count.
    pub async fn launch_on(
        sidecar: Sidecar,
        upstream_port: u16,
        policies: Option<Value>,
        extra: Value,
    ) -> anyhow::Result<Gateway> {
        let issuer = Issuer::start().await?;
        let served = policies.clone().unwrap_or_else(|| json!([]));
        let mut approvals =
            Approvals::start(&issuer, "test/mcp", serde_json::from_value(served)?).await?;
        if policies.is_none() {
            approvals.stop();
        }
        let config = filter_config(&issuer.jwks_path, extra);
        let mut options = EnvoyOptions::with_filter(upstream_port, sidecar.module, config);
        options.concurrency = sidecar.workers;
        options.memory_pressure_file = sidecar.memory_pressure_file;
        options.clusters.push(("jwks".into(), issuer.port));
        let approvals_port = sidecar.approvals_proxy.unwrap_or(approvals.port);
        options.clusters.push(("approvals".into(), approvals_port));
        let envoy = Envoy::start(options).await?;
        Ok(Gateway {
            envoy,
            issuer,
            approvals,
        })
    }

    pub fn request(&self, groups: &[&str]) -> TokenRequest {
        caller(groups)
    }

    pub fn token(&self, groups: &[&str]) -> anyhow::Result<String> {
        Ok(self.issuer.issuer.mint(&self.request(groups))?)
    }

    pub fn url(&self) -> String {
        format!("{}/mcp", self.envoy.url)
    }

    /// Initializes a 2025-06-18 session as the holder of `token`; returns its id.
    pub async fn open_session(
        &self,
        http: &reqwest::Client,
        token: &str,
    ) -> anyhow::Result<String> {
        let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let opened = self.post(http, token, &initialize).send().await?;
        anyhow::ensure!(opened.status() == 200, "initialize: {}", opened.status());
        opened
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no session id"))
    }

    pub fn post(
        &self,
        http: &reqwest::Client,
        token: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        http.post(self.url())
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string())
    }
}

pub fn ping(id: u32) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
}

pub fn call(id: u32, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

/// The Envoy that runs the filter: which module, how many workers, where
/// it reads its memory pressure (if anywhere), and through which proxy it
/// reaches the approval service (if any: a [`crate::lossy::LossyProxy`]
/// the test points at the service).
pub struct Sidecar {
    pub module: PathBuf,
    pub workers: u32,
    pub memory_pressure_file: Option<PathBuf>,
    pub approvals_proxy: Option<u16>,
}

impl Sidecar {
    /// The module `make wasm` builds, on two workers so that cross-worker
    /// behaviour is exercised.
    pub fn standard() -> anyhow::Result<Sidecar> {
        Ok(Sidecar {
            module: filter_wasm()?,
            workers: 2,
            memory_pressure_file: None,
            approvals_proxy: None,
        })
    }
}

/// Ada's token request for the gateway's audience, in `groups`.
pub fn caller(groups: &[&str]) -> TokenRequest {
    let mut request = TokenRequest::user("oid-ada", "ada@contoso.com", AUDIENCE);
    request.groups = groups.iter().map(|g| g.to_string()).collect();
    request
}

/// The filter configuration of these gateways: the test tenant and audience,
/// keys from the issuer at `jwks_path`, legacy SSE on, small limits; `extra`
/// adds or replaces fields.
pub fn filter_config(jwks_path: &str, extra: Value) -> Value {
    let mut config = json!({
        "server": "test/mcp",
        "auth": {"tenants": [TENANT], "audiences": [AUDIENCE]},
        "jwks": [{"tenant": TENANT, "cluster": "jwks", "path": jwks_path, "authority": "issuer"}],
        "legacySse": {"stream": "/sse", "messages": "/messages/"},
        "maxBodyBytes": 65536,
        "maxHoldSeconds": 45,
        "approvals": {"cluster": "approvals", "authority": "approvals", "credential": CREDENTIAL},
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config
}

/// Approvals, as people see them through the approval service.
impl Gateway {
    /// A token for `oid` in `groups`.
    pub fn person(&self, oid: &str, groups: &[&str]) -> anyhow::Result<String> {
        let mut request = self.request(groups);
        request.oid = oid.into();
        request.username = format!("{oid}@contoso.com");
        Ok(self.issuer.issuer.mint(&request)?)
    }

    /// Waits until `count` approval requests are visible to `token`; returns the newest.
    pub async fn pending(&self, token: &str, count: usize) -> anyhow::Result<Value> {
        let all = self.visible(token, count).await?;
        all.last()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no approval request"))
    }

    /// Waits until `count` approval requests are visible to `token`; returns them all.
    pub async fn visible(&self, token: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        self.people().visible(token, count).await
    }

    pub async fn decide(
        &self,
        token: &str,
        id: &str,
        verdict: &str,
        reason: &str,
    ) -> anyhow::Result<reqwest::Response> {
        self.people().decide(token, id, verdict, reason).await
    }

    /// The approval service's people's API.
    pub fn people(&self) -> People {
        People::new(&self.approvals.url)
    }
}
