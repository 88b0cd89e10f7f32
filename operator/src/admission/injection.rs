//! Selector mode's mutating webhook: each selector-mode McpServer gets one
//! webhook in the configuration `airlock-sidecar-injector`, scoped by its
//! namespace and its selector, so `failurePolicy: Fail` stops only the pods
//! that server would gate: while no operator replica answers, those pods are
//! not created (their controllers retry) and every other pod is untouched.
//! The webhook adds the sidecar [`crate::render::injection::inject`]
//! renders; the admission policy `airlock-selected-pods` then checks the
//! final pod, after every other webhook, so a later mutation cannot strip it.

use crate::crd::McpServer;
use crate::render::injection;
use crate::render::workload::{self, Settings};
use axum::Json;
use axum::extract::{Path, State};
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The chart's (empty) configuration; the operator writes its webhooks.
pub const INJECTOR_CONFIGURATION: &str = "airlock-sidecar-injector";
/// The path prefix of the injection webhook; `/{namespace}/{name}` follows.
pub const INJECT_PATH: &str = "/inject";

/// What the webhook needs to render a server's sidecar.
pub struct Injector {
    pub client: kube::Client,
    pub settings: Settings,
}

pub async fn review(
    State(injector): State<Arc<Injector>>,
    Path((namespace, name)): Path<(String, String)>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let response = AdmissionResponse::from(&request);
    let response = match injected(&injector, &namespace, &name, &request).await {
        Ok(patch) => match response.with_patch(patch) {
            Ok(response) => response,
            Err(e) => AdmissionResponse::from(&request).deny(e.to_string()),
        },
        Err(reason) => response.deny(format!(
            "McpServer {namespace}/{name} selects this pod, which cannot be gated: {reason}"
        )),
    };
    Json(response.into_review())
}

/// The patch that gates the pod under review.
async fn injected(
    injector: &Injector,
    namespace: &str,
    name: &str,
    request: &AdmissionRequest<DynamicObject>,
) -> Result<json_patch::Patch, String> {
    if request.operation != Operation::Create || request.namespace.as_deref() != Some(namespace) {
        return Err("only pods created in the server's namespace are injected".into());
    }
    let pod = request
        .object
        .as_ref()
        .ok_or("the review holds no pod")
        .and_then(|object| serde_json::to_value(object).map_err(|_| "the pod is not JSON"))?;
    let server = Api::<McpServer>::namespaced(injector.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("the API server could not be asked for the server: {e}"))?
        .filter(|server| server.spec.selector.is_some())
        .ok_or("the server is gone or no longer in selector mode")?;
    let rendered = workload::render(&server, &injector.settings).map_err(|e| e.to_string())?;
    let gated = injection::inject(&pod, &rendered.sidecar).map_err(|e| e.to_string())?;
    Ok(json_patch::diff(&pod, &gated))
}

/// The webhooks for `servers`: one per selector-mode server outside the
/// protected namespaces, served by `service` in `namespace`, trusting `ca_pem`.
pub fn webhooks(
    servers: &[McpServer],
    settings: &Settings,
    service: &str,
    namespace: &str,
    ca_pem: &str,
) -> Vec<Value> {
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut webhooks: Vec<Value> = servers
        .iter()
        .filter_map(|server| {
            let selector = server.spec.selector.as_ref()?;
            let home = server.namespace()?;
            if workload::protected_namespace(&home, settings) {
                return None;
            }
            let name = server.name_any();
            Some(json!({
                "name": format!("{name}.{home}.inject.mcp.airlock.dev"),
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 10,
                "clientConfig": {
                    "service": {"name": service, "namespace": namespace,
                                "path": format!("{INJECT_PATH}/{home}/{name}")},
                    "caBundle": bundle,
                },
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": home}},
                "objectSelector": selector,
            }))
        })
        .collect();
    webhooks.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    webhooks
}

/// Keeps the injector configuration's webhooks those of the cluster's
/// selector-mode servers (run by the leader): rewritten on every change of
/// a server or of the operator's CA bundle, and every minute in case
/// someone edited it.
pub async fn keep_webhooks(
    client: kube::Client,
    settings: Settings,
    service: String,
    namespace: String,
    mut trusted: tokio::sync::watch::Receiver<String>,
) {
    let servers: Api<McpServer> = Api::all(client.clone());
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client);
    let changes = watcher(servers.clone(), watcher::Config::default())
        .default_backoff()
        .touched_objects();
    futures::pin_mut!(changes);
    let mut written: Option<Vec<Value>> = None;
    let mut resync = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = changes.next() => {}
            _ = resync.tick() => written = None,
            // The CA rotates: the API server must trust the next one too.
            changed = trusted.changed() => if changed.is_err() { return },
        }
        let ca_pem = trusted.borrow_and_update().clone();
        let listed = match servers.list(&ListParams::default()).await {
            Ok(listed) => listed.items,
            Err(e) => {
                crate::log::error("injection", &format!("listing McpServers: {e}"));
                continue;
            }
        };
        let wanted = webhooks(&listed, &settings, &service, &namespace, &ca_pem);
        if written.as_ref() == Some(&wanted) {
            continue;
        }
        let patch = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": INJECTOR_CONFIGURATION},
            "webhooks": wanted,
        });
        match configurations
            .patch(
                INJECTOR_CONFIGURATION,
                &PatchParams::apply("airlock-operator").force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => written = Some(wanted),
            Err(e) => crate::log::error(
                "injection",
                &format!("writing {INJECTOR_CONFIGURATION}: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(namespace: &str, name: &str, selector: Option<Value>) -> McpServer {
        let mut spec =
            json!({"upstreamPort": 8080, "auth": {"tenants": ["t"], "audiences": ["a"]}});
        match selector {
            Some(selector) => spec["selector"] = selector,
            None => spec["template"] = json!({"spec": {"containers": []}}),
        }
        serde_json::from_value(json!({
            "apiVersion": "mcp.airlock.dev/v1alpha1", "kind": "McpServer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn each_selector_mode_server_gets_a_webhook_scoped_to_its_pods() {
        let settings = workload::test_settings();
        let tools = json!({"matchLabels": {"app": "tools"}});
        let servers = [
            server("apps", "tools", Some(tools.clone())),
            server("apps", "models", None),
            server("kube-system", "dns", Some(tools.clone())),
            server("airlock-system", "own", Some(tools.clone())),
        ];
        let hooks = webhooks(
            &servers,
            &settings,
            "airlock-webhook",
            "airlock-system",
            "CA",
        );
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        let hook = &hooks[0];
        assert_eq!(hook["name"], "tools.apps.inject.mcp.airlock.dev");
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["objectSelector"], tools);
        assert_eq!(
            hook["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "apps"
        );
        assert_eq!(
            hook["clientConfig"]["service"]["path"],
            "/inject/apps/tools"
        );
        assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    }
}
