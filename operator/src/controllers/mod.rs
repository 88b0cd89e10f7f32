//! The operator's controllers. [`catalog`] runs on every replica (each
//! serves gateways their policy); [`mcp_server`], [`approval_policy`] and
//! [`retention`] write to the cluster and run only on the replica holding
//! the Lease.
//!
//! One malformed object is reported on that object (a condition and an
//! Event) and never stops a controller.

pub mod approval_policy;
pub mod catalog;
pub mod conditions;
pub mod mcp_server;
pub mod retention;

use crate::render::workload::Settings;
use kube::runtime::events::{Recorder, Reporter};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::Arc;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "airlock-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
}

/// What every reconcile needs.
pub struct Context {
    pub client: kube::Client,
    /// The settings rendering starts from; see [`Context::settings`].
    pub settings: Settings,
    /// The operator's CA bundle now, which changes while the CA rotates.
    pub trusted: tokio::sync::watch::Receiver<String>,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// The servers and policies the catalog feeder keeps.
    pub watched: catalog::Watched,
}

impl Context {
    /// What to render with now: sidecars trust the CA bundle of this moment.
    pub fn settings(&self) -> Settings {
        let mut settings = self.settings.clone();
        if settings.approvals_ca.is_some() {
            settings.approvals_ca = Some(self.trusted.borrow().clone());
        }
        settings
    }

    pub fn new(
        client: kube::Client,
        settings: Settings,
        trusted: tokio::sync::watch::Receiver<String>,
        watched: catalog::Watched,
        instance: String,
        registry: &Registry,
    ) -> Result<Arc<Context>, prometheus::Error> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Ok(Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            trusted,
            metrics: ControllerMetrics::new(registry)?,
            watched,
        }))
    }
}

impl Context {
    /// Records an Event on `object` as the controllers.
    pub async fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: kube::runtime::events::EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        crate::events::publish(&self.recorder, object, type_, reason, action, note).await;
    }
}

/// Reconciles by kind and result, and how long they take.
pub struct ControllerMetrics {
    pub reconciles: IntCounterVec,
    pub duration: HistogramVec,
}

impl ControllerMetrics {
    fn new(registry: &Registry) -> Result<ControllerMetrics, prometheus::Error> {
        let reconciles = IntCounterVec::new(
            Opts::new("airlock_reconciles_total", "Reconciles by kind and result."),
            &["kind", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("airlock_reconcile_seconds", "Time a reconcile took."),
            &["kind"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(ControllerMetrics {
            reconciles,
            duration,
        })
    }

    /// Counts one reconcile of `kind` that ended as `result`.
    pub fn record(&self, kind: &str, result: &str, started: std::time::Instant) {
        self.reconciles.with_label_values(&[kind, result]).inc();
        self.duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// How often an object is reconciled with nothing changed: the watches
/// bring every change, this only bounds how long a missed one could last.
pub const SAFETY_NET: std::time::Duration = std::time::Duration::from_secs(300);

/// Every cached object in `changed`'s namespace: what a change to it may
/// concern (a policy governs servers of its own namespace only). The
/// reconcile reads the current state itself, so a cache a moment behind
/// only ever triggers more, never less, than needed — except for an object
/// the cache has not seen yet, which its own watch reconciles.
pub fn in_namespace_of<K, Other>(
    cache: &kube::runtime::reflector::Store<K>,
    changed: &Other,
) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    Other: kube::ResourceExt,
{
    let namespace = changed.namespace();
    cache
        .state()
        .iter()
        .filter(|object| kube::ResourceExt::namespace(object.as_ref()) == namespace)
        .map(|object| kube::runtime::reflector::ObjectRef::from_obj(object.as_ref()))
        .collect()
}
