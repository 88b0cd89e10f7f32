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

use crate::approvals::service::GatewayKey;
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
    pub settings: Settings,
    /// Signs each server's gateway credential.
    pub gateway_key: GatewayKey,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// The servers and policies the catalog feeder keeps.
    pub watched: catalog::Watched,
}

impl Context {
    pub fn new(
        client: kube::Client,
        settings: Settings,
        gateway_key: GatewayKey,
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
            gateway_key,
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
