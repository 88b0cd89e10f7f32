//! Signing keys, fetched once per Envoy.
//!
//! Envoy runs one VM per worker. Only the leader VM (see `leader`) fetches each tenant's JWKS,
//! through the Envoy cluster the configuration names, and publishes the body
//! in shared data. Every VM re-reads a key set when its shared-data version
//! changes. An unknown `kid` asks the leader for a refresh, honoured at most
//! every `jwksMinRefreshSeconds`; key sets are also refreshed hourly.

use crate::leader::Published;
use airlock_policy::gateway::auth::KeyRing;
use airlock_policy::gateway::config::{FilterConfig, JwksEndpoint};
use airlock_policy::jwt::JwkSet;
use proxy_wasm::hostcalls;
use std::collections::HashMap;
use std::time::Duration;

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
    keys: Published,
    last_fetch: Option<u64>,
}

pub struct KeyState {
    ring: KeyRing,
    tenants: Vec<Tenant>,
    in_flight: HashMap<u32, usize>,
}

impl KeyState {
    pub fn new(config: &FilterConfig) -> KeyState {
        KeyState {
            ring: KeyRing::default(),
            tenants: config
                .jwks
                .iter()
                .map(|endpoint| Tenant {
                    keys: Published::new(keys_key(&endpoint.tenant)),
                    endpoint: endpoint.clone(),
                    last_fetch: None,
                })
                .collect(),
            in_flight: HashMap::new(),
        }
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// On the leader: fetches every key set that is due.
    pub fn lead(&mut self, config: &FilterConfig, now: u64) {
        for index in 0..self.tenants.len() {
            if self.due(index, config, now) {
                self.fetch(index, now);
            }
        }
    }

    /// Re-reads every key set whose shared-data version changed. Also called
    /// from a stream whose token names keys this VM has not read yet.
    pub fn sync(&mut self) {
        for tenant in &mut self.tenants {
            let Some(body) = tenant.keys.changed() else {
                continue;
            };
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
        let published = tenant.keys.is_published();
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

    /// A key-set fetch finished (a failed callout arrives with no status);
    /// false when `token` is not one of this state's.
    pub fn on_fetched(&mut self, token: u32, status: Option<&str>, body: Option<&[u8]>) -> bool {
        let Some(index) = self.in_flight.remove(&token) else {
            return false;
        };
        let Tenant { endpoint, keys, .. } = &self.tenants[index];
        let tenant = &endpoint.tenant;
        match (status, body) {
            (Some("200"), Some(body)) => match JwkSet::from_json(body) {
                Ok(_) => {
                    if let Err(e) = keys.publish(body) {
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
        true
    }
}
