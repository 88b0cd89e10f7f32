//! Caps on calls held at once, per gateway and per caller.
//!
//! Each held call keeps an Envoy stream open with its body, for up to
//! `maxHoldSeconds`: without a cap, one caller (or a stolen token) could
//! hold the sidecar's memory and connections. The approval service caps
//! pending requests per caller across gateways; these caps protect each
//! gateway.
//!
//! The places live in shared data, which every worker's VM sees, as the
//! holds' deadlines and callers. A hold gives its place back when it ends; a
//! place whose deadline is long past is dropped on the next write, so a VM
//! that crashed mid-hold cannot leave a caller refused for good.

use super::reply::{Refusal, codes};
use crate::canonical::sha256_hex;
use crate::model::Action;

/// How long past its deadline a place still counts: a hold's last
/// long-poll, then spending the grant, may outlast the deadline a little.
pub const GRACE_SECONDS: u64 = 60;

/// The places taken at one gateway: each held call's deadline and caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places(Vec<(u64, String)>);

/// Who holds a place: a short digest of the caller's tenant and object ID
/// (shared data needs no names).
pub fn owner(tenant_id: &str, object_id: &str) -> String {
    // "sha256:" and the first 8 bytes in hex.
    sha256_hex(format!("{tenant_id}/{object_id}").as_bytes())[7..23].to_string()
}

