//! McpServer: applies what [`crate::render::workload`] renders, owned by
//! the server so deleting it removes them, and reports `Ready` — from the
//! Deployment's availability (template mode) or from a census of the
//! selected pods (selector mode) — the endpoint, the policies in force, the
//! sidecar a gated pod carries and the selected pods that run without it.
//! A pod in the server's Service whose gateway is not the operator's is
//! deleted.

use super::conditions::condition;
use super::{Context, Error, MANAGER};
use super::{SAFETY_NET, in_namespace_of};
use crate::controllers::catalog::{named, qualified};
use crate::crd::SidecarStatus;
use crate::crd::{AppliedPolicy, ApprovalPolicy, McpServer, McpServerStatus};
use crate::render::injection;
use crate::render::workload::{self, INJECTED_LABEL, RenderError, SERVER_LABEL};
use airlock_policy::gateway::config::{NamedPolicy, PolicyDocument};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIND: &str = "McpServer";

/// Runs the controller until the stream of objects ends. A server is
/// reconciled when it or what it owns changes, and when a policy in its
/// namespace does (the policies in force are part of its status).
pub async fn run(context: Arc<Context>) {
    let client = context.client.clone();
    let config = watcher::Config::default();
    let servers = context.watched.servers.clone();
    let baselines = context.watched.baseline_namespace.clone();
    Controller::new(Api::<McpServer>::all(client.clone()), config.clone())
        .owns(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), config.clone())
        .owns(Api::<Service>::all(client.clone()), config.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), config.clone())
        .watches(Api::<Namespace>::all(client.clone()), config.clone(), {
            // Its labels select baselines and mark the network guard.
            let servers = servers.clone();
            move |namespace| {
                let name = namespace.name_any();
                servers
                    .state()
                    .iter()
                    .filter(|server| server.namespace().as_deref() == Some(name.as_str()))
                    .map(|server| ObjectRef::from_obj(server.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .watches(Api::<ApprovalPolicy>::all(client), config, move |policy| {
            // A baseline may govern any server.
            if policy.namespace().as_deref() == Some(baselines.as_str()) {
                servers
                    .state()
                    .iter()
                    .map(|server| ObjectRef::from_obj(server.as_ref()))
                    .collect()
            } else {
                in_namespace_of(&servers, &policy)
            }
        })
        // A rotation of the operator's CA changes every server's ConfigMap.
        .reconcile_all_on(futures::stream::unfold(
            context.trusted.clone(),
            |mut trusted| async move {
                trusted.changed().await.ok()?;
                Some(((), trusted))
            },
        ))
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

/// The namespace label under which the admission policy
/// `airlock-network-guard` keeps the namespace's own NetworkPolicies from
/// opening gateway pods' other ports (namespace editors cannot set it).
pub const NETWORK_GUARD_LABEL: &str = "mcp.airlock.dev/network-guard";

async fn reconcile(server: Arc<McpServer>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let outcome = apply(&server, &context).await;
    let result = match &outcome {
        Ok(_) => "success",
        Err(_) => "error",
    };
    context.metrics.record(KIND, result, started);
    outcome
}

async fn apply(server: &McpServer, context: &Context) -> Result<Action, Error> {
    let namespace = server.namespace().unwrap_or_default();
    let name = server.name_any();
    let previous = server.status.clone().unwrap_or_default();
    let generation = server.metadata.generation;

    let rendered = workload::render(server, &context.settings())
        .and_then(|rendered| Ok((rendered.sidecar.expected()?, rendered)));
    let (expected, rendered) = match rendered {
        Ok(rendered) => rendered,
        Err(error) => {
            // The object is wrong, not the operator: say so on it and wait for an edit.
            report_invalid(server, context, &error, &previous).await?;
            return Ok(Action::await_change());
        }
    };
    let apply = PatchParams::apply(MANAGER).force();
    let client = &context.client;
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .patch(
            &rendered.config_map.name_any(),
            &apply,
            &Patch::Apply(&rendered.config_map),
        )
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let gating = match &rendered.deployment {
        Some(deployment) => {
            let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
                .patch(&name, &apply, &Patch::Apply(deployment))
                .await?;
            remove_strays(server, context, &pods).await?;
            availability(&deployment, server.spec.replicas)
        }
        None => {
            // Rendering checked there is one; an empty selector selects nothing.
            let selector = server.spec.selector.clone().unwrap_or_default();
            let listed = pods.list(&ListParams::default()).await?;
            let census = census(&name, &selector, &listed.items, &expected);
            for stray in &census.strays {
                remove_stray(server, context, &pods, stray).await?;
            }
            census.availability()
        }
    };
    Api::<Service>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&rendered.service))
        .await?;
    Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
        .patch(
            &rendered.network_policy.name_any(),
            &apply,
            &Patch::Apply(&rendered.network_policy),
        )
        .await?;

    let Gating {
        ready,
        reason,
        message,
        ungated,
    } = gating;
    // Read now, not from a cache: a policy edit that triggered this
    // reconcile must be the one reported.
    // The namespace's own policies, and the baselines in the operator's.
    let mut homes = vec![namespace.clone()];
    if context.watched.baseline_namespace != namespace {
        homes.push(context.watched.baseline_namespace.clone());
    }
    let mut policies: Vec<NamedPolicy> = Vec::new();
    for home in &homes {
        let listed = Api::<ApprovalPolicy>::namespaced(client.clone(), home)
            .list(&ListParams::default())
            .await?;
        policies.extend(listed.items.iter().filter_map(|policy| named(policy).ok()));
    }
    let governed = context.watched.governed(server);
    let document = PolicyDocument::for_server(&governed, &policies, &[]);
    let guarded = governed
        .namespace_labels
        .get(NETWORK_GUARD_LABEL)
        .is_some_and(|v| v == "true");
    let status = McpServerStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                "Ready",
                ready,
                reason,
                &message,
                generation,
                &previous.conditions,
            ),
            condition(
                "NetworkGuarded",
                guarded,
                if guarded {
                    "NamespaceMarked"
                } else {
                    "NamespaceNotMarked"
                },
                &if guarded {
                    "no NetworkPolicy of the namespace's own can admit other ports of the gateway pods".to_string()
                } else {
                    format!(
                        "label namespace {namespace} {NETWORK_GUARD_LABEL}=true: until then a NetworkPolicy of its own could admit the MCP container's port around the gateway"
                    )
                },
                generation,
                &previous.conditions,
            ),
        ],
        endpoint: Some(format!("http://{name}.{namespace}.svc{}", server.spec.path)),
        sidecar: Some(expected),
        ungated_pods: ungated,
        policies: document
            .policies
            .iter()
            .map(|p| AppliedPolicy {
                name: p.name.clone(),
                version: p.version.clone(),
            })
            .collect(),
    };
    if status != previous {
        write_status(server, context, &status).await?;
        if ready
            && !previous
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            context
                .publish(server, EventType::Normal, "Ready", "Reconcile", &message)
                .await;
        }
    }
    // Changes arrive through the watches; this is only a safety net. Pods
    // of the namespace's own are not watched: their census is retaken.
    Ok(Action::requeue(if server.spec.selector.is_some() {
        CENSUS_INTERVAL
    } else {
        SAFETY_NET
    }))
}

