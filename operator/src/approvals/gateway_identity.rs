//! Which McpServer a gateway speaks for, from its pod's ServiceAccount
//! token: a TokenReview for the `airlock` audience names the pod (name and
//! UID, in the user's extra), and the pod's chain of controllers — pod →
//! ReplicaSet → Deployment → McpServer, each checked by UID — names the
//! server. Owner references are whatever a pod's creator wrote, so the pod
//! must also carry its server's label, which admission lets only the
//! ReplicaSet controller set (the chart's `airlock-gateway-pods` policy).
//!
//! A pod injected in selector mode has no such chain: it speaks for the
//! selector-mode server its label names if that server selects it and it
//! carries that server's sidecar exactly, as admission admitted it
//! (`airlock-selected-pods`).

use crate::crd::McpServer;
use crate::render::injection;
use crate::render::workload::{INJECTED_LABEL, SERVER_LABEL};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

/// The audience a gateway's token is issued for, and checked against.
pub const AUDIENCE: &str = "airlock";

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token was not accepted: {0}")]
    NotAuthenticated(String),
    #[error("the token is not for the `{AUDIENCE}` audience")]
    WrongAudience,
    #[error("the token is not a ServiceAccount token bound to a pod")]
    NotAPod,
    #[error("{0}")]
    NotAGateway(String),
    #[error("the API server could not be asked: {0}")]
    Unavailable(String),
}

/// The pod a reviewed token was bound to: (namespace, name, uid).
pub fn reviewed_pod(status: &TokenReviewStatus) -> Result<(String, String, String), Refusal> {
    if status.authenticated != Some(true) {
        return Err(Refusal::NotAuthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
    {
        return Err(Refusal::WrongAudience);
    }
    let user = status.user.as_ref().ok_or(Refusal::NotAPod)?;
    let namespace = user
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix("system:serviceaccount:"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(namespace, _)| namespace.to_string())
        .ok_or(Refusal::NotAPod)?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| match values.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            })
            .ok_or(Refusal::NotAPod)
    };
    Ok((namespace, extra(POD_NAME)?, extra(POD_UID)?))
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// `child`'s controller, if it is `kind` of `group` named `parent`'s name
/// with `parent`'s UID.
fn controlled_by(child: &ObjectMeta, group: &str, kind: &str, parent: &ObjectMeta) -> bool {
    controller(child).is_some_and(|owner| {
        owner.kind == kind
            && owner.api_version.split('/').next() == Some(group)
            && Some(&owner.name) == parent.name.as_ref()
            && Some(&owner.uid) == parent.uid.as_ref()
    })
}

/// The ReplicaSet that runs the pod.
pub fn replica_set_name(pod: &Pod) -> Result<String, Refusal> {
    controller(&pod.metadata)
        .filter(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone())
        .ok_or_else(|| Refusal::NotAGateway("the pod is not run by a ReplicaSet".into()))
}

/// The Deployment a ReplicaSet belongs to.
pub fn deployment_name(replica_set: &ReplicaSet) -> Result<String, Refusal> {
    controller(&replica_set.metadata)
        .filter(|o| o.kind == "Deployment")
        .map(|o| o.name.clone())
        .ok_or_else(|| Refusal::NotAGateway("the ReplicaSet is not run by a Deployment".into()))
}

