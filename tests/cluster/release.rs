//! The chart's release over its life: `helm upgrade` to changed values rolls
//! the operator without losing a held call or its approval, and `helm
//! uninstall` deletes everything the chart made and keeps only what the
//! README says it keeps — the CRDs and every custom resource (the requests'
//! records among them). Both disturb the operator, so they run after every
//! other test, the uninstall last.

use crate::operator::{
    SERVER, as_operator, call, gated_server, operator, people_token, seed_request, token,
};
use airlock_operator::crd::ApprovalRequest;
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::issuer::{AUDIENCE, PEOPLE_AUDIENCE, TENANT};
use airlock_tests::node::Node;
use airlock_tests::paths::tool;
use airlock_tests::wait_for;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::Duration;

/// Every kind the chart's templates make.
const CHART_KINDS: &str = "deployments,services,serviceaccounts,configmaps,secrets,roles,\
rolebindings,clusterroles,clusterrolebindings,networkpolicies,poddisruptionbudgets,\
validatingadmissionpolicies,validatingadmissionpolicybindings,validatingwebhookconfigurations,\
mutatingwebhookconfigurations";

/// A call held while `helm upgrade` to changed values rolls every operator
/// replica is approved through the people's API of the new ones and
/// completes — on its first try when the hold outlasts the rollout, on a
/// retry (the approval kept) when it does not.
pub async fn an_upgrade_keeps_held_calls_and_approvals(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "release-upgrade";
    gated_server(node, ns, 40).await?;
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = people_token(&installed.issuer, "lea", &["leads"])?;
    let arguments = json!({"model": "fraud:v11", "environment": "prod"});
    let held = call(node, ns, &ada, "deploy_model", arguments.clone());
    let upgrade_and_approve = async {
        let id = installed
            .people
            .pending(&lea, &format!("{ns}/{SERVER}"), "deploy_model")
            .await?;
        let mut values = chart::values(
            TENANT,
            AUDIENCE,
            PEOPLE_AUDIENCE,
            &installed.issuer.jwks_url,
        );
        values["approvals"] = json!({"retention": "12h"});
        let before = operator_pods(node).await?;
        let started = std::time::Instant::now();
        chart::helm_install(node, &values)?;
        chart::operator_ready(node, Some(2)).await?;
        wait_for(
            "the old replicas to go",
            Duration::from_secs(120),
            || async {
                let now = operator_pods(node).await?;
                Ok(now.iter().all(|pod| !before.contains(pod)).then_some(()))
            },
        )
        .await?;
        eprintln!(
            "release: upgrade rolled {before:?} to {:?} in {:.1?}",
            operator_pods(node).await?,
            started.elapsed()
        );
        let decided = installed
            .people
            .decide(&lea, &id, "approve", "after the upgrade")
            .await?;
        anyhow::ensure!(decided.status().is_success(), "{}", decided.text().await?);
        Ok(id)
    };
    let (answer, id) = tokio::join!(held, upgrade_and_approve);
    let (answer, id) = (answer?, id?);
    let released = if answer["text"] == "deployed fraud:v11 to prod" {
        answer
    } else {
        eprintln!("release: the hold ended before the approval ({answer}); retrying");
        call(node, ns, &ada, "deploy_model", arguments).await?
    };
    anyhow::ensure!(
        released["isError"] == false && released["text"] == "deployed fraud:v11 to prod",
        "{released}"
    );
    let record = Api::<ApprovalRequest>::namespaced(node.client(ADMIN).await?, ns)
        .get(&id)
        .await?;
    let status = record.status.unwrap_or_default();
    anyhow::ensure!(
        status
            .decisions
            .iter()
            .any(|d| d.by.user.starts_with("lea")),
        "the approval is not in the record: {status:?}"
    );
    let args = chart::operator_args(node).await?;
    anyhow::ensure!(args.iter().any(|a| a == "--retention=12h"), "{args:?}");
    Ok(())
}

/// The names of the operator's pods now.
async fn operator_pods(node: &Node) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, chart::SYSTEM_NAMESPACE);
    Ok(pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-operator"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

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
