//! Token decoding and claims checks must never panic, whatever the bytes.
#![no_main]

use airlock_policy::entra::{OverageAction, TrustConfig, principal};
use airlock_policy::jwt::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|token: &str| {
    if let Ok(decoded) = decode(token) {
        let config = TrustConfig {
            tenants: vec!["t".into()],
            audiences: vec!["a".into()],
            clock_skew_seconds: 60,
            allow_app_only: true,
            groups_overage: OverageAction::Deny,
            issuers: Vec::new(),
        };
        let _ = principal(&decoded.claims, &config, 1_800_000_000);
    }
});
