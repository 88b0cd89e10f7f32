//! Filter metrics, exposed through Envoy's stats (prefix `wasmcustom.`).

use airlock_policy::model::Action;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Audit events dropped: the queue was full, or the service refused them.
pub const AUDIT_DROPPED: &str = "airlock.audit.dropped";
/// Audit events made, each numbered: those written plus those dropped.
pub const AUDIT_PRODUCED: &str = "airlock.audit.produced";

#[derive(Default)]
pub struct Metrics {
    ids: RefCell<HashMap<String, u32>>,
    /// What [`Metrics::memory`] last added for this VM.
    memory_reported: Cell<(usize, usize)>,
}

impl Metrics {
    /// The metric `name`, defined on first use.
    fn id(&self, kind: MetricType, name: &str) -> Option<u32> {
        let mut ids = self.ids.borrow_mut();
        match ids.get(name) {
            Some(id) => Some(*id),
            None => {
                let id = hostcalls::define_metric(kind, name).ok()?;
                ids.insert(name.to_string(), id);
                Some(id)
            }
        }
    }

    /// Adds `delta` to the metric `name`.
    fn add(&self, kind: MetricType, name: &str, delta: i64) {
        if let Some(id) = self.id(kind, name) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    /// `airlock.vm_memory_bytes`: the filter's VMs' memory (wasm memory
    /// only grows, so this is their high-water mark), and
    /// `airlock.token_cache_entries`: the verified tokens they hold. Stats
    /// are Envoy's, shared by every VM (each worker's and the main
    /// thread's), so each VM adds its change and the gauges are the sums.
    pub fn memory(&self, vm_memory_bytes: usize, token_cache_entries: usize) {
        let (memory_before, entries_before) = self
            .memory_reported
            .replace((vm_memory_bytes, token_cache_entries));
        self.add(
            MetricType::Gauge,
            "airlock.vm_memory_bytes",
            change(vm_memory_bytes, memory_before),
        );
        self.add(
            MetricType::Gauge,
            "airlock.token_cache_entries",
            change(token_cache_entries, entries_before),
        );
    }

    /// Defines, at zero, the counters an alert watches for an increase.
    /// Prometheus sees a counter's first increase only from a sample before
    /// it: one first defined at its first count would be born at that count,
    /// and a single burst of drops would never raise the alert.
    pub fn define_alerted(&self) {
        self.add_counter(AUDIT_DROPPED, 0);
    }

    pub fn add_counter(&self, name: &str, count: u64) {
        self.add(
            MetricType::Counter,
            name,
            i64::try_from(count).unwrap_or(i64::MAX),
        );
    }

    /// `airlock.requests.<decision>`: requests by decision.
    pub fn decision(&self, action: Action) {
        self.decision_label(&action.to_string());
    }

    pub fn decision_label(&self, label: &str) {
        self.add_counter(&format!("airlock.requests.{label}"), 1);
    }

    /// `airlock.dry_run.<action>`: what dry-run policies would have done
    /// where it differs from what the enforced ones did.
    pub fn dry_run(&self, action: &str) {
        self.add_counter(&format!("airlock.dry_run.{action}"), 1);
    }

    /// `airlock.token_failures.<reason>`: refused tokens by reason.
    pub fn token_failure(&self, reason: &str) {
        self.add_counter(&format!("airlock.token_failures.{reason}"), 1);
    }

    /// `airlock.key_waiters`: calls waiting for refetched signing keys right now.
    pub fn key_waiters(&self, delta: i64) {
        self.add(MetricType::Gauge, "airlock.key_waiters", delta);
    }

    /// `airlock.audit.pending`: audit events queued or in flight, not yet
    /// taken by the approval service (a sum over the sidecar's VMs).
    pub fn audit_pending(&self, delta: i64) {
        self.add(MetricType::Gauge, "airlock.audit.pending", delta);
    }

    /// `airlock.holds_in_progress`: calls held for approval right now.
    pub fn hold_started(&self) {
        self.add(MetricType::Gauge, "airlock.holds_in_progress", 1);
    }

    pub fn hold_ended(&self) {
        self.add(MetricType::Gauge, "airlock.holds_in_progress", -1);
    }
}

/// What a gauge reported as `before` must add to read `now`.
pub fn change(now: usize, before: usize) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
}
