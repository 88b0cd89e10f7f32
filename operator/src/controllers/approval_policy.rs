//! ApprovalPolicy: checks each policy on its own and reports `Accepted`
//! (True with the compiled version and the servers it governs, or False with
//! every bad field), so a bad policy is named on itself and the others stay
//! in force.

use super::conditions::condition;
use super::{Context, Error, MANAGER};
use super::{SAFETY_NET, in_namespace_of};
use crate::controllers::catalog::{named, qualified};
use crate::crd::{ApprovalPolicy, ApprovalPolicyStatus, McpServer};
use airlock_policy::model::FieldError;
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIND: &str = "ApprovalPolicy";

/// A policy is reconciled when it changes, and when a server it may govern
/// does — one in its namespace, or any for a baseline (the servers it
/// governs are part of its status).
pub async fn run(context: Arc<Context>) {
    let client = context.client.clone();
    let config = watcher::Config::default();
    let policies = context.watched.policies.clone();
    let baselines = context.watched.baseline_namespace.clone();
    Controller::new(Api::<ApprovalPolicy>::all(client.clone()), config.clone())
        .watches(Api::<McpServer>::all(client), config, move |server| {
            let mut concerned = in_namespace_of(&policies, &server);
            if server.namespace().as_deref() != Some(baselines.as_str()) {
                concerned.extend(
                    policies
                        .state()
                        .iter()
                        .filter(|policy| {
                            policy.namespace().as_deref() == Some(baselines.as_str())
                                && policy.spec.namespaces.is_some()
                        })
                        .map(|policy| ObjectRef::from_obj(policy.as_ref())),
                );
            }
            concerned
        })
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(policy: Arc<ApprovalPolicy>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let outcome = check(&policy, &context).await;
    let result = if outcome.is_ok() { "success" } else { "error" };
    context.metrics.record(KIND, result, started);
    outcome
}

async fn check(policy: &ApprovalPolicy, context: &Context) -> Result<Action, Error> {
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let namespace = policy.namespace().unwrap_or_default();
    let baselines = &context.watched.baseline_namespace;
    let checked = named(policy).and_then(|checked| {
        if checked.spec.namespaces.is_some() && namespace != *baselines {
            return Err(vec![FieldError {
                field: "spec.namespaces".into(),
                message: format!(
                    "only a policy in the operator's namespace ({baselines}) is a baseline"
                ),
            }]);
        }
        Ok(checked)
    });
    let status = match checked {
        Ok(checked) => {
            // Read now, not from a cache: the server edit that triggered
            // this reconcile must be the one counted. A baseline may govern
            // servers anywhere.
            let servers = match checked.spec.namespaces {
                Some(_) => Api::<McpServer>::all(context.client.clone()),
                None => Api::<McpServer>::namespaced(context.client.clone(), &namespace),
            };
            let mut matched: Vec<String> = servers
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|s| context.watched.governed(s).is_governed_by(&checked))
                .map(qualified)
                .collect();
            matched.sort();
            ApprovalPolicyStatus {
                observed_generation: generation,
                conditions: vec![condition(
                    "Accepted",
                    true,
                    "Compiled",
                    &format!("in force on {} server(s)", matched.len()),
                    generation,
                    &previous.conditions,
                )],
                compiled_version: Some(checked.version),
                matched_servers: matched,
            }
        }
        Err(errors) => {
            let message: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ApprovalPolicyStatus {
                observed_generation: generation,
                conditions: vec![condition(
                    "Accepted",
                    false,
                    "Invalid",
                    &message.join("; "),
                    generation,
                    &previous.conditions,
                )],
                compiled_version: None,
                matched_servers: Vec::new(),
            }
        }
    };
    if status != previous {
        let accepted = status.compiled_version.is_some();
        let message = status
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let api: Api<ApprovalPolicy> = Api::namespaced(context.client.clone(), &namespace);
        let patch =
            json!({"apiVersion": "mcp.airlock.dev/v1alpha1", "kind": KIND, "status": status});
        api.patch_status(
            &policy.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        let (type_, reason) = if accepted {
            (EventType::Normal, "Accepted")
        } else {
            (EventType::Warning, "Invalid")
        };
        context
            .publish(policy, type_, reason, "Validate", &message)
            .await;
    }
    // Changes arrive through the watches; this is only a safety net.
    Ok(Action::requeue(SAFETY_NET))
}

fn error_policy(policy: Arc<ApprovalPolicy>, error: &Error, _: Arc<Context>) -> Action {
    crate::log::error(
        "approval-policy",
        &format!("{}: {error}", qualified(policy.as_ref())),
    );
    Action::requeue(Duration::from_secs(5))
}