/// `namespace/name` of the McpServer whose gateway the pod `uid` is: the
/// pod is the reviewed one, and each link of its controller chain is the
/// object it names, by UID, up to an McpServer.
pub fn server_of(
    uid: &str,
    pod: &Pod,
    replica_set: &ReplicaSet,
    deployment: &Deployment,
) -> Result<String, Refusal> {
    let refuse = |why: &str| Err(Refusal::NotAGateway(why.into()));
    if pod.metadata.uid.as_deref() != Some(uid) {
        return refuse("the pod the token was issued to no longer exists");
    }
    if !controlled_by(&pod.metadata, "apps", "ReplicaSet", &replica_set.metadata) {
        return refuse("the pod's ReplicaSet is not the one it names");
    }
    if !controlled_by(
        &replica_set.metadata,
        "apps",
        "Deployment",
        &deployment.metadata,
    ) {
        return refuse("the ReplicaSet's Deployment is not the one it names");
    }
    let server = controller(&deployment.metadata)
        .filter(|o| o.kind == "McpServer" && o.api_version.starts_with("mcp.airlock.dev/"));
    let (Some(server), Some(namespace)) = (server, deployment.metadata.namespace.as_deref()) else {
        return refuse("the pod's Deployment is not an McpServer's");
    };
    // Owner references can be written by whoever creates the pod; the label
    // cannot, but by the ReplicaSet controller (the chart's admission policy).
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVER_LABEL));
    if labelled != Some(&server.name) {
        return refuse("the pod does not carry its server's label");
    }
    Ok(format!("{namespace}/{}", server.name))
}

/// `namespace/name` of the selector-mode McpServer whose gateway the
/// injected pod `uid` is.
pub fn injected_server_of(uid: &str, pod: &Pod, server: &McpServer) -> Result<String, Refusal> {
    let refuse = |why: String| Err(Refusal::NotAGateway(why));
    if pod.metadata.uid.as_deref() != Some(uid) {
        return refuse("the pod the token was issued to no longer exists".into());
    }
    let (Some(selector), Some(namespace)) = (&server.spec.selector, server.namespace()) else {
        return refuse("the pod claims injection by a server not in selector mode".into());
    };
    if !injection::selects(selector, pod.labels()) {
        return refuse(format!(
            "McpServer {namespace}/{} does not select the pod",
            server.name_any()
        ));
    }
    let Some(expected) = server.status.as_ref().and_then(|s| s.sidecar.as_ref()) else {
        return refuse("the server's sidecar is not reconciled yet".into());
    };
    let value = serde_json::to_value(pod).map_err(|e| Refusal::NotAGateway(e.to_string()))?;
    injection::check_gated(&value, &server.name_any(), expected).map_err(Refusal::NotAGateway)?;
    Ok(format!("{namespace}/{}", server.name_any()))
}

/// Reviews gateway tokens with the API server and walks their pods'
/// controller chains; answers are cached briefly, keyed by the token's
/// digest, so a busy gateway costs one review a minute, not one per ask.
pub struct TokenReviews {
    client: kube::Client,
    cache: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

/// How long a reviewed token's server is remembered.
const CACHED_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// Most tokens remembered; past it the cache starts again.
const CACHE_SIZE: usize = 4096;

impl TokenReviews {
    pub fn new(client: kube::Client) -> TokenReviews {
        TokenReviews {
            client,
            cache: Default::default(),
        }
    }

