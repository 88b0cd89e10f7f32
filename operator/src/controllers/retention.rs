//! Decided ApprovalRequests are deleted once they have been settled for
//! longer than the retention (30 days by default): the audit trail keeps
//! the record, the API server does not have to. Waiting requests are never
//! deleted — the sweeper expires them first.

use super::Context;
use crate::crd::{ApprovalRequest, Phase};
use airlock_policy::audit::parse_rfc3339;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks for requests past retention.
const EVERY: Duration = Duration::from_secs(60);

/// When `request` was last acted on: its expiry, its approval, or its latest decision.
pub fn settled_at(request: &ApprovalRequest) -> Option<u64> {
    let status = request.status.clone().unwrap_or_default();
    if matches!(status.phase, Phase::Pending | Phase::InfoRequested) {
        return None;
    }
    std::iter::once(request.spec.expires_at.as_str())
        .chain(status.approved_at.as_deref())
        .chain(status.decisions.iter().filter_map(|d| d.time.as_deref()))
        .filter_map(parse_rfc3339)
        .max()
}

/// Deletes settled requests older than `retention`, every minute, forever.
pub async fn run(context: Arc<Context>, retention: Duration) {
    let requests: Api<ApprovalRequest> = Api::all(context.client.clone());
    loop {
        let now = crate::approvals::time::now_seconds();
        match requests.list(&ListParams::default()).await {
            Ok(list) => {
                for request in list.items {
                    let past = settled_at(&request)
                        .is_some_and(|at| at.saturating_add(retention.as_secs()) < now);
                    if !past {
                        continue;
                    }
                    let api: Api<ApprovalRequest> = Api::namespaced(
                        context.client.clone(),
                        &request.namespace().unwrap_or_default(),
                    );
                    match api
                        .delete(&request.name_any(), &DeleteParams::default())
                        .await
                    {
                        Ok(_) => crate::log::info(
                            "retention",
                            &format!("deleted {} (settled past retention)", request.name_any()),
                        ),
                        Err(e) => crate::log::error(
                            "retention",
                            &format!("deleting {}: {e}", request.name_any()),
                        ),
                    }
                }
            }
            Err(e) => crate::log::error("retention", &format!("listing requests: {e}")),
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(phase: &str, expires: &str, decided: Option<&str>) -> ApprovalRequest {
        let decisions: Vec<_> = decided
            .into_iter()
            .map(|time| json!({"user": "lea", "uid": "o", "tenant": "t", "verdict": "Deny", "time": time}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "mcp.airlock.dev/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": "ar-1", "namespace": "ml"},
            "spec": {
                "server": "ml/models",
                "requester": {"tid": "t", "oid": "o"},
                "call": {"method": "tools/call", "argumentsDigest": "sha256:00"},
                "requirements": [{"rule": "r", "policyVersion": "1", "minApprovals": 1}],
                "summary": "s", "requestedAt": "2026-01-01T00:00:00Z", "expiresAt": expires,
            },
            "status": {"phase": phase, "decisions": decisions},
        }))
        .unwrap()
    }

    #[test]
    fn only_settled_requests_have_a_settled_time_the_latest_of_their_times() {
        assert_eq!(
            settled_at(&request("Pending", "2026-01-01T01:00:00Z", None)),
            None
        );
        let expired = request("Expired", "2026-01-01T01:00:00Z", None);
        assert_eq!(settled_at(&expired), parse_rfc3339("2026-01-01T01:00:00Z"));
        let decided_late = request(
            "Denied",
            "2026-01-01T01:00:00Z",
            Some("2026-01-02T00:00:00Z"),
        );
        assert_eq!(
            settled_at(&decided_late),
            parse_rfc3339("2026-01-02T00:00:00Z")
        );
    }
}
