//! Calls to the approval service through its Envoy cluster, carrying the
//! gateway credential (local mode; in a cluster Envoy attaches it).

use airlock_policy::gateway::config::ApprovalEndpoint;
use airlock_policy::gateway::{GATEWAY_CREDENTIAL_HEADER, RELEASE_KEY_HEADER};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::time::Duration;

/// One request to the approval service.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The caller's token, for what the gateway asks in their name.
    pub bearer: Option<&'a str>,
    /// Names a held call's release.
    pub release_key: Option<&'a str>,
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// Sends `request` through `cluster` (the endpoint's, or its hold
/// cluster); the answer reaches the calling context's
/// `on_http_call_response` under the returned token.
pub fn call(endpoint: &ApprovalEndpoint, cluster: &str, request: Request) -> Result<u32, Status> {
    let authorization = request.bearer.map(|token| format!("Bearer {token}"));
    let mut headers = vec![
        (":method", request.method),
        (":path", request.path),
        (":authority", endpoint.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(authorization) = &authorization {
        headers.push(("authorization", authorization.as_str()));
    }
    if let Some(key) = request.release_key {
        headers.push((RELEASE_KEY_HEADER, key));
    }
    if let Some(credential) = &endpoint.credential {
        headers.push((GATEWAY_CREDENTIAL_HEADER, credential.as_str()));
    }
    hostcalls::dispatch_http_call(cluster, headers, request.body, vec![], request.timeout)
}
