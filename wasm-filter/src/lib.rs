//! Airlock's Envoy filter (proxy-wasm): host glue only.
//!
//! Every decision is made by `airlock_policy::gateway`; this crate translates
//! Envoy's callbacks into calls on it and its answers back into host calls.
//! Signing keys and policy are fetched once per Envoy: the VMs (one per
//! worker) elect a leader through shared data, the leader fetches, and every
//! VM reads what it published. Session bindings live in shared data too.

mod audit;
mod holds;
mod keys;
mod leader;
mod metrics;
mod policy_sync;
mod service;
mod sessions;
mod shared;
mod stream;

use airlock_policy::gateway::auth::TokenCache;
use airlock_policy::gateway::config::FilterConfig;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AirlockRoot::default()) });
}}

/// The response header that names the filter version on every answer.
pub const FILTER_HEADER: &str = "x-airlock-filter";

/// What every stream of one VM shares.
pub(crate) struct Gateway {
    pub(crate) config: FilterConfig,
    pub(crate) policy: RefCell<policy_sync::PolicyState>,
    pub(crate) keys: RefCell<keys::KeyState>,
    pub(crate) tokens: RefCell<TokenCache>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) audit: RefCell<audit::AuditQueue>,
    /// Calls waiting for refetched signing keys on this worker.
    pub(crate) key_waiters: std::cell::Cell<usize>,
    /// Held calls whose caller went away, to cancel.
    pub(crate) cancellations: RefCell<holds::Cancellations>,
}

pub(crate) fn now_seconds(context: &dyn Context) -> u64 {
    now_millis(context) / 1000
}

pub(crate) fn now_millis(context: &dyn Context) -> u64 {
    context
        .get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Default)]
struct AirlockRoot {
    gateway: Option<Rc<Gateway>>,
    leadership: leader::Leadership,
}

impl Context for AirlockRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(gateway) = &self.gateway {
            let status = self.get_http_call_response_header(":status");
            let body = self.get_http_call_response_body(0, body_size);
            let (status, body) = (status.as_deref(), body.as_deref());
            let now_ms = now_millis(self);
            let now = now_ms / 1000;
            // Each callout belongs to one of these; the others pass on it.
            let _handled = gateway
                .keys
                .borrow_mut()
                .on_fetched(token, status, body, now_ms)
                || gateway
                    .policy
                    .borrow_mut()
                    .on_polled(&gateway.config, token, status, body, now)
                || gateway
                    .audit
                    .borrow_mut()
                    .on_flushed(token, status, now, &gateway.metrics)
                || gateway
                    .cancellations
                    .borrow_mut()
                    .on_answered(token, status);
            // A backlog of audit events goes out batch after batch, not one batch a tick.
            gateway
                .audit
                .borrow_mut()
                .flush(&gateway.config, now, &gateway.metrics);
        }
    }
}

/// The module's linear memory, in bytes.
fn vm_memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    return core::arch::wasm32::memory_size(0) * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    return 0;
}

impl RootContext for AirlockRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!("airlock: no plugin configuration");
            return false;
        };
        let config = match FilterConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("airlock: {e}");
                return false;
            }
        };
        let metrics = metrics::Metrics::default();
        metrics.define_alerted();
        self.gateway = Some(Rc::new(Gateway {
            tokens: RefCell::new(TokenCache::new(config.token_cache_entries)),
            keys: RefCell::new(keys::KeyState::new(&config)),
            policy: RefCell::new(policy_sync::PolicyState::new()),
            audit: RefCell::new(audit::AuditQueue::new(
                config.audit_queue_events,
                holds::unique_key(self.get_current_time()),
            )),
            key_waiters: std::cell::Cell::new(0),
            cancellations: RefCell::default(),
            config,
            metrics,
        }));
        self.set_tick_period(Duration::from_millis(500));
        true
    }

    fn on_tick(&mut self) {
        if let Some(gateway) = self.gateway.clone() {
            let now_ms = now_millis(self);
            let now = now_ms / 1000;
            if self.leadership.hold_lease(now) {
                gateway.keys.borrow_mut().lead(now_ms);
                gateway.policy.borrow_mut().lead(&gateway.config, now);
            }
            gateway.keys.borrow_mut().sync();
            gateway.policy.borrow_mut().sync(&gateway.config);
            gateway
                .audit
                .borrow_mut()
                .flush(&gateway.config, now, &gateway.metrics);
            gateway.cancellations.borrow_mut().send(&gateway.config);
            gateway
                .metrics
                .memory(vm_memory_bytes(), gateway.tokens.borrow().len());
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration the stream refuses everything.
        Some(Box::new(stream::AirlockStream::new(self.gateway.clone())))
    }
}
