//! The JSON-RPC classifier must never panic, and whatever it accepts must
//! digest the same when re-serialized (one meaning, one digest).
#![no_main]

use airlock_policy::mcp::{ProtocolVersion, RequestContext, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for version in ProtocolVersion::ALL {
        let ctx = RequestContext {
            protocol_version: Some(version),
            ..Default::default()
        };
        let Ok(envelope) = classify(body, &ctx) else { continue };
        for message in &envelope.messages {
            if let (Some(params), Some(digest)) = (&message.params, &message.params_digest) {
                let again = airlock_policy::json::parse_default(params.to_string().as_bytes())
                    .expect("accepted params re-parse");
                assert_eq!(
                    &airlock_policy::canonical::params_digest(Some(&again)),
                    digest
                );
            }
        }
    }
});
