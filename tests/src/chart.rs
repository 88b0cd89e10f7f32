//! The Helm chart, rendered with the pinned helm and installed on the node:
//! tests (and `make demo-cluster`) run exactly what a platform team would,
//! the operator's RBAC included.

use crate::cluster::ADMIN;
use crate::node::Node;
use crate::node::images::{ENVOY, OPERATOR};
use crate::paths::{repo_root, tool};
use crate::wait_for;
use airlock_operator::crd::{McpServer, McpServerStatus};
use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use std::process::Command;
use std::time::Duration;

/// Generous: images start, probes pass, the operator reconciles.
pub const STARTUP: Duration = Duration::from_secs(240);

/// `helm template` of `charts/airlock` into `namespace` with `values`
/// (CRDs included), as one multi-document YAML.
pub fn render(
    release: &str,
    namespace: &str,
    values: &serde_json::Value,
) -> anyhow::Result<String> {
    let output = helm(&["template", release, "--include-crds"], namespace, values)?;
    if !output.status.success() {
        bail!(
            "helm template: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The pinned helm running `command` on `charts/airlock` into `namespace`
/// with `values`, its state in a directory of its own.
pub fn helm(
    command: &[&str],
    namespace: &str,
    values: &serde_json::Value,
) -> anyhow::Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    let values_file = dir.path().join("values.json");
    std::fs::write(&values_file, serde_json::to_vec(values)?)?;
    pinned_helm(dir.path())?
        .args(command)
        .arg(repo_root().join("charts/airlock"))
        .args(["--namespace", namespace, "--values"])
        .arg(&values_file)
        .output()
        .context("running helm")
}

/// The pinned helm, its own state (cache, configuration) under `home`.
fn pinned_helm(home: &std::path::Path) -> anyhow::Result<Command> {
    let mut command = Command::new(tool("helm")?);
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    Ok(command)
}

/// The chart's release in the harness.
pub const RELEASE: &str = "airlock";

/// `helm upgrade --install` of the chart as [`RELEASE`] into
/// [`SYSTEM_NAMESPACE`] of `node`'s cluster with `values`, as a platform
/// team installs it.
pub fn helm_install(node: &Node, values: &serde_json::Value) -> anyhow::Result<()> {
    upgrade(node, &["--install"], values)
}

/// `helm upgrade --reuse-values` of [`RELEASE`]: `values` laid over the
/// release's own.
pub fn helm_upgrade_reusing_values(node: &Node, values: &serde_json::Value) -> anyhow::Result<()> {
    upgrade(node, &["--reuse-values"], values)
}

fn upgrade(node: &Node, flags: &[&str], values: &serde_json::Value) -> anyhow::Result<()> {
    let kubeconfig = node.kubeconfig(ADMIN);
    let kubeconfig = kubeconfig
        .to_str()
        .context("a kubeconfig path that is not UTF-8")?;
    let mut command = vec!["upgrade", RELEASE, "--kubeconfig", kubeconfig];
    command.extend_from_slice(flags);
    let out = helm(&command, SYSTEM_NAMESPACE, values)?;
    if !out.status.success() {
        bail!(
            "helm upgrade {}: {}",
            flags.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `helm uninstall` of [`RELEASE`], waiting until what it deletes is gone.
pub fn helm_uninstall(node: &Node) -> anyhow::Result<String> {
    let home = tempfile::tempdir()?;
    let out = pinned_helm(home.path())?
        .args([
            "uninstall",
            RELEASE,
            "--wait",
            "--namespace",
            SYSTEM_NAMESPACE,
            "--kubeconfig",
        ])
        .arg(node.kubeconfig(ADMIN))
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The notification channel the harness's chart allows (its Secret is a
/// test's to create).
pub const NOTIFY_CHANNEL: &str = "test-leads";

/// Where the chart installs the operator in the harness.
pub const SYSTEM_NAMESPACE: &str = "airlock-system";

/// The operator as installed from the chart.
pub struct Installed {
    /// The people's API (its Service's ClusterIP, which the host reaches).
    pub people_url: String,
}

/// The harness's values: its images, trusting `tenant`'s tokens for
/// `audience` from callers and for `people_audience` at the people's API,
/// with that tenant's keys at `jwks_url`.
pub fn values(
    tenant: &str,
    audience: &str,
    people_audience: &str,
    jwks_url: &str,
) -> serde_json::Value {
    serde_json::json!({
        "image": {"operator": OPERATOR, "envoy": ENVOY},
        "auth": {"tenants": [tenant], "audiences": [audience], "jwksUrls": {tenant: jwks_url}},
        "approvers": {"audiences": [people_audience]},
        "notifications": {"channels": [NOTIFY_CHANNEL]},
    })
}

/// Installs the chart on `node` trusting `tenant`'s tokens for `audience`
/// from callers and for `people_audience` at the people's API, with that
/// tenant's keys at `jwks_url`, and waits until the operator is available.
pub async fn install(
    node: &Node,
    tenant: &str,
    audience: &str,
    people_audience: &str,
    jwks_url: &str,
) -> anyhow::Result<Installed> {
    node.namespace(SYSTEM_NAMESPACE).await?;
    helm_install(node, &values(tenant, audience, people_audience, jwks_url))?;
    operator_ready(node, None).await?;
    let admin = node.client(ADMIN).await?;
    let people = Api::<Service>::namespaced(admin, SYSTEM_NAMESPACE)
        .get("airlock-approvals")
        .await?;
    let ip = people
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the people's Service has no ClusterIP")?;
    Ok(Installed {
        people_url: format!("http://{ip}:8080"),
    })
}

/// Waits until the operator's Deployment has a ready replica, or (with
/// `replicas`) exactly that many replicas, all ready and all of its current
/// spec (a rollout done).
pub async fn operator_ready(node: &Node, replicas: Option<i32>) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE);
    let ready = wait_for("the operator's replicas to be ready", STARTUP, || {
        let deployments = deployments.clone();
        async move {
            let deployment = deployments.get("airlock-operator").await?;
            let status = deployment.status.unwrap_or_default();
            let ready = status.ready_replicas.unwrap_or(0);
            let done = match replicas {
                None => ready >= 1,
                Some(wanted) => {
                    ready >= wanted
                        && status.replicas.unwrap_or(0) == wanted
                        && status.updated_replicas.unwrap_or(0) == wanted
                        && status.observed_generation >= deployment.metadata.generation
                }
            };
            Ok(done.then_some(()))
        }
    })
    .await;
    ready.map_err(|e| e.context(diagnostics(node, SYSTEM_NAMESPACE)))
}

/// `kubectl scale` of the operator's Deployment to `replicas` (not waiting).
pub fn scale_operator(node: &Node, replicas: i32) -> anyhow::Result<()> {
    let out = node.kubectl(
        ADMIN,
        &[
            "scale",
            "deployment/airlock-operator",
            "-n",
            SYSTEM_NAMESPACE,
            "--replicas",
            &replicas.to_string(),
        ],
    )?;
    if !out.status.success() {
        bail!(
            "kubectl scale to {replicas}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The arguments of the operator container as the Deployment now has them.
pub async fn operator_args(node: &Node) -> anyhow::Result<Vec<String>> {
    let deployment = Api::<Deployment>::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE)
        .get("airlock-operator")
        .await?;
    Ok(deployment
        .spec
        .template
        .spec
        .and_then(|s| s.containers.into_iter().find(|c| c.name == "operator"))
        .and_then(|c| c.args)
        .unwrap_or_default())
}

/// Waits until McpServer `namespace/name` is Ready; returns its status.
pub async fn ready_server(
    node: &Node,
    namespace: &str,
    name: &str,
) -> anyhow::Result<McpServerStatus> {
    let servers: Api<McpServer> = Api::namespaced(node.client(ADMIN).await?, namespace);
    let ready = wait_for(
        &format!("McpServer {namespace}/{name} to be Ready"),
        STARTUP,
        || {
            let servers = servers.clone();
            async move {
                let status = servers.get(name).await?.status.unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                Ok(ready.then_some(status))
            }
        },
    )
    .await;
    ready.map_err(|e| e.context(diagnostics(node, namespace)))
}

/// The pods and warnings of `namespace` and the operator's log, for failure messages.
pub fn diagnostics(node: &Node, namespace: &str) -> String {
    let show = |args: &[&str]| {
        node.kubectl(ADMIN, args)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    format!(
        "{}\nwarnings:\n{}\noperator log:\n{}",
        show(&["describe", "pods", "-n", namespace]),
        show(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "type=Warning"
        ]),
        show(&[
            "logs",
            "-n",
            SYSTEM_NAMESPACE,
            "deployment/airlock-operator",
            "--tail=40"
        ])
    )
}
