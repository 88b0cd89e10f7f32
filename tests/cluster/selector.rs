//! Selector mode on the real node: an app team's own Deployment put behind
//! the gateway by an McpServer that selects its pods. Pods that ran before
//! stay listed as ungated (and reachable on no MCP port) until recreated;
//! recreated ones get the sidecar from the injection webhook, and a held
//! call through them is approved. A later webhook that strips the sidecar,
//! and a pod that claims injection without it, are refused.

use crate::operator::{SERVER, call, client_pod, held_call_approved, operator, policy, token};
use airlock_operator::crd::McpServer;
use airlock_operator::tls::{Authority, TlsListener};
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::issuer::{AUDIENCE, TENANT};
use airlock_tests::node::Node;
use airlock_tests::node::images::MCP_PYTHON;
use airlock_tests::wait_for;
use anyhow::Context;
use axum::Json;
use axum::routing::post;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::time::Duration;

const NAMESPACE: &str = "gate-selected";

/// The app team's workload, as it ran before anyone gated it.
fn workload() -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: tools, namespace: {NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: tools}}}}
  template:
    metadata: {{labels: {{app: tools}}}}
    spec:
      containers:
      - name: mcp
        image: {MCP_PYTHON}
        imagePullPolicy: IfNotPresent
---
{}"#,
        client_pod(NAMESPACE)
    )
}

fn selecting_server() -> String {
    format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: McpServer
metadata: {{name: {SERVER}, namespace: {NAMESPACE}, labels: {{team: ml}}}}
spec:
  upstreamPort: 8080
  auth: {{tenants: ["{TENANT}"], audiences: ["{AUDIENCE}"]}}
  gateway: {{maxHoldSeconds: 40}}
  selector: {{matchLabels: {{app: tools}}}}
"#
    )
}

