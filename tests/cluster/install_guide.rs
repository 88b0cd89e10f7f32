//! `docs/install-aks.md`, section 4, as a platform team runs it — on the
//! harness's cluster, after the chart was uninstalled: its values file
//! with this cluster's own values in place of the guide's placeholders
//! (images, tenant, audiences; no Prometheus operator here, so no
//! monitoring objects), `examples/gitops/` with the tenant and audience
//! replaced as its comments say, and the guide's commands run by bash as
//! written. Then section 5's checks, and a held production deploy approved
//! by two leads with `kubectl airlock`.

use crate::approvers::Person;
use crate::operator::{call_server, client_pod, operator, token};
use airlock_operator::crd::{ApprovalPolicy, ApprovalRequest, McpServer, Phase};
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::docs::fenced_blocks;
use airlock_tests::issuer::{AUDIENCE, PEOPLE_AUDIENCE, TENANT};
use airlock_tests::node::Node;
use airlock_tests::paths::{repo_root, tool};
use airlock_tests::wait_for;
use anyhow::Context;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::Duration;

const GUIDE: &str = "docs/install-aks.md";
const SECTION: &str = "## 4. The chart";
/// Where `examples/gitops/` puts its server, and the guide's placeholders.
const NAMESPACE: &str = "ml";
const SERVER: &str = "model-ops";
const PLACEHOLDER_TENANT: &str = "11111111-2222-3333-4444-555555555555";
const PLACEHOLDER_AUDIENCE: &str = "api://model-ops-mcp";
const ENGINEERS: &str = "e0e0e0e0-0000-4000-8000-00000000000e";
const ML_LEADS: &str = "a1a1a1a1-0000-4000-8000-00000000000a";

/// `a` with `b`'s keys laid over it, objects merged key by key.
fn overlay(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a.as_object_mut(), b.as_object()) {
        (Some(a), Some(b)) => {
            for (key, value) in b {
                overlay(a.entry(key.clone()).or_insert(json!(null)), value);
            }
        }
        _ => *a = b.clone(),
    }
}

/// A copy of `from` (a directory tree) at `to`, with the guide's
/// placeholders replaced by this cluster's values.
fn copy_replacing(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_replacing(&entry.path(), &target)?;
        } else {
            let text = std::fs::read_to_string(entry.path())?;
            std::fs::write(
                target,
                text.replace(PLACEHOLDER_TENANT, TENANT)
                    .replace(PLACEHOLDER_AUDIENCE, AUDIENCE),
            )?;
        }
    }
    Ok(())
}

