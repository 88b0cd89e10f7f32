//! Feeds the approval service the servers and policies in the cluster: a
//! watch of every McpServer and ApprovalPolicy, and on each change a new
//! catalog, which answers the gateways' config long-polls at once. Runs on
//! every replica, since every replica serves gateways.
//!
//! A policy that does not compile is left out (its controller reports why on
//! the policy); the others stay in force.

use crate::approvals::service::{ApprovalService, Catalog, ServerEntry};
use crate::approvals::store::Store;
use crate::crd::{ApprovalPolicy, McpServer};
use airlock_policy::gateway::config::NamedPolicy;
use airlock_policy::model::FieldError;
use futures::StreamExt;
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

    fn catalog(&self) -> Result<Catalog, String> {
        let servers = self
            .servers
            .state()
            .iter()
            .map(|server| ServerEntry {
                name: qualified(server.as_ref()),
                labels: server.labels().clone(),
            })
            .collect();
        Catalog::new(servers, self.named_policies())
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

/// The policy as the service serves it, or its bad fields.
pub fn named(policy: &ApprovalPolicy) -> Result<NamedPolicy, Vec<FieldError>> {
    NamedPolicy::checked(qualified(policy), policy.spec.clone())
}

/// The caches, and the task that fills them and replaces the service's
/// catalog on every change (once both initial lists have arrived).
pub fn feed<S: Store + 'static>(
    client: kube::Client,
    service: Arc<ApprovalService<S>>,
) -> (Watched, impl std::future::Future<Output = ()>) {
    let (servers, servers_writer) = reflector::store::<McpServer>();
    let (policies, policies_writer) = reflector::store::<ApprovalPolicy>();
    let watched = Watched { servers, policies };
    let config = watcher::Config::default();
    let server_events = reflector::reflector(
        servers_writer,
        watcher(Api::<McpServer>::all(client.clone()), config.clone()).default_backoff(),
    )
    .map(|event| event.is_ok());
    let policy_events = reflector::reflector(
        policies_writer,
        watcher(Api::<ApprovalPolicy>::all(client), config).default_backoff(),
    )
    .map(|event| event.is_ok());
    let cached = watched.clone();
    let run = async move {
        let mut changes = futures::stream::select(server_events, policy_events)
            .ready_chunks(512)
            .boxed();
        while changes.next().await.is_some() {
            let ready = futures::FutureExt::now_or_never(cached.servers.wait_until_ready())
                .is_some_and(|r| r.is_ok())
                && futures::FutureExt::now_or_never(cached.policies.wait_until_ready())
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
