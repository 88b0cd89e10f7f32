//! Token decoding and claims checks must never panic, whatever the bytes.
#![no_main]

use airlock_policy::entra::{TrustConfig, principal};
use airlock_policy::jwt::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|token: &str| {
    if let Ok(decoded) = decode(token) {
        let config = TrustConfig {
            allow_app_only: true,
            ..TrustConfig::tenant("t", "a")
        };
        let _ = principal(&decoded.claims, &config, 1_800_000_000);
    }
});