impl Places {
    /// Reads the shared-data form: `deadline:owner` entries separated by
    /// spaces. What does not read as one is dropped.
    pub fn decode(text: &[u8]) -> Places {
        let text = String::from_utf8_lossy(text);
        Places(
            text.split(' ')
                .filter_map(|entry| {
                    let (deadline, owner) = entry.split_once(':')?;
                    Some((deadline.parse().ok()?, owner.to_string()))
                })
                .collect(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let entries: Vec<String> = self.0.iter().map(|(d, o)| format!("{d}:{o}")).collect();
        entries.join(" ").into_bytes()
    }

    /// Places still in use at `now`.
    pub fn in_use(&self, now: u64) -> usize {
        self.0.iter().filter(|(d, _)| still_held(*d, now)).count()
    }

    /// Takes a place for `owner`'s hold ending at `deadline`, unless the
    /// owner or the gateway is at its cap; forgets places long past their
    /// deadline either way.
    pub fn take(
        &mut self,
        now: u64,
        deadline: u64,
        owner: &str,
        per_caller: usize,
        total: usize,
    ) -> Result<(), Cap> {
        self.0.retain(|(d, _)| still_held(*d, now));
        if self.0.iter().filter(|(_, o)| o == owner).count() >= per_caller {
            return Err(Cap::Caller(per_caller));
        }
        if self.0.len() >= total {
            return Err(Cap::Gateway(total));
        }
        self.0.push((deadline, owner.to_string()));
        Ok(())
    }

    /// Gives back one place `owner` took for `deadline`.
    pub fn give_back(&mut self, deadline: u64, owner: &str) {
        if let Some(at) = self
            .0
            .iter()
            .position(|(d, o)| *d == deadline && o == owner)
        {
            self.0.swap_remove(at);
        }
    }
}

fn still_held(deadline: u64, now: u64) -> bool {
    deadline.saturating_add(GRACE_SECONDS) >= now
}

/// Which cap a call would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The caller's own held calls at this gateway.
    Caller(usize),
    /// All held calls at this gateway.
    Gateway(usize),
}

impl Cap {
    /// The refusal of a call that needs approval past the cap: nothing was
    /// asked of the approval service.
    pub fn refusal(&self, rule: Option<&str>) -> Refusal {
        let reason = match self {
            Cap::Caller(limit) => format!(
                "This call needs approval, and {limit} of your calls are already held at this gateway (its limit per caller), so Airlock refused it without asking; retry once those are decided."
            ),
            Cap::Gateway(limit) => format!(
                "This call needs approval, and this gateway already holds {limit} calls (its limit), so Airlock refused it without asking; retry shortly."
            ),
        };
        Refusal {
            code: codes::HOLDS_FULL,
            reason,
            decision: Action::RequireApproval.to_string(),
            rule: rule.map(str::to_string),
            approval: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(deadline: u64, owner: &str) -> (u64, String) {
        (deadline, owner.to_string())
    }

    #[test]
    fn places_round_trip_and_garbage_is_dropped() {
        let places = Places(vec![place(10, "a1"), place(20, "b2"), place(20, "b2")]);
        assert_eq!(places.encode(), b"10:a1 20:b2 20:b2");
        assert_eq!(Places::decode(&places.encode()), places);
        assert_eq!(Places::decode(b""), Places::default());
        assert_eq!(
            Places::decode(b"10:a x:b  -3:c 30:d 40 \xff"),
            Places(vec![place(10, "a"), place(30, "d")])
        );
    }

    #[test]
    fn owners_are_short_and_tell_callers_apart() {
        let ada = owner("t1", "oid-ada");
        assert_eq!(ada.len(), 16);
        assert_eq!(ada, owner("t1", "oid-ada"));
        assert_ne!(ada, owner("t2", "oid-ada"));
        assert_ne!(ada, owner("t1", "oid-bob"));
    }

    #[test]
    fn a_caller_takes_places_up_to_its_cap_and_gives_each_back_once() {
        let mut places = Places::default();
        assert_eq!(places.take(100, 150, "ada", 2, 10), Ok(()));
        assert_eq!(places.take(100, 150, "ada", 2, 10), Ok(()));
        assert_eq!(places.take(100, 160, "ada", 2, 10), Err(Cap::Caller(2)));
        assert_eq!(
            places.take(100, 160, "bob", 2, 10),
            Ok(()),
            "others are not capped by ada"
        );
        places.give_back(150, "ada");
        assert_eq!(places.in_use(100), 2);
        assert_eq!(places.take(100, 160, "ada", 2, 10), Ok(()));
        // Giving back what was never taken changes nothing.
        places.give_back(150, "bob");
        places.give_back(999, "ada");
        assert_eq!(places.in_use(100), 3);
    }

    #[test]
    fn the_gateway_cap_counts_every_caller() {
        let mut places = Places::default();
        assert_eq!(places.take(100, 150, "ada", 5, 2), Ok(()));
        assert_eq!(places.take(100, 150, "bob", 5, 2), Ok(()));
        assert_eq!(places.take(100, 150, "cy", 5, 2), Err(Cap::Gateway(2)));
    }

    #[test]
    fn places_long_past_their_deadline_no_longer_count() {
        let mut places = Places(vec![place(100, "ada"), place(100, "ada")]);
        let later = 100 + GRACE_SECONDS;
        assert_eq!(places.in_use(later), 2, "within the grace");
        assert_eq!(
            places.take(later, later + 50, "ada", 2, 10),
            Err(Cap::Caller(2))
        );
        assert_eq!(places.in_use(later + 1), 0, "a crashed VM's places");
        assert_eq!(places.take(later + 1, later + 50, "ada", 2, 10), Ok(()));
        assert_eq!(places, Places(vec![place(later + 50, "ada")]));
    }

    #[test]
    fn each_cap_says_which_limit_and_asks_nothing() {
        let caller = Cap::Caller(20).refusal(Some("deploy-to-prod"));
        assert_eq!(caller.code, codes::HOLDS_FULL);
        assert!(
            caller.reason.contains("20 of your calls"),
            "{}",
            caller.reason
        );
        assert_eq!(caller.rule.as_deref(), Some("deploy-to-prod"));
        assert_eq!(caller.approval, None);
        let gateway = Cap::Gateway(256).refusal(None);
        assert!(gateway.reason.contains("already holds 256 calls"));
        assert_eq!(gateway.decision, "RequireApproval");
    }
}
