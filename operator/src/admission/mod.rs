//! The operator's admission webhooks: selector mode's sidecar injection
//! ([`injection`]), and a check of decisions. The latter is only for what the API server's own
//! admission policies (CEL) cannot check. CEL has no clock, so whether a
//! request has expired is asked here, by the operator's clock: a decision
//! written through the API server on a request past its expiry is refused
//! at once with the reason, even before the operator has marked the request
//! `Expired` (or while its sweeper is stopped). Everything else about a
//! decision is the admission policy `airlock-approver-decisions`.
//!
//! Served over TLS with a certificate from the operator's CA; every replica
//! writes that CA into the webhook configuration's `caBundle` at start.

use crate::approvals::time::now_seconds;
use crate::crd::ApprovalRequest;
use airlock_policy::audit::parse_rfc3339;
use axum::Json;
use axum::Router;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::json;

/// The chart's webhook configuration (`templates/webhook.yaml`).
pub const WEBHOOK_CONFIGURATION: &str = "airlock-approval-decisions";
/// Its one webhook.
const WEBHOOK: &str = "approval-decisions.mcp.airlock.dev";
/// The path it calls.
pub const DECISIONS_PATH: &str = "/validate/approval-decisions";

pub mod injection;

pub fn router(injector: std::sync::Arc<injection::Injector>) -> Router {
    Router::new()
        .route(DECISIONS_PATH, post(review_decision))
        .route(
            &format!("{}/{{namespace}}/{{name}}", injection::INJECT_PATH),
            post(injection::review),
        )
        .with_state(injector)
}

async fn review_decision(
    Json(review): Json<AdmissionReview<ApprovalRequest>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<ApprovalRequest> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let response = AdmissionResponse::from(&request);
    let response = match request
        .object
        .as_ref()
        .map(|r| still_open(r, now_seconds()))
    {
        Some(Ok(())) => response,
        Some(Err(reason)) => response.deny(reason),
        None => response.deny("no ApprovalRequest in the review"),
    };
    Json(response.into_review())
}

/// Whether `request` may still be decided at `now`: not past its expiry.
pub fn still_open(request: &ApprovalRequest, now: u64) -> Result<(), String> {
    let expires = &request.spec.expires_at;
    let at = parse_rfc3339(expires)
        .ok_or_else(|| format!("the request's expiresAt {expires:?} is not a time"))?;
    if now >= at {
        return Err(format!(
            "this request expired at {expires}: nothing can decide on it any more"
        ));
    }
    Ok(())
}

/// Writes `ca_pem` as the webhook's `caBundle`, so the API server trusts
/// the certificate this replica serves (server-side apply of that one
/// field; the chart owns the rest).
pub async fn publish_ca_bundle(client: kube::Client, ca_pem: &str) -> Result<(), kube::Error> {
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION},
        "webhooks": [{"name": WEBHOOK, "clientConfig": {"caBundle": bundle}}],
    });
    configurations
        .patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::apply("airlock-operator").force(),
            &Patch::Apply(patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ApprovalRequestSpec;

    fn request(expires: &str) -> ApprovalRequest {
        let spec: ApprovalRequestSpec = serde_json::from_value(json!({
            "server": "ml/models",
            "requester": {"tid": "t", "oid": "o"},
            "call": {"method": "tools/call", "argumentsDigest": "sha256:00"},
            "requirements": [{"rule": "ml/p/r", "policyVersion": "1", "minApprovals": 1}],
            "summary": "s",
            "requestedAt": "2026-01-01T00:00:00Z",
            "expiresAt": expires,
        }))
        .unwrap();
        ApprovalRequest::new("ar-1", spec)
    }

    #[test]
    fn a_request_past_its_expiry_cannot_be_decided() {
        let expires = parse_rfc3339("2026-01-01T00:30:00Z").unwrap();
        let open = request("2026-01-01T00:30:00Z");
        assert_eq!(still_open(&open, expires - 1), Ok(()));
        let refused = still_open(&open, expires).unwrap_err();
        assert!(
            refused.contains("expired at 2026-01-01T00:30:00Z"),
            "{refused}"
        );
        assert!(still_open(&request("soon"), 0).is_err());
    }
}
