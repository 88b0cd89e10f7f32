//! cert-manager as the issuer of the operator's serving certificate
//! (`tls.certManager`), on the install the guide's test made: cert-manager's
//! CRDs and controllers (built from its module by `make setup`, run on the
//! host against the API server, as its Deployment would run them), a CA
//! Issuer, and `helm upgrade` turning the option on. The API server and the
//! sidecars then trust the issuer's CA only, and a held deploy is approved
//! through both (`kubectl airlock` asks the webhook; the sidecar asks the
//! service). Then the issuer's CA is replaced and the certificate re-issued:
//! every replica trusts both CAs before it serves the new certificate, and
//! forgets the old CA after, with a held deploy approved at the end.

use crate::install_guide::held_deploy_approved_by_ml_leads;
use airlock_tests::chart::{self, SYSTEM_NAMESPACE};
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::paths::{repo_root, tool};
use airlock_tests::process::Process;
use airlock_tests::wait_for;
use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use std::time::{Duration, Instant};

const ISSUER: &str = "platform-ca";
const SERVING_SECRET: &str = "airlock-serving-tls";
/// Each replica's wait before serving a certificate of a new CA, and after
/// before forgetting the old one: kubelet syncs ConfigMap volumes every 10 s here.
const OVERLAP: &str = "30s";
const STEP: Duration = Duration::from_secs(120);

/// A new CA: its certificate and key (PEM).
fn new_ca() -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Each CA a name of its own, as two are trusted at once.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("platform CA {nanos}"));
    let key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// `ca` as cert-manager's CA issuer reads it: a `kubernetes.io/tls` Secret,
/// and the Issuer naming it.
fn apply_ca(node: &Node, ca: &(String, String)) -> anyhow::Result<()> {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: {ISSUER}, namespace: {SYSTEM_NAMESPACE}}}
type: kubernetes.io/tls
data: {{tls.crt: {}, tls.key: {}}}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {{name: {ISSUER}, namespace: {SYSTEM_NAMESPACE}}}
spec: {{ca: {{secretName: {ISSUER}}}}}
"#,
        encode(&ca.0),
        encode(&ca.1)
    ))
}

fn certificates(pem: &str) -> Vec<String> {
    pem.split("-----END CERTIFICATE-----")
        .filter_map(|part| part.split_once("-----BEGIN CERTIFICATE-----"))
        .map(|(_, body)| body.split_whitespace().collect())
        .collect()
}

/// What `kubectl get OBJECT -o jsonpath=PATH` prints.
fn jsonpath(node: &Node, object: &[&str], path: &str) -> anyhow::Result<String> {
    let mut args = vec!["get"];
    args.extend_from_slice(object);
    let path = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &path]);
    let out = node.kubectl(ADMIN, &args)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl get {}: {}",
        object.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CAs the API server trusts for the approval decisions' webhook.
fn webhook_trust(node: &Node) -> anyhow::Result<Vec<String>> {
    use base64::Engine;
    let bundle = jsonpath(
        node,
        &["validatingwebhookconfiguration/airlock-approval-decisions"],
        "{.webhooks[0].clientConfig.caBundle}",
    )?;
    let pem = base64::engine::general_purpose::STANDARD.decode(bundle.trim())?;
    Ok(certificates(&String::from_utf8_lossy(&pem)))
}

/// The CAs the gateways' ConfigMaps give their sidecars (the guide's server's).
fn sidecar_trust(node: &Node) -> anyhow::Result<Vec<String>> {
    let bundle = jsonpath(
        node,
        &["configmap/model-ops-airlock-gateway", "-n", "ml"],
        "{.data.approvals-ca\\.crt}",
    )?;
    Ok(certificates(&bundle))
}

/// Waits until the webhook and the sidecars trust exactly `cas`.
async fn trusted_are(node: &Node, what: &str, cas: &[&str]) -> anyhow::Result<()> {
    let wanted: Vec<String> = cas.iter().flat_map(|ca| certificates(ca)).collect();
    let same = |mut have: Vec<String>| {
        have.sort();
        let mut wanted = wanted.clone();
        wanted.sort();
        have == wanted
    };
    wait_for(what, STEP, || async {
        Ok((same(webhook_trust(node)?) && same(sidecar_trust(node)?)).then_some(()))
    })
    .await
}

pub async fn cert_manager_issues_the_operators_certificate(node: &Node) -> anyhow::Result<()> {
    let crds = repo_root().join(".tools/cert-manager-crds");
    let applied = node.kubectl(
        ADMIN,
        &["apply", "--server-side", "-f", &crds.display().to_string()],
    )?;
    anyhow::ensure!(
        applied.status.success(),
        "cert-manager's CRDs: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let established = node.kubectl(
        ADMIN,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/certificaterequests.cert-manager.io",
            "crd/issuers.cert-manager.io",
        ],
    )?;
    anyhow::ensure!(
        established.status.success(),
        "cert-manager's CRDs not served"
    );
    let logs = tempfile::tempdir()?;
    let mut command = std::process::Command::new(tool("cert-manager-controller")?);
    command.arg("--kubeconfig").arg(node.kubeconfig(ADMIN));
    let controller = Process::spawn("cert-manager", command, logs.path())?;

    let first = new_ca()?;
    apply_ca(node, &first)?;
    chart::helm_upgrade_reusing_values(
        node,
        &json!({"tls": {"rotationOverlap": OVERLAP,
                        "certManager": {"enabled": true, "issuerRef": {"name": ISSUER}}}}),
    )
    .with_context(|| controller.log_tail())?;
    chart::operator_ready(node, Some(2))
        .await
        .with_context(|| controller.log_tail())?;
    trusted_are(node, "the issuer's CA to be the one trusted", &[&first.0])
        .await
        .with_context(|| controller.log_tail())?;
    // Sidecars read the bundle from their ConfigMap file, which kubelet
    // syncs every 10 s here.
    tokio::time::sleep(Duration::from_secs(15)).await;
    held_deploy_approved_by_ml_leads(node, "fraud:v41").await?;

    // A new CA behind the issuer, and the certificate issued again.
    let second = new_ca()?;
    apply_ca(node, &second)?;
    let started = Instant::now();
    Api::<Secret>::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE)
        .delete(SERVING_SECRET, &DeleteParams::default())
        .await?;
    trusted_are(node, "both CAs to be trusted", &[&first.0, &second.0])
        .await
        .with_context(|| controller.log_tail())?;
    eprintln!(
        "cert-manager: both CAs trusted after {:.1?}",
        started.elapsed()
    );
    // Across the switch to the new certificate, calls keep working.
    held_deploy_approved_by_ml_leads(node, "fraud:v42").await?;
    trusted_are(node, "the old CA to be forgotten", &[&second.0]).await?;
    eprintln!(
        "cert-manager: only the new CA trusted after {:.1?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    held_deploy_approved_by_ml_leads(node, "fraud:v43").await?;
    drop(controller);
    Ok(())
}
