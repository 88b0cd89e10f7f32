//! Signing keys, fetched once per Envoy.
//!
//! Envoy runs one VM per worker. Only the leader VM (see `leader`) fetches each tenant's JWKS,
//! through the Envoy cluster the configuration names, and publishes the body
//! in shared data. Every VM re-reads a key set when its shared-data version
//! changes. Key sets are refreshed hourly, and when a token names an unknown
//! `kid`: the stream records a [`Refetch`] in shared data (at most one per
//! `jwksMinRefreshSeconds`, see `airlock_policy::gateway::key_refetch`), the
//! leader fetches and records it done, and the waiting streams look again.

use crate::leader::Published;
use airlock_policy::gateway::auth::KeyRing;
use airlock_policy::gateway::config::{FilterConfig, JwksEndpoint};
use airlock_policy::gateway::key_refetch::{Refetch, RefetchRules, UnknownKid, on_unknown_kid};
use airlock_policy::jwt::JwkSet;
use proxy_wasm::hostcalls;
use std::collections::HashMap;
use std::time::Duration;

const HOURLY_MS: u64 = 3_600_000;
/// Pause between failed first fetches.
const RETRY_MS: u64 = 2_000;

fn keys_key(tenant: &str) -> String {
    format!("airlock/jwks/{tenant}")
}

fn refetch_key(tenant: &str) -> String {
    format!("airlock/jwks-refetch/{tenant}")
}

/// `tenant`'s last refetch and the version to replace it at.
fn read_refetch(tenant: &str) -> (Option<Refetch>, Option<u32>) {
    match hostcalls::get_shared_data(&refetch_key(tenant)) {
        Ok((value, cas)) => (
            value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(Refetch::decode),
            cas,
        ),
        Err(_) => (None, None),
    }
}

/// Replaces `tenant`'s refetch record if it is still at version `cas`.
fn write_refetch(tenant: &str, refetch: Refetch, cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(&refetch_key(tenant), Some(refetch.encode().as_bytes()), cas).is_ok()
}

/// `tenant`'s last refetch asked for by an unknown `kid`.
pub fn last_refetch(tenant: &str) -> Option<Refetch> {
    read_refetch(tenant).0
}

/// A token names `kid`, unknown among `tenant`'s keys: asks for a refetch
/// when one is allowed, and says whether the token waits for it.
pub fn unknown_kid(rules: RefetchRules, tenant: &str, kid: &str, now_ms: u64) -> UnknownKid {
    let (last, cas) = read_refetch(tenant);
    match on_unknown_kid(rules, last, tenant, kid, now_ms) {
        UnknownKid::Wait { ask: Some(ask) } if !write_refetch(tenant, ask, cas) => {
            // Another worker wrote first: its record decides.
            on_unknown_kid(rules, last_refetch(tenant), tenant, kid, now_ms)
        }
        decided => decided,
    }
}

/// Records the refetch a fetch that began at `started_ms` answers as done.
fn finish_refetch(tenant: &str, started_ms: u64, now_ms: u64, fetched: bool) {
    if let (Some(asked), cas) = read_refetch(tenant)
        && asked.answered_by(started_ms)
    {
        let done = Refetch::Done {
            at_ms: now_ms,
            fetched,
        };
        if !write_refetch(tenant, done, cas) {
            log::warn!("airlock: the refetch record of tenant {tenant} changed under a fetch");
        }
    }
}

struct Tenant {
    endpoint: JwksEndpoint,
    keys: Published,
    last_fetch_ms: Option<u64>,
}

pub struct KeyState {
    ring: KeyRing,
    tenants: Vec<Tenant>,
    /// Fetches under way: the tenant's index and when the fetch began.
    in_flight: HashMap<u32, (usize, u64)>,
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
                    last_fetch_ms: None,
                })
                .collect(),
            in_flight: HashMap::new(),
        }
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// On the leader: fetches every key set that is due.
    pub fn lead(&mut self, now_ms: u64) {
        for index in 0..self.tenants.len() {
            if self.due(index, now_ms) {
                self.fetch(index, now_ms);
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

    fn due(&self, index: usize, now_ms: u64) -> bool {
        if self.in_flight.values().any(|(i, _)| *i == index) {
            return false;
        }
        let tenant = &self.tenants[index];
        let since = tenant.last_fetch_ms.map(|at| now_ms.saturating_sub(at));
        if !tenant.keys.is_published() {
            return since.is_none_or(|s| s >= RETRY_MS);
        }
        // Streams ask for refetches no more often than the configuration allows.
        since.is_none_or(|s| s >= HOURLY_MS)
            || Refetch::pending(last_refetch(&tenant.endpoint.tenant))
    }

    fn fetch(&mut self, index: usize, now_ms: u64) {
        let tenant = &mut self.tenants[index];
        tenant.last_fetch_ms = Some(now_ms);
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
                self.in_flight.insert(token, (index, now_ms));
            }
            Err(status) => {
                log::error!(
                    "airlock: cannot fetch keys of tenant {} through cluster {}: {status:?}",
                    endpoint.tenant,
                    endpoint.cluster
                );
                finish_refetch(&endpoint.tenant, now_ms, now_ms, false);
            }
        }
    }

    /// A key-set fetch finished (a failed callout arrives with no status);
    /// false when `token` is not one of this state's.
    pub fn on_fetched(
        &mut self,
        token: u32,
        status: Option<&str>,
        body: Option<&[u8]>,
        now_ms: u64,
    ) -> bool {
        let Some((index, started_ms)) = self.in_flight.remove(&token) else {
            return false;
        };
        let Tenant { endpoint, keys, .. } = &self.tenants[index];
        let tenant = &endpoint.tenant;
        let fetched = match (status, body) {
            (Some("200"), Some(body)) => match JwkSet::from_json(body) {
                Ok(_) => keys
                    .publish(body)
                    .map_err(|e| {
                        log::error!("airlock: cannot publish keys of tenant {tenant}: {e:?}")
                    })
                    .is_ok(),
                Err(e) => {
                    log::error!("airlock: key set of tenant {tenant} refused: {e}");
                    false
                }
            },
            (status, _) => {
                log::error!(
                    "airlock: fetching keys of tenant {tenant} failed (status {})",
                    status.unwrap_or("none: no answer")
                );
                false
            }
        };
        // Published first: a stream that sees the refetch done finds its keys.
        finish_refetch(tenant, started_ms, now_ms, fetched);
        true
    }
}
