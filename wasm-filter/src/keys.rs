//! Signing keys, fetched once per Envoy.
//!
//! Envoy runs one VM per worker. The VMs elect a leader through a lease in
//! shared data (compare-and-set); only the leader fetches each tenant's JWKS,
//! through the Envoy cluster the configuration names, and publishes the body
//! in shared data. Every VM re-reads a key set when its shared-data version
//! changes. An unknown `kid` asks the leader for a refresh, honoured at most
//! every `jwksMinRefreshSeconds`; key sets are also refreshed hourly.

use airlock_policy::gateway::auth::KeyRing;
use airlock_policy::gateway::config::{FilterConfig, JwksEndpoint};
use airlock_policy::jwt::JwkSet;
use proxy_wasm::hostcalls;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

const LEADER_KEY: &str = "airlock/leader";
/// A leader that has not renewed its lease for this long is replaced.
const LEASE_SECONDS: u64 = 3;
const HOURLY: u64 = 3600;
/// Pause between failed first fetches.
const RETRY_SECONDS: u64 = 2;

fn keys_key(tenant: &str) -> String {
    format!("airlock/jwks/{tenant}")
}

fn refresh_key(tenant: &str) -> String {
    format!("airlock/jwks-refresh/{tenant}")
}

fn shared_u64(key: &str) -> Option<u64> {
    let (value, _) = hostcalls::get_shared_data(key).ok()?;
    std::str::from_utf8(&value?).ok()?.parse().ok()
}

/// Asks the leader to refetch `tenant`'s keys (a token named an unknown `kid`).
pub fn request_refresh(tenant: &str, now: u64) {
    let _ =
        hostcalls::set_shared_data(&refresh_key(tenant), Some(now.to_string().as_bytes()), None);
}

struct Tenant {
    endpoint: JwksEndpoint,
    /// Shared-data version of the key set this VM last parsed.
    seen: Option<u32>,
    last_fetch: Option<u64>,
}

pub struct KeyState {
    ring: KeyRing,
    tenants: Vec<Tenant>,
    instance: u64,
    in_flight: HashMap<u32, usize>,
}

impl KeyState {
    pub fn new(config: &FilterConfig) -> KeyState {
        let instance = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        KeyState {
            ring: KeyRing::default(),
            tenants: config
                .jwks
                .iter()
                .map(|endpoint| Tenant {
                    endpoint: endpoint.clone(),
                    seen: None,
                    last_fetch: None,
                })
                .collect(),
            instance,
            in_flight: HashMap::new(),
        }
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    fn hold_lease(&self, now: u64) -> bool {
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

    pub fn tick(&mut self, config: &FilterConfig, now: u64) {
        if self.hold_lease(now) {
            for index in 0..self.tenants.len() {
                if self.due(index, config, now) {
                    self.fetch(index, now);
                }
            }
        }
        self.sync();
    }

    /// Re-reads every key set whose shared-data version changed. Also called
    /// from a stream whose token names keys this VM has not read yet.
    pub fn sync(&mut self) {
        for tenant in &mut self.tenants {
            let key = keys_key(&tenant.endpoint.tenant);
            let Ok((Some(body), cas)) = hostcalls::get_shared_data(&key) else {
                continue;
            };
            if cas.is_some() && cas == tenant.seen {
                continue;
            }
            tenant.seen = cas;
            match JwkSet::from_json(&body) {
                Ok(set) => self.ring.set(&tenant.endpoint.tenant, set),
                Err(e) => log::error!(
                    "airlock: key set of tenant {} is unusable: {e}",
                    tenant.endpoint.tenant
                ),
            }
        }
    }

    fn due(&self, index: usize, config: &FilterConfig, now: u64) -> bool {
        if self.in_flight.values().any(|i| *i == index) {
            return false;
        }
        let tenant = &self.tenants[index];
        let published = hostcalls::get_shared_data(&keys_key(&tenant.endpoint.tenant))
            .ok()
            .and_then(|(v, _)| v)
            .is_some();
        let since = tenant.last_fetch.map(|at| now.saturating_sub(at));
        if !published {
            return since.is_none_or(|s| s >= RETRY_SECONDS);
        }
        let Some(since) = since else { return true };
        let asked = shared_u64(&refresh_key(&tenant.endpoint.tenant))
            .is_some_and(|at| tenant.last_fetch.is_none_or(|last| at >= last));
        since >= HOURLY || (asked && since >= config.jwks_min_refresh_seconds)
    }

    fn fetch(&mut self, index: usize, now: u64) {
        let tenant = &mut self.tenants[index];
        tenant.last_fetch = Some(now);
        let endpoint = &tenant.endpoint;
        let headers = vec![
            (":method", "GET"),
            (":path", endpoint.path.as_str()),
            (":authority", endpoint.authority.as_str()),
            ("accept", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &endpoint.cluster,
            headers,
            None,
            vec![],
            Duration::from_secs(5),
        ) {
            Ok(token) => {
                self.in_flight.insert(token, index);
            }
            Err(status) => log::error!(
                "airlock: cannot fetch keys of tenant {} through cluster {}: {status:?}",
                endpoint.tenant,
                endpoint.cluster
            ),
        }
    }

    /// A key-set fetch finished; a failed callout arrives with no status.
    pub fn on_fetched(&mut self, token: u32, status: Option<&str>, body: Option<&[u8]>) {
        let Some(index) = self.in_flight.remove(&token) else {
            return;
        };
        let tenant = &self.tenants[index].endpoint.tenant;
        match (status, body) {
            (Some("200"), Some(body)) => match JwkSet::from_json(body) {
                Ok(_) => {
                    if let Err(e) = hostcalls::set_shared_data(&keys_key(tenant), Some(body), None)
                    {
                        log::error!("airlock: cannot publish keys of tenant {tenant}: {e:?}");
                    }
                }
                Err(e) => log::error!("airlock: key set of tenant {tenant} refused: {e}"),
            },
            (status, _) => log::error!(
                "airlock: fetching keys of tenant {tenant} failed (status {})",
                status.unwrap_or("none: no answer")
            ),
        }
    }
}
