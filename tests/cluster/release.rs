//! The chart's release at its end: `helm uninstall` deletes everything the
//! chart made and keeps only what the README says it keeps — the CRDs and
//! every custom resource (the requests' records among them). It takes the
//! operator away, so it runs after every other test.

use crate::operator::{as_operator, operator, seed_request};
use airlock_operator::crd::ApprovalRequest;
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::paths::tool;
use airlock_tests::wait_for;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use std::time::Duration;

/// Every kind the chart's templates make.
const CHART_KINDS: &str = "deployments,services,serviceaccounts,configmaps,secrets,roles,\
rolebindings,clusterroles,clusterrolebindings,networkpolicies,poddisruptionbudgets,\
validatingadmissionpolicies,validatingadmissionpolicybindings,validatingwebhookconfigurations";

pub async fn uninstalling_leaves_only_what_is_kept(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let namespace = "release-kept";
    node.namespace(namespace).await?;
    let requests = as_operator(node, namespace).await?;
    seed_request(&requests, namespace, "kept-record", "2999-01-01T00:00:00Z").await?;

    chart::helm_uninstall(node)?;

    let left = std::process::Command::new(tool("kubectl")?)
        .arg("--kubeconfig")
        .arg(node.kubeconfig(ADMIN))
        .args(["get", CHART_KINDS, "-A", "-o", "name", "-l"])
        .arg(format!("app.kubernetes.io/instance={}", chart::RELEASE))
        .output()?;
    anyhow::ensure!(
        left.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&left.stderr)
    );
    let left = String::from_utf8_lossy(&left.stdout);
    anyhow::ensure!(
        left.trim().is_empty(),
        "left behind by helm uninstall:\n{left}"
    );

    let admin = node.client(ADMIN).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), chart::SYSTEM_NAMESPACE);
    wait_for(
        "the operator's pods to go",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let listed = pods
                    .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-operator"))
                    .await?;
                Ok(listed.items.is_empty().then_some(()))
            }
        },
    )
    .await?;

    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for kept in [
        "mcpservers",
        "approvalpolicies",
        "approvalrequests",
        "revocations",
        "auditcheckpoints",
    ] {
        crds.get(&format!("{kept}.mcp.airlock.dev")).await?;
    }
    let record = Api::<ApprovalRequest>::namespaced(admin, namespace)
        .get("kept-record")
        .await?;
    anyhow::ensure!(record.spec.summary == "ada asks to deploy", "{record:?}");
    Ok(())
}
