//! Starts the harness's node and keeps it until Ctrl-C or SIGTERM, then
//! tears it down and reports whether the host is as before. Prints the admin
//! kubeconfig's path once the node is Ready.
//!
//! With `--demo` (`make demo-cluster`) it also installs the chart, the demo
//! McpServer (the rmcp demo server) and `examples/policy.yaml`, trusting the
//! development issuer `airlock token` signs with, and prints what to try.

use airlock_operator::dev_issuer::DevIssuer;
use airlock_operator::local::{LOCAL_AUDIENCE, LOCAL_TENANT, StateDir};
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::node::host::NODE_IP;
use airlock_tests::node::images::MCP_DEMO;
use airlock_tests::paths::repo_root;
use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use std::process::ExitCode;
use std::sync::Arc;

const DEMO_NAMESPACE: &str = "demo";
const DEMO_SERVER: &str = "model-server";
/// The people's API's own audience: lea's token for deciding is not one
/// the MCP server accepts.
const DEMO_PEOPLE_AUDIENCE: &str = "api://airlock-demo-approvals";

#[tokio::main]
async fn main() -> ExitCode {
    let demo = std::env::args().any(|a| a == "--demo");
    let mut node = match Node::start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("airlock-test-node: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let started = if demo {
        demo_cluster(&node).await.map(Some)
    } else {
        println!("ready: KUBECONFIG={}", node.kubeconfig(ADMIN).display());
        Ok(None)
    };
    let outcome = match started {
        Ok(_issuer) => {
            // The issuer task lives until the node stops.
            if let Err(e) = airlock_operator::shutdown::requested().await {
                eprintln!("airlock-test-node: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("airlock-test-node: {e:#}");
            ExitCode::FAILURE
        }
    };
    match node.stop() {
        Ok(left) if left.is_empty() => outcome,
        Ok(left) => {
            eprintln!(
                "airlock-test-node: host state not restored:\n  {}",
                left.join("\n  ")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("airlock-test-node: cleanup failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The operator path of `make demo`: returns the issuer's serving task.
async fn demo_cluster(node: &Node) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let state = StateDir::new(repo_root().join(".airlock"));
    // The key `airlock token` signs with, so its tokens are trusted here too.
    let issuer = Arc::new(DevIssuer::persistent(LOCAL_TENANT, &state.issuer_key())?);
    let (address, task) = issuer.serve(tokio::net::TcpListener::bind((NODE_IP, 0)).await?)?;
    let jwks = format!("http://{address}/{LOCAL_TENANT}/discovery/v2.0/keys");
    let installed = chart::install(
        node,
        LOCAL_TENANT,
        LOCAL_AUDIENCE,
        DEMO_PEOPLE_AUDIENCE,
        &jwks,
    )
    .await?;

    node.namespace(DEMO_NAMESPACE).await?;
    let policy_file = repo_root().join("examples/policy.yaml");
    let mut policy: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&policy_file)
            .with_context(|| format!("reading {}", policy_file.display()))?,
    )?;
    policy["metadata"]["namespace"] = DEMO_NAMESPACE.into();
    node.apply(&serde_yaml::to_string(&policy)?)?;
    // Lea approves there: the API server's RBAC says so for the people's
    // API as for kubectl.
    node.apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: approvers, namespace: {DEMO_NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: airlock-approver}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: lea@airlock.local}}]
"#
    ))?;
    node.apply(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: McpServer
metadata: {{name: {DEMO_SERVER}, namespace: {DEMO_NAMESPACE}}}
spec:
  upstreamPort: 8080
  auth: {{tenants: ["{LOCAL_TENANT}"], audiences: ["{LOCAL_AUDIENCE}"]}}
  template:
    spec:
      containers:
      - name: mcp
        image: {MCP_DEMO}
        imagePullPolicy: IfNotPresent
"#
    ))?;
    chart::ready_server(node, DEMO_NAMESPACE, DEMO_SERVER).await?;
    let service = Api::<Service>::namespaced(node.client(ADMIN).await?, DEMO_NAMESPACE)
        .get(DEMO_SERVER)
        .await?;
    let gateway_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the demo Service has no ClusterIP")?;

    let kubeconfig = state.root().join("cluster/kubeconfig");
    std::fs::create_dir_all(state.root().join("cluster"))?;
    std::fs::copy(node.kubeconfig(ADMIN), &kubeconfig)?;
    let kubectl = repo_root().join(".tools/bin/kubectl");
    println!(
        r#"
The operator path is running: a Kubernetes node on this machine, the chart
installed in {system}, McpServer {DEMO_NAMESPACE}/{DEMO_SERVER} behind its gateway, and
examples/policy.yaml applied in {DEMO_NAMESPACE}. Ctrl-C tears it all down.

  export KUBECONFIG={kubeconfig}
  alias kubectl={kubectl} airlock=target/debug/airlock
  kubectl get mcpservers,approvalpolicies -n {DEMO_NAMESPACE}

  ADA=$(airlock token --user ada --groups engineers)
  LEA=$(airlock token --user lea --groups leads --audience {DEMO_PEOPLE_AUDIENCE})
  MCP=".tools/venv/bin/python tests/python/mcp_client.py --url http://{gateway_ip}/mcp"
  $MCP --token "$ADA" call get_status
  $MCP --token "$ADA" call read_secret '{{"name": "db"}}'        # denied
  $MCP --token "$ADA" call deploy_model '{{"model": "fraud:v7", "environment": "prod"}}'   # held...

  # while it is held, in another terminal:
  kubectl get approvalrequests -n {DEMO_NAMESPACE}
  airlock approvals --server {people} --token "$LEA" list
  airlock approvals --server {people} --token "$LEA" approve ar-… --reason "ship it"
"#,
        system = chart::SYSTEM_NAMESPACE,
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        people = installed.people_url,
    );
    Ok(task)
}
