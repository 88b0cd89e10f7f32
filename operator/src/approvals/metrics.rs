//! The approval service's Prometheus metrics, served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct ServiceMetrics {
    registry: Registry,
    /// Set at each scrape from the store, so it is right after a restart:
    /// per server (`namespace/name`), so an alert says whose calls wait.
    pub pending: IntGaugeVec,
    pub time_to_decision: Histogram,
    pub decisions: IntCounterVec,
    pub expiries: IntCounter,
    pub audit_written: IntCounter,
    pub audit_dropped: IntCounter,
}

impl ServiceMetrics {
    pub fn new() -> Result<ServiceMetrics, prometheus::Error> {
        let registry = Registry::new();
        let pending = IntGaugeVec::new(
            Opts::new(
                "airlock_approvals_pending",
                "Approval requests waiting for a decision (pending or info requested), by server.",
            ),
            &["server"],
        )?;
        let time_to_decision = Histogram::with_opts(
            HistogramOpts::new(
                "airlock_approval_time_to_decision_seconds",
                "Time from a request being asked to its final approval or denial.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "airlock_approval_decisions_total",
                "Decisions made by approvers, by verdict.",
            ),
            &["verdict"],
        )?;
        let expiries = IntCounter::new(
            "airlock_approval_expiries_total",
            "Approval requests that expired undecided.",
        )?;
        let audit_written = IntCounter::new(
            "airlock_audit_events_written_total",
            "Audit events appended to the hash-chained log.",
        )?;
        let audit_dropped = IntCounter::new(
            "airlock_audit_events_dropped_total",
            "Audit events that could not be written (each also logged and refused to its sender).",
        )?;
        // Every verdict from the start, at zero: a rate over the first
        // decision then sees it rise.
        for verdict in [super::model::Verdict::Approve, super::model::Verdict::Deny] {
            decisions.with_label_values(&[verdict.label()]);
        }
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(time_to_decision.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(expiries.clone()))?;
        registry.register(Box::new(audit_written.clone()))?;
        registry.register(Box::new(audit_dropped.clone()))?;
        Ok(ServiceMetrics {
            registry,
            pending,
            time_to_decision,
            decisions,
            expiries,
            audit_written,
            audit_dropped,
        })
    }

    /// Where other parts of the process (the controllers) register theirs,
    /// so one `/metrics` serves them all.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
