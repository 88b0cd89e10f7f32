//! `examples/` as a platform team's GitOps repository meets a real cluster:
//! the set in `examples/gitops/` applies whole and comes up, and the Argo
//! CD health checks in `examples/argocd/` read each state of real objects
//! of the three kinds as the API server serves them.

use crate::operator::{as_operator, operator, seed_request};
use airlock_operator::crd::{ApprovalPolicy, ApprovalRequest, McpServer};
use airlock_tests::argocd::health;
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::paths::repo_root;
use airlock_tests::wait_for;
use kube::api::{Api, PostParams};
use serde::Serialize;
use std::time::Duration;

/// The namespace `examples/gitops/` puts everything in.
const NAMESPACE: &str = "ml";

fn example(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(
        repo_root().join("examples/gitops").join(path),
    )?)
}

/// Argo CD's health of `object` as the API server serves it now.
fn health_of(kind: &str, object: &impl Serialize) -> anyhow::Result<(String, String)> {
    health(kind, &serde_json::to_value(object)?)
}

/// Waits until Argo CD would call `name` of `kind` `status`; returns its message.
async fn until_health<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    status: &str,
) -> anyhow::Result<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    wait_for(
        &format!("{kind} {name} to be {status} for Argo CD"),
        Duration::from_secs(120),
        || async move {
            let (seen, message) = health_of(kind, &api.get(name).await?)?;
            Ok((seen == status).then_some(message))
        },
    )
    .await
}

pub async fn the_gitops_examples_apply_and_argocd_reads_their_health(
    node: &Node,
) -> anyhow::Result<()> {
    operator(node).await?;
    let admin = node.client(ADMIN).await?;
    node.apply(&example("namespace.yaml")?)?;
    node.apply(&example("mcp-server.yaml")?)?;
    let servers: Api<McpServer> = Api::namespaced(admin.clone(), NAMESPACE);
    // Just applied, before the operator has reported anything.
    let (fresh, _) = health_of("McpServer", &servers.get("model-ops").await?)?;
    anyhow::ensure!(
        fresh == "Progressing" || fresh == "Healthy",
        "a new McpServer is {fresh}"
    );
    node.apply(&example("approvers.yaml")?)?;
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("examples/gitops/policies"))? {
        let path = entry?.path();
        node.apply(&std::fs::read_to_string(&path)?)?;
        policies.push(
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string(),
        );
    }
    chart::ready_server(node, NAMESPACE, "model-ops").await?;
    let ready = until_health(&servers, "McpServer", "model-ops", "Healthy").await?;
    anyhow::ensure!(ready.contains("available behind the gateway"), "{ready}");

    let policy_api: Api<ApprovalPolicy> = Api::namespaced(admin.clone(), NAMESPACE);
    anyhow::ensure!(policies.len() == 4, "{policies:?}");
    for policy in &policies {
        until_health(&policy_api, "ApprovalPolicy", policy, "Healthy").await?;
    }
    // Valid for the schema, refused by the operator: Degraded, naming the field.
    node.apply(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalPolicy
metadata: {name: twice, namespace: ml}
spec:
  servers: {names: [model-ops]}
  defaultAction: Allow
  rules:
  - {name: same, match: {tools: [get_status]}, action: Allow}
  - {name: same, match: {tools: [read_secret]}, action: Deny}
"#,
    )?;
    let refused = until_health(&policy_api, "ApprovalPolicy", "twice", "Degraded").await?;
    anyhow::ensure!(
        refused.contains("spec.rules[1].name"),
        "the refusal does not name the field: {refused}"
    );

    // Requests in each phase, written as the operator writes them.
    let requests = as_operator(node, NAMESPACE).await?;
    let reader: Api<ApprovalRequest> = Api::namespaced(admin, NAMESPACE);
    for (name, phase, status) in [
        ("argo-pending", None, "Suspended"),
        ("argo-approved", Some("Approved"), "Healthy"),
        ("argo-denied", Some("Denied"), "Degraded"),
        ("argo-expired", Some("Expired"), "Degraded"),
    ] {
        seed_request(&requests, NAMESPACE, name, "2999-01-01T00:00:00Z").await?;
        if let Some(phase) = phase {
            // The operator may update the status, not patch it.
            let mut request = serde_json::to_value(requests.get(name).await?)?;
            request["status"]["phase"] = phase.into();
            let request: ApprovalRequest = serde_json::from_value(request)?;
            requests
                .replace_status(name, &PostParams::default(), &request)
                .await?;
        }
        let (seen, message) = health_of("ApprovalRequest", &reader.get(name).await?)?;
        anyhow::ensure!(
            seen == status,
            "{name} ({phase:?}) is {seen} for Argo CD: {message}"
        );
        anyhow::ensure!(message.contains("ada asks to deploy"), "{message}");
    }
    Ok(())
}