pub async fn the_install_guide_installs_the_chart_and_a_held_call_is_approved(
    node: &Node,
) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let root = repo_root();
    let guide = std::fs::read_to_string(root.join(GUIDE))?;
    let values_blocks = fenced_blocks(&guide, SECTION, "yaml")?;
    let commands = fenced_blocks(&guide, SECTION, "sh")?;
    anyhow::ensure!(
        values_blocks.len() == 1 && commands.len() == 1,
        "{GUIDE} {SECTION}: expected one values file and one block of commands"
    );

    let dir = tempfile::Builder::new()
        .prefix("install-guide-")
        .tempdir()?;
    std::os::unix::fs::symlink(root.join("charts"), dir.path().join("charts"))?;
    copy_replacing(
        &root.join("examples/gitops"),
        &dir.path().join("examples/gitops"),
    )?;
    let mut values: serde_json::Value = serde_yaml::from_str(&values_blocks[0])?;
    overlay(
        &mut values,
        &chart::values(
            TENANT,
            AUDIENCE,
            PEOPLE_AUDIENCE,
            &installed.issuer.jwks_url,
        ),
    );
    overlay(
        &mut values,
        &json!({"approvers": {"tenant": TENANT}, "monitoring": {
            "serviceMonitor": {"enabled": false}, "podMonitor": {"enabled": false},
            "prometheusRule": {"enabled": false}, "dashboard": {"enabled": false}}}),
    );
    std::fs::write(
        dir.path().join("values.yaml"),
        serde_yaml::to_string(&values)?,
    )?;

    let tools = tool("kubectl")?;
    let tools = tools.parent().context("no tools directory")?;
    let path = std::env::join_paths(std::iter::once(tools.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let helm_home = dir.path().join(".helm");
    let ran = std::process::Command::new("bash")
        .args(["-e", "-c", &commands[0]])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("KUBECONFIG", node.kubeconfig(ADMIN))
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .output()?;
    anyhow::ensure!(
        ran.status.success(),
        "the guide's commands failed:\n{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    chart::operator_ready(node, None).await?;

    // Section 5: the server Ready (for its edited spec), every policy Accepted.
    let servers: Api<McpServer> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
    wait_for("the server Ready for its spec", chart::STARTUP, || async {
        let server = servers.get(SERVER).await?;
        let status = server.status.unwrap_or_default();
        let ready = status.observed_generation == server.metadata.generation
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(ready.then_some(()))
    })
    .await
    .map_err(|e| e.context(chart::diagnostics(node, NAMESPACE)))?;
    // The guide's own policies, judged at their current generation (others
    // in the namespace are other tests').
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("examples/gitops/policies"))? {
        let policy: ApprovalPolicy =
            serde_yaml::from_str(&std::fs::read_to_string(entry?.path())?)?;
        names.push(policy.name_any());
    }
    let policies: Api<ApprovalPolicy> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
    wait_for(
        "the guide's policies Accepted",
        Duration::from_secs(60),
        || async {
            for name in &names {
                let policy = policies.get(name).await?;
                let generation = policy.metadata.generation;
                let accepted = policy.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Accepted"
                            && c.status == "True"
                            && c.observed_generation == generation
                    })
                });
                if !accepted {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let server = servers.get(SERVER).await?;
    anyhow::ensure!(
        server.spec.auth.tenants == [TENANT],
        "the guide's server kept its placeholder tenant"
    );

    // The pod of the server's earlier spec (another test's) gone for good.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
    wait_for(
        "one pod of the server, of its spec",
        chart::STARTUP,
        || async {
            let listed = pods
                .list(&ListParams::default().labels(&format!("mcp.airlock.dev/server={SERVER}")))
                .await?
                .items;
            Ok((listed.len() == 1).then_some(()))
        },
    )
    .await?;

    node.apply(&client_pod(NAMESPACE))?;
    node.ready_pod(NAMESPACE, "client").await?;
    held_deploy_approved_by_ml_leads(node, "fraud:v31").await
}

/// ivy's production deploy of `model` to the guide's server, held until two
/// ml-leads approve with `kubectl airlock`: the sidecar asks the service
/// and long-polls it, and the API server asks the operator's webhook.
pub(crate) async fn held_deploy_approved_by_ml_leads(
    node: &Node,
    model: &str,
) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    // Not ada: the approvers tests revoke her, cluster-wide.
    let ivy = token(&installed.issuer, "ivy", &[ENGINEERS])?;
    let held = call_server(
        node,
        NAMESPACE,
        SERVER,
        &ivy,
        "deploy_model",
        json!({"model": model, "environment": "prod"}),
    );
    let approve = async {
        let leads = [
            Person::new(node, "lea", &[ML_LEADS])?,
            Person::new(node, "max", &[ML_LEADS])?,
        ];
        let requests: Api<ApprovalRequest> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
        let name = wait_for("the held request", Duration::from_secs(60), || async {
            let listed = requests.list(&ListParams::default()).await?.items;
            Ok(listed
                .into_iter()
                .find(|r| {
                    // Ivy's, not one another test seeded here.
                    r.spec.requester.oid == "oid-ivy"
                        && r.spec.call.target.as_deref() == Some("deploy_model")
                        && r.status.as_ref().is_some_and(|s| s.phase == Phase::Pending)
                })
                .map(|r| r.name_any()))
        })
        .await?;
        for lead in &leads {
            lead.airlock(
                NAMESPACE,
                &["approve", &name, "--reason", "as the guide says"],
            )?
            .map_err(anyhow::Error::msg)?;
        }
        anyhow::Ok(())
    };
    let (answer, approved) = tokio::join!(held, approve);
    if let Err(e) = approved {
        anyhow::bail!("{e}; the call answered {answer:?}");
    }
    let answer = answer?;
    anyhow::ensure!(answer["isError"] == false, "{answer}");
    Ok(())
}
