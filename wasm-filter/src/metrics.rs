//! Filter metrics, exposed through Envoy's stats (prefix `wasmcustom.`).

use airlock_policy::model::Action;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default)]
pub struct Metrics {
    ids: RefCell<HashMap<String, u32>>,
}

impl Metrics {
    fn increment(&self, name: String) {
        let id = {
            let mut ids = self.ids.borrow_mut();
            match ids.get(&name) {
                Some(id) => *id,
                None => match hostcalls::define_metric(MetricType::Counter, &name) {
                    Ok(id) => {
                        ids.insert(name, id);
                        id
                    }
                    Err(_) => return,
                },
            }
        };
        let _ = hostcalls::increment_metric(id, 1);
    }

    /// `airlock.requests.<decision>`: requests by decision.
    pub fn decision(&self, action: Action) {
        self.decision_label(&action.to_string());
    }

    pub fn decision_label(&self, label: &str) {
        self.increment(format!("airlock.requests.{label}"));
    }

    /// `airlock.token_failures.<reason>`: refused tokens by reason.
    pub fn token_failure(&self, reason: &str) {
        self.increment(format!("airlock.token_failures.{reason}"));
    }
}
