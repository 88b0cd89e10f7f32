//! Wall-clock helpers: seconds since the epoch and RFC 3339 (UTC) text.

pub use airlock_policy::audit::rfc3339;

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
