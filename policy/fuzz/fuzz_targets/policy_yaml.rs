//! An ApprovalPolicy's YAML → spec → checked → compiled: never a panic.
//! Whatever passes the checks compiles (the check is the only gate), and
//! reaches a gateway as the same policy (the service sends it as JSON).
#![no_main]

use airlock_policy::gateway::config::{NamedPolicy, compile_all};
use airlock_policy::model::ApprovalPolicySpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    // A whole ApprovalPolicy document, or only its spec.
    let Ok(document) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return;
    };
    let spec = document.get("spec").cloned().unwrap_or(document);
    let Ok(spec) = serde_yaml::from_value::<ApprovalPolicySpec>(spec) else {
        return;
    };
    let Ok(policy) = NamedPolicy::checked("fuzz/policy".into(), spec) else {
        return;
    };
    let sent = serde_json::to_vec(&policy).expect("a checked policy serializes");
    let received: NamedPolicy = serde_json::from_slice(&sent).expect("the gateway reads it");
    assert_eq!(received, policy, "the policy changed on its way to the gateway");
    compile_all(&[received]).expect("a checked policy compiles");
});
