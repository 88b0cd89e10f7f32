//! The caps on held calls (`airlock_policy::gateway::hold_slots`), counted
//! in shared data so that every worker's VM sees the same count.

use crate::shared;
use airlock_policy::entra::Principal;
use airlock_policy::gateway::config::FilterConfig;
use airlock_policy::gateway::hold_slots::{Cap, Places, owner};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A held call's name for its release (`RELEASE_KEY_HEADER`): 128 random
/// bits in hex. Where the host gives no randomness (Envoy does: std's hash
/// maps need it too), the time in nanoseconds.
pub fn release_key(now: SystemTime) -> String {
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
