//! Feeds the approval service the servers and policies in the cluster: a
//! watch of every McpServer, ApprovalPolicy, Revocation and Namespace
//! (baselines select servers by their namespace's labels), and on each change a new
//! catalog, which answers the gateways' config long-polls at once. Runs on
//! every replica, since every replica serves gateways.
//!
//! A policy that does not compile is left out (its controller reports why on
//! the policy); the others stay in force.

use crate::approvals::service::{ApprovalService, Catalog};
use crate::approvals::store::Store;
use crate::crd::{ApprovalPolicy, McpServer, Revocation};
use airlock_policy::audit::parse_rfc3339;
use airlock_policy::gateway::config::{Governed, NamedPolicy};
use airlock_policy::model::FieldError;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store as Cache};
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;

/// The cluster's servers and policies as the service sees them.
#[derive(Clone)]
pub struct Watched {
    pub servers: Cache<McpServer>,
    pub policies: Cache<ApprovalPolicy>,
    pub namespaces: Cache<Namespace>,
    pub revocations: Cache<Revocation>,
    /// Where baseline policies are kept: the operator's namespace.
    pub baseline_namespace: String,
}

impl Watched {
    /// The checked policies, each as `namespace/name`; bad ones left out.
    pub fn named_policies(&self) -> Vec<NamedPolicy> {
        self.policies
            .state()
            .iter()
            .filter_map(|policy| named(policy).ok())
            .collect()
    }

    /// What selects the policies of `server`.
    pub fn governed(&self, server: &McpServer) -> Governed {
        let namespace_labels = server
            .namespace()
            .and_then(|namespace| self.namespaces.get(&reflector::ObjectRef::new(&namespace)))
            .map(|namespace| namespace.labels().clone())
            .unwrap_or_default();
        Governed {
            name: qualified(server),
            labels: server.labels().clone(),
            namespace_labels,
            baseline_namespace: Some(self.baseline_namespace.clone()),
        }
    }

    fn catalog(&self) -> Result<Catalog, String> {
        let servers = self
            .servers
            .state()
            .iter()
            .map(|server| self.governed(server))
            .collect();
        Ok(Catalog::new(servers, self.named_policies())?.revoking(
            self.revocations
                .state()
                .iter()
                .map(|r| revocation(r))
                .collect(),
        ))
    }
}

/// `namespace/name`.
pub fn qualified<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The revocation as gateways enforce it; one whose expiry is not a time
/// (the schema checks it) is logged and kept without one, so it never
/// silently lapses.
fn revocation(resource: &Revocation) -> airlock_policy::gateway::revocation::Revocation {
    let spec = &resource.spec;
    let until = spec.expires_at.as_deref().and_then(|at| {
        let parsed = parse_rfc3339(at);
        if parsed.is_none() {
            crate::log::error(
                "catalog",
                &format!(
                    "revocation {}: expiresAt {at:?} is not a time; kept until deleted",
                    qualified(resource)
                ),
            );
        }
        parsed
    });
    airlock_policy::gateway::revocation::Revocation {
        name: qualified(resource),
        oid: spec.user.as_ref().map(|u| u.oid.clone()),
        tenant: spec.user.as_ref().and_then(|u| u.tenant.clone()),
        session: spec.session.clone(),
        reason: spec.reason.clone(),
        until,
    }
}

/// The policy as the service serves it, or its bad fields.
pub fn named(policy: &ApprovalPolicy) -> Result<NamedPolicy, Vec<FieldError>> {
    NamedPolicy::checked(qualified(policy), policy.spec.clone())
}

/// The caches, and the task that fills them and replaces the service's
/// catalog on every change (once both initial lists have arrived).
pub fn feed<S: Store + 'static>(
    client: kube::Client,
    service: Arc<ApprovalService<S>>,
    baseline_namespace: &str,
) -> (Watched, impl std::future::Future<Output = ()>) {
    let (servers, servers_writer) = reflector::store::<McpServer>();
    let (policies, policies_writer) = reflector::store::<ApprovalPolicy>();
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    let (revocations, revocations_writer) = reflector::store::<Revocation>();
    let watched = Watched {
        servers,
        policies,
        namespaces,
        revocations,
        baseline_namespace: baseline_namespace.to_string(),
    };
    let config = watcher::Config::default();
    let server_events = reflector::reflector(
        servers_writer,
        watcher(Api::<McpServer>::all(client.clone()), config.clone()).default_backoff(),
    )
    .map(|event| event.is_ok());
    let policy_events = reflector::reflector(
        policies_writer,
        watcher(Api::<ApprovalPolicy>::all(client.clone()), config.clone()).default_backoff(),
    )
    .map(|event| event.is_ok());
    let revocation_events = reflector::reflector(
        revocations_writer,
        watcher(Api::<Revocation>::all(client.clone()), config.clone()).default_backoff(),
    )
    .map(|event| event.is_ok());
    // Only labels matter; their metadata is all that is kept.
    let namespace_events = reflector::reflector(
        namespaces_writer,
        watcher(Api::<Namespace>::all(client), config).default_backoff(),
    )
    .map(|event| event.is_ok());
    let cached = watched.clone();
    let run = async move {
        let mut changes = futures::stream::select_all([
            server_events.boxed(),
            policy_events.boxed(),
            namespace_events.boxed(),
            revocation_events.boxed(),
        ])
        .ready_chunks(512)
        .boxed();
        while changes.next().await.is_some() {
            let ready = futures::FutureExt::now_or_never(cached.servers.wait_until_ready())
                .is_some_and(|r| r.is_ok())
                && futures::FutureExt::now_or_never(cached.policies.wait_until_ready())
                    .is_some_and(|r| r.is_ok())
                && futures::FutureExt::now_or_never(cached.namespaces.wait_until_ready())
                    .is_some_and(|r| r.is_ok())
                && futures::FutureExt::now_or_never(cached.revocations.wait_until_ready())
                    .is_some_and(|r| r.is_ok());
            if !ready {
                continue;
            }
            match cached.catalog() {
                Ok(catalog) => service.set_catalog(catalog),
                Err(e) => crate::log::error("catalog", &format!("catalog refused: {e}")),
            }
        }
    };
    (watched, run)
}
