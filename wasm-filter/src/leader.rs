//! One leader among the VMs of an Envoy (one VM per worker), elected through
//! a lease in shared data with compare-and-set. Only the leader fetches what
//! every VM needs (signing keys, policy) and publishes it in shared data.

use proxy_wasm::hostcalls;
use std::hash::{BuildHasher, Hasher};

const LEADER_KEY: &str = "airlock/leader";
/// A leader that has not renewed its lease for this long is replaced.
const LEASE_SECONDS: u64 = 3;

pub struct Leadership {
    instance: u64,
}

impl Default for Leadership {
    fn default() -> Leadership {
        Leadership {
            instance: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        }
    }
}

impl Leadership {
    /// Takes or renews the lease; true while this VM leads.
    pub fn hold_lease(&self, now: u64) -> bool {
        let Ok((current, cas)) = hostcalls::get_shared_data(LEADER_KEY) else {
            return false;
        };
        let holder = current
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split_once(':'))
            .and_then(|(id, at)| Some((id.parse::<u64>().ok()?, at.parse::<u64>().ok()?)));
        let ours = holder.is_some_and(|(id, _)| id == self.instance);
        let expired = holder.is_none_or(|(_, at)| now.saturating_sub(at) > LEASE_SECONDS);
        if !(ours || expired) {
            return false;
        }
        let lease = format!("{}:{now}", self.instance);
        hostcalls::set_shared_data(LEADER_KEY, Some(lease.as_bytes()), cas).is_ok()
    }
}

/// A value published in shared data, re-read by a VM only when its version changed.
pub struct Published {
    key: String,
    seen: Option<u32>,
}

impl Published {
    pub fn new(key: impl Into<String>) -> Published {
        Published {
            key: key.into(),
            seen: None,
        }
    }

    /// The value, if it changed since this VM last read it.
    pub fn changed(&mut self) -> Option<Vec<u8>> {
        let Ok((Some(value), cas)) = hostcalls::get_shared_data(&self.key) else {
            return None;
        };
        if cas.is_some() && cas == self.seen {
            return None;
        }
        self.seen = cas;
        Some(value)
    }

    pub fn is_published(&self) -> bool {
        matches!(hostcalls::get_shared_data(&self.key), Ok((Some(_), _)))
    }

    pub fn publish(&self, value: &[u8]) -> Result<(), proxy_wasm::types::Status> {
        hostcalls::set_shared_data(&self.key, Some(value), None)
    }
}
