//! Calls to the approval service through its Envoy cluster, carrying the
//! gateway credential (local mode; in a cluster Envoy attaches it).

use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_policy::gateway::config::ApprovalEndpoint;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::time::Duration;

/// Sends one request through `cluster` (the endpoint's, or its hold
/// cluster); the answer reaches the calling context's
/// `on_http_call_response` under the returned token.
pub fn call(
    endpoint: &ApprovalEndpoint,
    cluster: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Status> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", endpoint.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(authorization) = &authorization {
        headers.push(("authorization", authorization.as_str()));
    }
    if let Some(credential) = &endpoint.credential {
        headers.push((GATEWAY_CREDENTIAL_HEADER, credential.as_str()));
    }
    hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout)
}