async fn app_pods(node: &Node) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
    Ok(pods
        .list(&ListParams::default().labels("app=tools"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

fn has_gateway(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == "airlock-gateway"))
}

fn refusal(node: &Node, manifest: &str) -> anyhow::Result<String> {
    let path = std::env::temp_dir().join(format!("selector-{}.yaml", std::process::id()));
    std::fs::write(&path, manifest)?;
    let out = node.kubectl(ADMIN, &["create", "-f", &path.display().to_string()])?;
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(
        !out.status.success(),
        "admitted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn labelled_pod(name: &str, labels: Value) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        // Hardened, so that only the sidecar's absence is wrong with it.
        "spec": {
            "securityContext": {"runAsUser": 65532, "runAsNonRoot": true,
                "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "1024"}]},
            "containers": [{"name": "mcp", "image": MCP_PYTHON, "imagePullPolicy": "IfNotPresent",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        },
    })
    .to_string()
}

pub async fn a_selected_workload_is_gated_once_its_pods_are_recreated(
    node: &Node,
) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    node.namespace(NAMESPACE).await?;
    node.apply(&workload())?;
    node.ready_pod(NAMESPACE, "client").await?;
    let before = wait_for("the app's pod", Duration::from_secs(120), || async {
        Ok(app_pods(node).await?.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
    })
    .await?;
    assert!(!has_gateway(&before));
    node.apply(&format!(
        "{}\n---\n{}",
        policy(NAMESPACE, ""),
        selecting_server()
    ))?;

    // The pod that ran before is listed, and kept off every MCP port.
    let servers: Api<McpServer> = Api::namespaced(node.client(ADMIN).await?, NAMESPACE);
    let listed = wait_for(
        "the ungated pod listed",
        Duration::from_secs(60),
        || async {
            let status = servers.get(SERVER).await?.status.unwrap_or_default();
            Ok(status
                .ungated_pods
                .iter()
                .any(|p| p.starts_with(&before.name_any()))
                .then_some(status))
        },
    )
    .await?;
    let ready = listed.conditions.iter().find(|c| c.type_ == "Ready");
    assert_eq!(
        ready.map(|c| c.reason.as_str()),
        Some("NoGatedPods"),
        "{listed:?}"
    );
    let injector = node.kubectl(
        ADMIN,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "airlock-sidecar-injector",
            "-o",
            "json",
        ],
    )?;
    let injector: Value = serde_json::from_slice(&injector.stdout)?;
    let hooks: Vec<&Value> = injector["webhooks"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|h| {
                    h["name"].as_str().is_some_and(|n| {
                        n.ends_with(&format!("{NAMESPACE}.inject.mcp.airlock.dev"))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(hooks.len(), 1, "{injector}");
    assert_eq!(
        hooks[0]["objectSelector"],
        json!({"matchLabels": {"app": "tools"}})
    );

    // The team recreates its pods; they come back gated.
    let restarted = node.kubectl(
        ADMIN,
        &["rollout", "restart", "deployment/tools", "-n", NAMESPACE],
    )?;
    anyhow::ensure!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let status = wait_for("every selected pod gated", chart::STARTUP, || async {
        let status = servers.get(SERVER).await?.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok((ready && status.ungated_pods.is_empty()).then_some(status))
    })
    .await
    .map_err(|e| e.context(chart::diagnostics(node, NAMESPACE)))?;
    assert!(status.sidecar.is_some());
    let pods = app_pods(node).await?;
    assert!(pods.iter().all(has_gateway), "{pods:?}");
    let pod = pods.first().context("no app pod")?;
    assert_eq!(
        pod.labels()
            .get("mcp.airlock.dev/server")
            .map(String::as_str),
        Some(SERVER)
    );

    // A held call through the injected gateway, approved by a lead.
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let allowed = call(node, NAMESPACE, &ada, "get_status", json!({})).await?;
    assert_eq!(allowed["isError"], false, "{allowed}");
    held_call_approved(node, NAMESPACE, "fraud:v7").await?;

    // A pod that claims injection without the sidecar.
    let claimed = refusal(
        node,
        &labelled_pod(
            "claims-injection",
            json!({"mcp.airlock.dev/server": SERVER, "mcp.airlock.dev/injected": "true"}),
        ),
    )?;
    assert!(claimed.contains("would run without its"), "{claimed}");

    // A selected pod whose own container names the gateway's token volume.
    let mut greedy: Value = serde_json::from_str(&labelled_pod("greedy", json!({"app": "tools"})))?;
    greedy["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "airlock-gateway-token", "mountPath": "/stolen"}]);
    let greedy = refusal(node, &greedy.to_string())?;
    assert!(greedy.contains("mounts the gateway's token"), "{greedy}");

    // A webhook after the injector strips the sidecar: the final pod is refused.
    let stripper = Stripper::start().await?;
    node.apply(&stripper.configuration())?;
    let stripped = wait_for(
        "the stripped pod refused",
        Duration::from_secs(30),
        || async {
            let refused = refusal(
                node,
                &labelled_pod("stripped", json!({"app": "tools", "strip": "yes"})),
            )?;
            // Until the API server sees the new configuration, the pod is admitted whole.
            if !refused.contains("denied") {
                let _ = node.kubectl(
                    ADMIN,
                    &["delete", "pod", "stripped", "-n", NAMESPACE, "--wait=false"],
                );
                return Ok(None);
            }
            Ok(Some(refused))
        },
    )
    .await;
    let _ = node.kubectl(ADMIN, &["delete", "mutatingwebhookconfiguration", STRIPPER]);
    let stripped = stripped?;
    assert!(
        stripped.contains("would run without its gateway sidecar"),
        "{stripped}"
    );
    assert!(
        stripper.stripped() > 0,
        "the stripping webhook was never called"
    );
    Ok(())
}

const STRIPPER: &str = "zz-strip-sidecar";

/// A mutating webhook called after Airlock's injector (configurations are
/// called in name order) that removes every init container.
struct Stripper {
    address: std::net::SocketAddr,
    ca_pem: String,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Stripper {
    async fn start() -> anyhow::Result<Stripper> {
        let authority = Authority::generate()?;
        let tls = authority.serving_config(&["127.0.0.1".to_string()])?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let router = axum::Router::new().route(
            "/strip",
            post(move |Json(review): Json<Value>| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let patch = json!([{"op": "add", "path": "/spec/initContainers", "value": []}]);
                    let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
                    Json(json!({
                        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "response": {"uid": review["request"]["uid"], "allowed": true,
                                     "patchType": "JSONPatch", "patch": patch},
                    }))
                }
            }),
        );
        let served = TlsListener::new(listener, tls)?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(served, router).await;
        });
        Ok(Stripper {
            address,
            ca_pem: authority.ca_pem.clone(),
            calls,
            task,
        })
    }

    fn configuration(&self) -> String {
        let bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": STRIPPER},
            "webhooks": [{
                "name": "strip.example.test",
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "reinvocationPolicy": "Never",
                "clientConfig": {"url": format!("https://{}/strip", self.address), "caBundle": bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "objectSelector": {"matchLabels": {"strip": "yes"}},
            }],
        })
        .to_string()
    }

    fn stripped(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Stripper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