    /// `namespace/name` of the McpServer whose gateway presented `token`.
    pub async fn server_of(&self, token: &str) -> Result<String, Refusal> {
        use kube::api::{Api, PostParams};
        let key = airlock_policy::canonical::sha256_hex(token.as_bytes());
        if let Ok(cache) = self.cache.lock()
            && let Some((server, at)) = cache.get(&key)
            && at.elapsed() < CACHED_FOR
        {
            return Ok(server.clone());
        }
        let unavailable = |e: kube::Error| Refusal::Unavailable(e.to_string());
        let review: k8s_openapi::api::authentication::v1::TokenReview =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [AUDIENCE]},
            }))
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let reviewed =
            Api::<k8s_openapi::api::authentication::v1::TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(unavailable)?;
        let (namespace, pod_name, uid) = reviewed_pod(&reviewed.status.unwrap_or_default())?;
        let gone = |what: &str| Refusal::NotAGateway(format!("{what} is gone"));
        let pod = Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .get_opt(&pod_name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| gone("the token's pod"))?;
        let server = if pod.labels().get(INJECTED_LABEL).map(String::as_str) == Some("true") {
            let name = pod.labels().get(SERVER_LABEL).cloned().unwrap_or_default();
            let server = Api::<McpServer>::namespaced(self.client.clone(), &namespace)
                .get_opt(&name)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| gone("the server the pod names"))?;
            injected_server_of(&uid, &pod, &server)?
        } else {
            self.server_by_chain(&namespace, &uid, &pod).await?
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
            cache.insert(key, (server.clone(), std::time::Instant::now()));
        }
        Ok(server)
    }

    /// Template mode: pod → ReplicaSet → Deployment → McpServer.
    async fn server_by_chain(
        &self,
        namespace: &str,
        uid: &str,
        pod: &Pod,
    ) -> Result<String, Refusal> {
        use kube::api::Api;
        let unavailable = |e: kube::Error| Refusal::Unavailable(e.to_string());
        let gone = |what: &str| Refusal::NotAGateway(format!("{what} is gone"));
        let replica_set = Api::<ReplicaSet>::namespaced(self.client.clone(), namespace)
            .get_opt(&replica_set_name(pod)?)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| gone("the pod's ReplicaSet"))?;
        let deployment = Api::<Deployment>::namespaced(self.client.clone(), namespace)
            .get_opt(&deployment_name(&replica_set)?)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| gone("the ReplicaSet's Deployment"))?;
        server_of(uid, pod, &replica_set, &deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owned(
        kind: &str,
        api: &str,
        name: &str,
        uid: &str,
        owner: Option<(&str, &str, &str, &str)>,
    ) -> serde_json::Value {
        let mut meta = json!({"name": name, "namespace": "ml", "uid": uid});
        if let Some((kind, api, name, uid)) = owner {
            meta["ownerReferences"] = json!([{"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true}]);
        }
        json!({"apiVersion": api, "kind": kind, "metadata": meta})
    }

    fn chain() -> (Pod, ReplicaSet, Deployment) {
        let mut pod = owned(
            "Pod",
            "v1",
            "models-abc-1",
            "pod-1",
            Some(("ReplicaSet", "apps/v1", "models-abc", "rs-1")),
        );
        pod["metadata"]["labels"] = json!({SERVER_LABEL: "models"});
        let rs = owned(
            "ReplicaSet",
            "apps/v1",
            "models-abc",
            "rs-1",
            Some(("Deployment", "apps/v1", "models", "dep-1")),
        );
        let dep = owned(
            "Deployment",
            "apps/v1",
            "models",
            "dep-1",
            Some(("McpServer", "mcp.airlock.dev/v1alpha1", "models", "srv-1")),
        );
        (
            serde_json::from_value(pod).unwrap(),
            serde_json::from_value(rs).unwrap(),
            serde_json::from_value(dep).unwrap(),
        )
    }

    #[test]
    fn a_gateway_pod_is_its_servers_through_every_link() {
        let (pod, rs, dep) = chain();
        assert_eq!(replica_set_name(&pod).unwrap(), "models-abc");
        assert_eq!(deployment_name(&rs).unwrap(), "models");
        assert_eq!(server_of("pod-1", &pod, &rs, &dep).unwrap(), "ml/models");
    }

    #[test]
    fn a_broken_or_forged_link_is_refused() {
        let (pod, rs, dep) = chain();
        // A pod recreated under the same name is not the one the token names.
        assert!(server_of("pod-0", &pod, &rs, &dep).is_err());
        // A ReplicaSet that claims the real Deployment by name, not by UID.
        let mut forged = rs.clone();
        forged.metadata.owner_references.as_mut().unwrap()[0].uid = "dep-2".into();
        assert!(server_of("pod-1", &pod, &forged, &dep).is_err());
        // A Deployment nobody's McpServer controls.
        let mut plain = dep.clone();
        plain.metadata.owner_references = None;
        assert!(server_of("pod-1", &pod, &rs, &plain).is_err());
        // A pod claiming the real ReplicaSet, without the label only its controller sets.
        let mut unlabelled = pod.clone();
        unlabelled.metadata.labels = None;
        assert!(server_of("pod-1", &unlabelled, &rs, &dep).is_err());
        // A pod with no controller at all.
        let mut bare = pod.clone();
        bare.metadata.owner_references = None;
        assert!(replica_set_name(&bare).is_err());
    }

    #[test]
    fn only_an_authenticated_pod_bound_token_for_airlock_names_a_pod() {
        let review = |value: serde_json::Value| -> TokenReviewStatus {
            serde_json::from_value(value).unwrap()
        };
        let good = json!({"authenticated": true, "audiences": ["airlock"], "user": {
            "username": "system:serviceaccount:ml:default",
            "extra": {POD_NAME: ["models-abc-1"], POD_UID: ["pod-1"]}}});
        assert_eq!(
            reviewed_pod(&review(good.clone())).unwrap(),
            ("ml".into(), "models-abc-1".into(), "pod-1".into())
        );
        let mut other_audience = good.clone();
        other_audience["audiences"] = json!(["https://kubernetes.default.svc"]);
        assert_eq!(
            reviewed_pod(&review(other_audience)),
            Err(Refusal::WrongAudience)
        );
        let mut unbound = good.clone();
        unbound["user"]["extra"] = json!({});
        assert_eq!(reviewed_pod(&review(unbound)), Err(Refusal::NotAPod));
        let mut person = good.clone();
        person["user"]["username"] = json!("ada@contoso.com");
        assert_eq!(reviewed_pod(&review(person)), Err(Refusal::NotAPod));
        assert!(matches!(
            reviewed_pod(&review(json!({"authenticated": false, "error": "expired"}))),
            Err(Refusal::NotAuthenticated(e)) if e == "expired"
        ));
    }

    #[test]
    fn an_injected_pod_speaks_for_the_selector_mode_server_that_gates_it() {
        use crate::render::{injection, workload};
        let server = |selector: serde_json::Value| -> McpServer {
            serde_json::from_value(json!({
                "apiVersion": "mcp.airlock.dev/v1alpha1", "kind": "McpServer",
                "metadata": {"name": "tools", "namespace": "apps", "uid": "u-1"},
                "spec": {"upstreamPort": 8080, "auth": {"tenants": ["t"], "audiences": ["a"]},
                         "selector": selector},
            }))
            .unwrap()
        };
        let mut selecting = server(json!({"matchLabels": {"app": "tools"}}));
        let sidecar = workload::render(&selecting, &workload::test_settings())
            .unwrap()
            .sidecar;
        let app = json!({"metadata": {"name": "tools-1", "uid": "pod-1", "labels": {"app": "tools"}},
            "spec": {"containers": [{"name": "mcp", "image": "example/tools:1"}]}});
        let pod: Pod = serde_json::from_value(injection::inject(&app, &sidecar).unwrap()).unwrap();
        // Before the controller has recorded the sidecar, nothing is accepted.
        assert!(injected_server_of("pod-1", &pod, &selecting).is_err());
        selecting.status = Some(crate::crd::McpServerStatus {
            sidecar: Some(sidecar.expected().unwrap()),
            ..Default::default()
        });
        assert_eq!(
            injected_server_of("pod-1", &pod, &selecting),
            Ok("apps/tools".into())
        );
        assert!(injected_server_of("pod-2", &pod, &selecting).is_err());
        let mut elsewhere = selecting.clone();
        elsewhere.spec.selector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).ok();
        assert!(injected_server_of("pod-1", &pod, &elsewhere).is_err());
        let mut template = selecting.clone();
        template.spec.selector = None;
        assert!(injected_server_of("pod-1", &pod, &template).is_err());
    }
}
