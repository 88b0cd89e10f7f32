//! Held calls in the host: the caps on them
//! (`airlock_policy::gateway::hold_slots`), counted in shared data so that
//! every worker's VM sees the same count; the key naming each one's release;
//! and the cancellation of those whose caller went away.

use crate::{service, shared};
use airlock_policy::entra::Principal;
use airlock_policy::gateway::config::FilterConfig;
use airlock_policy::gateway::hold_slots::{Cap, Places, owner};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY: &str = "airlock/holds";

/// A held call's place, given back when it is dropped: when the hold ends,
/// or when the stream goes away with it.
pub struct HoldPlace {
    deadline: u64,
    owner: String,
}

impl HoldPlace {
    pub fn take(
        config: &FilterConfig,
        principal: &Principal,
        now: u64,
        deadline: u64,
    ) -> Result<HoldPlace, Cap> {
        let owner = owner(&principal.tenant_id, &principal.object_id);
        let taken = shared::update(KEY, |value| {
            let mut places = Places::decode(value.unwrap_or_default());
            let taken = places.take(
                now,
                deadline,
                &owner,
                config.max_holds_per_caller,
                config.max_holds,
            );
            (places.encode(), taken)
        });
        match taken {
            Some(Ok(())) => Ok(HoldPlace { deadline, owner }),
            Some(Err(cap)) => Err(cap),
            // Nothing could be counted: refuse, as a full gateway does.
            None => Err(Cap::Gateway(config.max_holds)),
        }
    }
}

impl Drop for HoldPlace {
    fn drop(&mut self) {
        shared::update(KEY, |value| {
            let mut places = Places::decode(value.unwrap_or_default());
            places.give_back(self.deadline, &self.owner);
            (places.encode(), ())
        });
    }
}

/// A name nothing else has: a held call's release key
/// (`RELEASE_KEY_HEADER`), a VM's sender name in audit event ids. 128
/// random bits in hex; where the host gives no randomness (Envoy does:
/// std's hash maps need it too), the time in nanoseconds.
pub fn unique_key(now: SystemTime) -> String {
    let mut bits = [0u8; 16];
    match getrandom::fill(&mut bits) {
        Ok(()) => bits.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => format!(
            "t{}",
            now.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ),
    }
}

/// Held calls whose caller went away, to be cancelled from the root
/// context: a stream that is ending gets no answer to a callout of its own.
#[derive(Default)]
pub struct Cancellations {
    /// What the approval service was told about each call, and the token
    /// of its caller, in whose name the request is cancelled.
    queued: Vec<(Vec<u8>, String)>,
    /// The call's target, by callout token, for the log.
    in_flight: HashMap<u32, String>,
}

impl Cancellations {
    pub fn add(&mut self, call: Vec<u8>, token: String) {
        self.queued.push((call, token));
    }

    /// Asks the approval service to cancel each queued call's request.
    pub fn send(&mut self, config: &FilterConfig) {
        for (call, token) in std::mem::take(&mut self.queued) {
            let request = service::Request {
                method: "POST",
                path: "/v1/approvals/cancel",
                bearer: Some(&token),
                release_key: None,
                body: Some(&call),
                timeout: Duration::from_secs(10),
            };
            let target = serde_json::from_slice::<serde_json::Value>(&call)
                .ok()
                .and_then(|c| c.pointer("/params/name")?.as_str().map(str::to_string))
                .unwrap_or_default();
            match service::call(&config.approvals, &config.approvals.cluster, request) {
                Ok(callout) => {
                    self.in_flight.insert(callout, target);
                }
                Err(status) => log::warn!(
                    "airlock: cannot cancel the held call {target}: {status:?}; its request expires in time"
                ),
            }
        }
    }

    /// The service's answer to a cancellation; false when `callout` is not one.
    pub fn on_answered(&mut self, callout: u32, status: Option<&str>) -> bool {
        let Some(target) = self.in_flight.remove(&callout) else {
            return false;
        };
        match status {
            Some("200") => {
                log::info!("airlock: cancelled the request for {target}: its caller went away")
            }
            // Decided (or expired) before the caller went: nothing to cancel.
            Some("404" | "409") => {
                log::info!(
                    "airlock: the request for {target} was settled before its caller went away"
                )
            }
            other => log::warn!(
                "airlock: the request for {target} stays open after its caller went away (the service answered {other:?}); it expires in time"
            ),
        }
        true
    }
}
