//! The operator on the real node, installed from the rendered chart: an
//! McpServer and an ApprovalPolicy applied with kubectl become a gated MCP
//! server that the official Python SDK client reaches through its Service by
//! DNS name, with development-issuer tokens.

use airlock_operator::crd::McpServer;
use airlock_operator::dev_issuer::TokenRequest;
use airlock_tests::cluster::ADMIN;
use airlock_tests::issuer::{AUDIENCE, Issuer, TENANT};
use airlock_tests::node::Node;
use airlock_tests::node::host::NODE_IP;
use airlock_tests::node::images::{ENVOY, MCP_PYTHON, OPERATOR};
use airlock_tests::wait_for;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::{Value, json};
use std::time::Duration;

const SYSTEM: &str = "airlock-system";
const TEAM: &str = "team-ml";
const SERVER: &str = "models";
const LONG: Duration = Duration::from_secs(240);

/// The operator from the chart, Ready; the issuer its tokens come from.
async fn install_operator(node: &Node) -> anyhow::Result<Issuer> {
    let issuer = Issuer::start_on(NODE_IP).await?;
    node.namespace(SYSTEM).await?;
    let values = json!({
        "image": {"operator": OPERATOR, "envoy": ENVOY},
        "auth": {
            "tenants": [TENANT],
            "audiences": [AUDIENCE],
            "jwksUrls": {TENANT: issuer.jwks_url},
        },
    });
    node.apply(&airlock_tests::chart::render("airlock", SYSTEM, &values)?)?;
    let deployments: Api<Deployment> = Api::namespaced(node.client(ADMIN).await?, SYSTEM);
    let waited = wait_for("the operator to be available", LONG, || {
        let deployments = deployments.clone();
        async move {
            let deployment = deployments.get("airlock-operator").await?;
            let status = deployment.status.unwrap_or_default();
            Ok((status.ready_replicas.unwrap_or(0) >= 1).then_some(()))
        }
    })
    .await;
    if let Err(e) = waited {
        let logs = node.kubectl(
            ADMIN,
            &[
                "logs",
                "-n",
                SYSTEM,
                "deployment/airlock-operator",
                "--tail=40",
            ],
        )?;
        let pods = node.kubectl(ADMIN, &["describe", "pods", "-n", SYSTEM])?;
        return Err(e.context(format!(
            "{}\n{}",
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&logs.stdout)
        )));
    }
    Ok(issuer)
}

fn token(issuer: &Issuer, user: &str, groups: &[&str]) -> anyhow::Result<String> {
    let mut request = TokenRequest::user(
        &format!("oid-{user}"),
        &format!("{user}@contoso.com"),
        AUDIENCE,
    );
    request.groups = groups.iter().map(|g| g.to_string()).collect();
    Ok(issuer.issuer.mint(&request)?)
}

/// Runs the Python SDK client in the `client` pod against the server's
/// Service by DNS name.
fn call(node: &Node, token: &str, tool: &str, arguments: Value) -> anyhow::Result<Value> {
    let url = format!("http://{SERVER}.{TEAM}.svc.cluster.local/mcp");
    let arguments = arguments.to_string();
    let out = node.exec(
        TEAM,
        "client",
        "client",
        &[
            "python3",
            "/app/mcp_client.py",
            "--url",
            &url,
            "--token",
            token,
            "call",
            tool,
            &arguments,
        ],
    )?;
    Ok(serde_json::from_str(out.trim())?)
}

pub async fn an_applied_server_is_gated_by_an_applied_policy(node: &Node) -> anyhow::Result<()> {
    let issuer = install_operator(node).await?;
    node.namespace(TEAM).await?;
    node.apply(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalPolicy
metadata: {{name: models, namespace: {TEAM}}}
spec:
  servers: {{matchLabels: {{team: ml}}}}
  defaultAction: Deny
  rules:
  - name: handshake
    match: {{methods: ["initialize", "ping", "notifications/*", "tools/list"]}}
    action: Allow
  - name: read-status
    match: {{tools: ["get_status"]}}
    action: Allow
---
apiVersion: mcp.airlock.dev/v1alpha1
kind: McpServer
metadata: {{name: {SERVER}, namespace: {TEAM}, labels: {{team: ml}}}}
spec:
  upstreamPort: 8080
  auth: {{tenants: ["{TENANT}"], audiences: ["{AUDIENCE}"]}}
  template:
    spec:
      containers:
      - name: mcp
        image: {MCP_PYTHON}
        imagePullPolicy: IfNotPresent
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {TEAM}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {MCP_PYTHON}
    imagePullPolicy: IfNotPresent
    command: ["/usr/local/bin/python3", "-c", "import time; time.sleep(10**6)"]
"#
    ))?;
    let servers: Api<McpServer> = Api::namespaced(node.client(ADMIN).await?, TEAM);
    let ready = wait_for("the McpServer to be Ready", LONG, || {
        let servers = servers.clone();
        async move {
            let server = servers.get(SERVER).await?;
            let status = server.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(status))
        }
    })
    .await;
    let status = match ready {
        Ok(status) => status,
        Err(e) => {
            let pods = node.kubectl(ADMIN, &["describe", "pods", "-n", TEAM])?;
            let logs = node.kubectl(
                ADMIN,
                &[
                    "logs",
                    "-n",
                    SYSTEM,
                    "deployment/airlock-operator",
                    "--tail=40",
                ],
            )?;
            return Err(e.context(format!(
                "{}\n{}",
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&logs.stdout)
            )));
        }
    };
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://{SERVER}.{TEAM}.svc/mcp").as_str())
    );
    assert_eq!(status.policies.len(), 1, "{status:?}");
    node.ready_pod(TEAM, "client").await?;

    let ada = token(&issuer, "ada", &["engineers"])?;
    let allowed = call(node, &ada, "get_status", json!({}))?;
    assert_eq!(allowed["isError"], false, "{allowed}");
    assert_eq!(allowed["text"], "ok");
    let denied = call(node, &ada, "echo", json!({"message": "hi"}))?;
    assert_eq!(denied["isError"], true, "{denied}");
    Ok(())
}
