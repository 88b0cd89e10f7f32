//! The operator's CA rotated on the real node, asked for the way a platform
//! team would after a suspected leak (`kubectl annotate secret airlock-ca
//! mcp.airlock.dev/rotate=…`), with a short overlap: the running sidecar's
//! ConfigMap file trusts both CAs before the new one signs, held calls are
//! approved after each step, the API server reaches the webhooks (a
//! selected pod is injected, dry-run) and the old CA is forgotten — with
//! no pod restarted.

use crate::operator::{SERVER, gated_server, held_call_approved, operator};
use airlock_operator::tls::CA_SECRET;
use airlock_operator::tls::rotation::ROTATE;
use airlock_tests::chart::{self, SYSTEM_NAMESPACE};
use airlock_tests::cluster::ADMIN;
use airlock_tests::issuer::{AUDIENCE, PEOPLE_AUDIENCE, TENANT};
use airlock_tests::node::Node;
use airlock_tests::wait_for;
use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;

const NAMESPACE: &str = "ca-rotation";
/// Each step's wait: kubelet syncs ConfigMap volumes every 10 s on the node.
const OVERLAP: &str = "30s";
const STEP: Duration = Duration::from_secs(120);

fn certificates(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

async fn ca_secret(node: &Node) -> anyhow::Result<Secret> {
    Ok(
        Api::<Secret>::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE)
            .get(CA_SECRET)
            .await?,
    )
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// The CA bundle the running gateway pod's Envoy reads.
async fn sidecar_trust(node: &Node) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
    let pod = pods
        .list(&ListParams::default().labels(&format!("mcp.airlock.dev/server={SERVER}")))
        .await?
        .items
        .into_iter()
        .next()
        .context("no gateway pod")?;
    let uid = pod.uid().context("no uid")?;
    let file = node
        .config_map_volume(&uid, "airlock-gateway-config")
        .join("approvals-ca.crt");
    std::fs::read_to_string(&file).with_context(|| file.display().to_string())
}

/// The API server calls the injection webhook: a selected pod, created
/// dry-run, comes back with the sidecar.
fn injected_dry_run(node: &Node) -> anyhow::Result<()> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "selected", "namespace": NAMESPACE, "labels": {"app": "selected"}},
        "spec": {"containers": [{"name": "mcp", "image": "example/selected:1"}]},
    });
    let path = std::env::temp_dir().join(format!("rotation-{}.json", std::process::id()));
    std::fs::write(&path, pod.to_string())?;
    let out = node.kubectl(
        ADMIN,
        &[
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            &path.display().to_string(),
        ],
    )?;
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(
        created["spec"]["initContainers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "airlock-gateway")),
        "not injected: {created}"
    );
    Ok(())
}

pub async fn the_operators_ca_rotates_with_no_pod_restarted(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let mut values = chart::values(
        TENANT,
        AUDIENCE,
        PEOPLE_AUDIENCE,
        &installed.issuer.jwks_url,
    );
    values["tls"] = json!({"rotationOverlap": OVERLAP});
    chart::helm_install(node, &values)?;
    chart::operator_ready(node, Some(2)).await?;
    gated_server(node, NAMESPACE, 40).await?;
    node.apply(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: McpServer
metadata: {{name: selected, namespace: {NAMESPACE}}}
spec:
  upstreamPort: 8080
  auth: {{tenants: ["{TENANT}"], audiences: ["{AUDIENCE}"]}}
  selector: {{matchLabels: {{app: selected}}}}
"#
    ))?;
    wait_for("the selected server's webhook", STEP, || async {
        Ok(injected_dry_run(node).is_ok().then_some(()))
    })
    .await?;
    let gateway_restarts = || async {
        let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
        let pods = pods.list(&ListParams::default()).await?.items;
        anyhow::Ok(
            pods.iter()
                .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
                .collect::<Vec<_>>(),
        )
    };
    let pods_before = gateway_restarts().await?;
    let old = ca_secret(node).await?;
    let old_ca = field(&old, "ca.crt").context("no ca.crt")?;
    assert_eq!(certificates(&sidecar_trust(node).await?), 1);

    let started = std::time::Instant::now();
    Api::<Secret>::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE)
        .patch(
            CA_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE: "suspected leak"}}})),
        )
        .await?;

    // Begin: the running sidecar trusts both before the new CA signs.
    wait_for("the sidecar to trust both CAs", STEP, || async {
        let secret = ca_secret(node).await?;
        let signing = field(&secret, "ca.crt").unwrap_or_default();
        let trusted = sidecar_trust(node).await?;
        anyhow::ensure!(
            signing == old_ca || certificates(&trusted) == 2,
            "the new CA signs before the sidecar trusts it"
        );
        Ok((certificates(&trusted) == 2).then_some(()))
    })
    .await?;
    eprintln!(
        "rotation: the sidecar trusts both after {:.1?}",
        started.elapsed()
    );

    // Promote: the new CA signs; calls through the service and the webhooks work.
    wait_for("the new CA to sign", STEP, || async {
        let signing = field(&ca_secret(node).await?, "ca.crt").unwrap_or_default();
        Ok((signing != old_ca).then_some(()))
    })
    .await?;
    eprintln!("rotation: promoted after {:.1?}", started.elapsed());
    // Every replica serves from it within its 5 s look at the Secret.
    tokio::time::sleep(Duration::from_secs(8)).await;
    held_call_approved(node, NAMESPACE, "fraud:v21").await?;
    injected_dry_run(node)?;

    // Forget: the old CA leaves the sidecar's bundle; calls still work.
    wait_for("the sidecar to forget the old CA", STEP, || async {
        let secret = ca_secret(node).await?;
        let trusted = sidecar_trust(node).await?;
        Ok(
            (field(&secret, "previous.crt").is_none() && certificates(&trusted) == 1)
                .then_some(trusted),
        )
    })
    .await
    .and_then(|trusted| {
        anyhow::ensure!(
            !trusted.contains(old_ca.trim()),
            "the old CA is still trusted"
        );
        Ok(())
    })?;
    eprintln!("rotation: done after {:.1?}", started.elapsed());
    held_call_approved(node, NAMESPACE, "fraud:v22").await?;
    injected_dry_run(node)?;
    for configuration in [
        "validatingwebhookconfiguration/airlock-approval-decisions",
        "mutatingwebhookconfiguration/airlock-sidecar-injector",
    ] {
        let out = node.kubectl(
            ADMIN,
            &[
                "get",
                configuration,
                "-o",
                "jsonpath={.webhooks[*].clientConfig.caBundle}",
            ],
        )?;
        use base64::Engine;
        let bundles = String::from_utf8_lossy(&out.stdout).into_owned();
        for bundle in bundles.split_whitespace() {
            let pem = base64::engine::general_purpose::STANDARD.decode(bundle)?;
            let pem = String::from_utf8_lossy(&pem);
            anyhow::ensure!(
                !pem.contains(old_ca.trim()) && certificates(&pem) == 1,
                "{configuration} still trusts the old CA"
            );
        }
    }
    assert_eq!(gateway_restarts().await?, pods_before, "a pod was replaced");
    Ok(())
}