/// How often a selector-mode server's pods are counted again.
const CENSUS_INTERVAL: Duration = Duration::from_secs(10);

/// Whether the server's pods run gated, for its status.
struct Gating {
    ready: bool,
    reason: &'static str,
    message: String,
    /// Selected pods that run without the sidecar, with why.
    ungated: Vec<String>,
}

/// A selector-mode server's pods: the selected ones and those in its
/// Service (labelled with it), judged by [`injection::check_gated`].
struct Census {
    gated_ready: usize,
    gated: usize,
    ungated: Vec<String>,
    /// Pods in the server's Service whose sidecar is not the operator's.
    strays: Vec<Pod>,
}

fn census(name: &str, selector: &LabelSelector, pods: &[Pod], expected: &SidecarStatus) -> Census {
    let mut census = Census {
        gated_ready: 0,
        gated: 0,
        ungated: Vec::new(),
        strays: Vec::new(),
    };
    for pod in pods {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
        if pod.metadata.deletion_timestamp.is_some() || finished {
            continue;
        }
        let labels = pod.labels();
        let in_service = labels.get(SERVER_LABEL).map(String::as_str) == Some(name);
        if !in_service && !injection::selects(selector, labels) {
            continue;
        }
        let judged = serde_json::to_value(pod)
            .map_err(|e| e.to_string())
            .and_then(|value| injection::check_gated(&value, name, expected));
        match judged {
            Ok(()) => {
                census.gated += 1;
                census.gated_ready += usize::from(is_ready(pod));
            }
            Err(why) if in_service => {
                census.ungated.push(format!("{}: {why}", pod.name_any()));
                census.strays.push(pod.clone());
            }
            Err(why) => census.ungated.push(format!("{}: {why}", pod.name_any())),
        }
    }
    census
}

impl Census {
    fn availability(self) -> Gating {
        let (ready, reason, message) = if self.gated_ready > 0 {
            (
                true,
                "Gated",
                format!(
                    "{}/{} gated pods ready behind the gateway",
                    self.gated_ready, self.gated
                ),
            )
        } else {
            (
                false,
                "NoGatedPods",
                "no selected pod runs the gateway yet: pods get it when they are created (kubectl rollout restart)".to_string(),
            )
        };
        let message = match self.ungated.len() {
            0 => message,
            n => {
                format!("{message}; {n} selected pods run without the sidecar (status.ungatedPods)")
            }
        };
        Gating {
            ready,
            reason,
            message,
            ungated: self.ungated,
        }
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Template mode: a pod in the server's Service that claims injection
/// (made before a selector-mode namesake, say) is not its Deployment's.
async fn remove_strays(
    server: &McpServer,
    context: &Context,
    pods: &Api<Pod>,
) -> Result<(), Error> {
    let labelled = pods
        .list(&ListParams::default().labels(&format!(
            "{SERVER_LABEL}={},{INJECTED_LABEL}",
            server.name_any()
        )))
        .await?;
    for pod in &labelled.items {
        remove_stray(server, context, pods, pod).await?;
    }
    Ok(())
}

/// Deletes a pod that would take the server's traffic with a gateway that
/// is not the operator's, and says so on the server.
async fn remove_stray(
    server: &McpServer,
    context: &Context,
    pods: &Api<Pod>,
    pod: &Pod,
) -> Result<(), Error> {
    let name = pod.name_any();
    match pods.delete(&name, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    context
        .publish(
            server,
            EventType::Warning,
            "StrayPodDeleted",
            "Reconcile",
            &format!(
                "pod {name} carried this server's label without the operator's gateway: deleted"
            ),
        )
        .await;
    Ok(())
}

/// `Ready` once every wanted replica is available and the Deployment has
/// seen its latest spec.
fn availability(deployment: &Deployment, wanted: i32) -> Gating {
    let (ready, reason, message) = deployment_availability(deployment, wanted);
    Gating {
        ready,
        reason,
        message,
        ungated: Vec::new(),
    }
}

fn deployment_availability(deployment: &Deployment, wanted: i32) -> (bool, &'static str, String) {
    let status = deployment.status.clone().unwrap_or_default();
    let seen = status.observed_generation >= deployment.metadata.generation;
    let available = status.available_replicas.unwrap_or(0);
    if !seen {
        return (
            false,
            "Progressing",
            "the Deployment has not seen its latest spec yet".into(),
        );
    }
    if wanted == 0 {
        return (true, "ScaledToZero", "no replicas wanted".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    // A pod of an older spec still counts as available while the new one
    // starts: the server is ready once none is left, as `kubectl rollout
    // status` waits.
    let older = status.replicas.unwrap_or(0) - updated;
    if older > 0 {
        return (
            false,
            "Progressing",
            format!("{older} pods of the previous spec still run"),
        );
    }
    if available >= wanted && updated >= wanted {
        (
            true,
            "Available",
            format!("{available}/{wanted} replicas available behind the gateway"),
        )
    } else {
        (
            false,
            "Progressing",
            format!("{available}/{wanted} replicas available"),
        )
    }
}

async fn report_invalid(
    server: &McpServer,
    context: &Context,
    error: &RenderError,
    previous: &McpServerStatus,
) -> Result<(), Error> {
    let generation = server.metadata.generation;
    let message = error.to_string();
    let status = McpServerStatus {
        observed_generation: generation,
        conditions: vec![condition(
            "Ready",
            false,
            "InvalidSpec",
            &message,
            generation,
            &previous.conditions,
        )],
        ..previous.clone()
    };
    if &status != previous {
        write_status(server, context, &status).await?;
        context
            .publish(
                server,
                EventType::Warning,
                "InvalidSpec",
                "Reconcile",
                &message,
            )
            .await;
    }
    Ok(())
}

async fn write_status(
    server: &McpServer,
    context: &Context,
    status: &McpServerStatus,
) -> Result<(), Error> {
    let api: Api<McpServer> = Api::namespaced(
        context.client.clone(),
        &server.namespace().unwrap_or_default(),
    );
    let patch = json!({"apiVersion": "mcp.airlock.dev/v1alpha1", "kind": KIND, "status": status});
    api.patch_status(
        &server.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy(server: Arc<McpServer>, error: &Error, _: Arc<Context>) -> Action {
    crate::log::error(
        "mcp-server",
        &format!("{}: {error}", qualified(server.as_ref())),
    );
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, observed: i64, available: i32, updated: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "models", "generation": generation},
            "status": {"observedGeneration": observed, "availableReplicas": available,
                       "updatedReplicas": updated, "replicas": updated},
        }))
        .unwrap()
    }

    #[test]
    fn ready_once_every_wanted_replica_is_available_on_the_latest_spec() {
        assert!(availability(&deployment(2, 2, 2, 2), 2).ready);
        assert_eq!(
            availability(&deployment(2, 2, 1, 2), 2).reason,
            "Progressing"
        );
        // Replicas of the previous spec do not count.
        assert!(!availability(&deployment(2, 2, 2, 1), 2).ready);
        // The old pod is available, the new one is not yet: not ready.
        let mut rolling = deployment(2, 2, 1, 1);
        if let Some(status) = rolling.status.as_mut() {
            status.replicas = Some(2);
        }
        assert_eq!(availability(&rolling, 1).reason, "Progressing");
        // The Deployment controller has not seen the edit yet.
        assert_eq!(
            availability(&deployment(3, 2, 2, 2), 2).reason,
            "Progressing"
        );
        assert_eq!(
            availability(&deployment(1, 1, 0, 0), 0).reason,
            "ScaledToZero"
        );
    }
}
