//! Audit events for what the gateway saw and did: one per JSON-RPC message,
//! or one for a request refused before its messages could be judged.

use super::judge::Judged;
use super::reply::Reply;
use crate::audit::{AuditEvent, AuditPrincipal, captured_message, keep};
use crate::entra::Principal;
use crate::evaluate::{Call, argument_outcomes};
use crate::mcp::{Envelope, Message, MessageKind};
use crate::model::{Capture, CompiledPolicy};
use serde_json::{Map, Value};

/// What every event of one HTTP request shares.
#[derive(Debug, Clone, Default)]
pub struct Seen<'a> {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// `namespace/name` of the McpServer.
    pub server: &'a str,
    pub principal: Option<&'a Principal>,
    pub session: Option<String>,
    pub protocol_version: Option<&'a str>,
}

impl Seen<'_> {
    /// The shared fields, with `principal` as the event records it.
    fn event(&self, principal: Option<AuditPrincipal>) -> AuditEvent {
        AuditEvent {
            time: self.time.clone(),
            kind: "message".into(),
            server: self.server.to_string(),
            principal,
            session: self.session.clone(),
            protocol_version: self.protocol_version.map(str::to_string),
            ..AuditEvent::default()
        }
    }
}

/// What the trail keeps of a judged body.
#[derive(Debug, Default)]
pub struct Kept {
    /// One event per message, with the decision, the rule that made it, and
    /// the arguments (or whole message) where the deciding rules capture them.
    pub events: Vec<AuditEvent>,
    /// Where a deciding rule captures the session: the pointers to redact in
    /// the server's answer, which is then captured too.
    pub answer_redact: Option<Vec<String>>,
}

pub fn judged_events(
    seen: &Seen<'_>,
    envelope: &Envelope,
    judged: &Judged,
    policies: &[CompiledPolicy],
) -> Kept {
    let mut kept = Kept::default();
    let mut principal = seen.principal.map(|p| AuditPrincipal::judged(p, policies));
    let last = envelope.messages.len().saturating_sub(1);
    for (index, (message, verdict)) in envelope.messages.iter().zip(&judged.verdicts).enumerate() {
        // One copy per event; the last event takes the original.
        let principal = if index == last {
            principal.take()
        } else {
            principal.clone()
        };
        let decision = verdict.decision.as_ref();
        let keep = decision.map(|d| keep(policies, d)).unwrap_or_default();
        let session = keep.capture == Capture::Session;
        kept.events.push(AuditEvent {
            request: session.then(|| captured_message(&message_json(message), &keep.redact)),
            method: message.method.clone(),
            target: message.target.name().map(str::to_string),
            arguments_digest: message.params_digest.clone(),
            arguments: keep.arguments(message.arguments.as_ref()),
            argument_tests: match (decision, message.method.as_deref()) {
                (Some(_), Some(method)) => argument_outcomes(
                    policies,
                    &Call {
                        method,
                        target: &message.target,
                        arguments: message.arguments.as_ref(),
                    },
                ),
                _ => Default::default(),
            },
            // A response to the server is not policed.
            decision: Some(decision.map_or("Response".into(), |d| d.action.to_string())),
            rule: decision.map(|d| d.reason()),
            dry_run: decision.and_then(|d| {
                d.dry_run
                    .iter()
                    .find(|v| v.action > d.action)
                    .map(|v| format!("{} {}", v.action, v.policy))
            }),
            ..seen.event(principal)
        });
        if session {
            kept.answer_redact
                .get_or_insert_with(Vec::new)
                .extend(keep.redact);
        }
    }
    kept
}

/// A client message as JSON again, from what classification kept of it.
fn message_json(message: &Message) -> Value {
    let mut json = Map::new();
    json.insert("jsonrpc".into(), "2.0".into());
    if let MessageKind::Request { id } = &message.kind {
        json.insert("id".into(), id.to_json());
    }
    if let Some(method) = &message.method {
        json.insert("method".into(), method.as_str().into());
    }
    if let Some(params) = &message.params {
        json.insert("params".into(), params.clone());
    }
    Value::Object(json)
}

/// The event of a request refused before judging (no token, malformed body,
/// foreign session, no policy yet), classified from the refusal itself.
pub fn refused_event(seen: &Seen<'_>, reply: &Reply) -> AuditEvent {
    AuditEvent {
        decision: Some(refusal_kind(reply).into()),
        reason: refusal_reason(reply),
        ..seen.event(seen.principal.map(AuditPrincipal::from))
    }
}

fn refusal_kind(reply: &Reply) -> &'static str {
    match reply.status {
        401 => "Unauthenticated",
        403 if reply.header("www-authenticate").is_some() => "Forbidden",
        404 => "SessionRefused",
        503 => "Unavailable",
        _ => "Invalid",
    }
}

/// The sentence a refusal gives its reader, whatever its shape: a plain HTTP
/// error, a JSON-RPC error, a `CallToolResult`, or a batch of them.
pub fn refusal_reason(reply: &Reply) -> Option<String> {
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    let first = match &body {
        Value::Array(answers) => answers.first()?,
        other => other,
    };
    let text = first
        .pointer("/message")
        .or_else(|| first.pointer("/error/message"))
        .or_else(|| first.pointer("/result/content/0/text"))?;
    text.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entra::test_principal;
    use crate::gateway::judge::{Answering, Outcome, judge};
    use crate::gateway::reply::{credentials_required, error_object, error_response};
    use crate::mcp::{ProtocolVersion, RequestContext, classify};
    use crate::model::ApprovalPolicySpec;
    use serde_json::json;

    fn policies() -> Vec<CompiledPolicy> {
        let spec: ApprovalPolicySpec = serde_json::from_value(json!({
            "defaultAction": "Deny",
            "rules": [
                {"name": "status", "match": {"tools": ["get_status"]}, "action": "Allow",
                 "audit": {"capture": "Arguments", "redact": ["/token"]}},
                {"name": "handshake", "match": {"methods": ["ping"]}, "action": "Allow"}
            ]
        }))
        .unwrap();
        vec![spec.compile("ns/p", "1").unwrap()]
    }

    #[test]
    fn each_message_of_a_batch_yields_its_own_event() {
        let principal = test_principal("o", &[]);
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_status", "arguments": {"token": "s3cret", "env": "prod"}}},
            {"jsonrpc": "2.0", "id": 2, "method": "ping"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "read_secret"}}
        ]);
        let context = RequestContext {
            protocol_version: Some(ProtocolVersion::V2025_03_26),
            ..RequestContext::default()
        };
        let envelope = classify(body.to_string().as_bytes(), &context).unwrap();
        let policies = policies();
        let judged = judge(&envelope, &policies, &principal, Answering::JsonRpc);
        assert!(matches!(judged.outcome, Outcome::Refuse(_)));
        let seen = Seen {
            time: "2026-11-25T00:00:00Z".into(),
            server: "ns/s",
            principal: Some(&principal),
            session: Some("s-1".into()),
            protocol_version: Some("2025-03-26"),
        };
        let events = judged_events(&seen, &envelope, &judged, &policies).events;
        let summary: Vec<(Option<&str>, Option<&str>, Option<&str>)> = events
            .iter()
            .map(|e| {
                (
                    e.target.as_deref(),
                    e.decision.as_deref(),
                    e.rule.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some("get_status"), Some("Allow"), Some("ns/p/status")),
                (None, Some("Allow"), Some("ns/p/handshake")),
                (
                    Some("read_secret"),
                    Some("Deny"),
                    Some("ns/p/defaultAction")
                ),
            ]
        );
        assert_eq!(
            events[0].arguments,
            Some(json!({"token": "[redacted]", "env": "prod"}))
        );
        assert_eq!(events[1].arguments, None, "ping captures nothing");
        assert!(
            events
                .iter()
                .all(|e| e.principal.as_ref().is_some_and(|p| p.oid == "o")
                    && e.session.as_deref() == Some("s-1")
                    && e.arguments_digest.is_some())
        );
    }

    #[test]
    fn a_judged_caller_is_recorded_with_the_claims_the_policies_test() {
        let spec: ApprovalPolicySpec = serde_json::from_value(json!({
            "rules": [{"name": "status", "match": {"tools": ["get_status"]},
                       "principals": {"groups": ["eng", "leads"], "roles": ["Deployer"]},
                       "action": "Allow"}]
        }))
        .unwrap();
        let policies = vec![spec.compile("ns/p", "1").unwrap()];
        let principal = test_principal("o", &["eng", "hr", "sales"]);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_status"}});
        let envelope = classify(body.to_string().as_bytes(), &RequestContext::default()).unwrap();
        let judged = judge(&envelope, &policies, &principal, Answering::JsonRpc);
        let seen = Seen {
            principal: Some(&principal),
            ..Seen::default()
        };
        let events = judged_events(&seen, &envelope, &judged, &policies).events;
        let recorded = events[0].principal.clone().unwrap();
        assert_eq!(recorded.checked.groups, ["eng", "leads"]);
        assert_eq!(recorded.checked.roles, ["Deployer"]);
        assert_eq!(
            recorded.held.groups,
            ["eng"],
            "groups no policy names stay out"
        );
        assert!(recorded.held.roles.is_empty());
    }

    #[test]
    fn refusals_before_judging_are_classified_and_explained() {
        let seen = Seen {
            server: "ns/s",
            ..Seen::default()
        };
        let event = refused_event(&seen, &credentials_required("http://gw/.well-known"));
        assert_eq!(event.decision.as_deref(), Some("Unauthenticated"));
        assert_eq!(event.reason.as_deref(), Some("a bearer token is required"));
        let malformed = Reply::json(
            400,
            &error_response(None, error_object(-32700, "duplicate key \"id\"", None)),
        );
        let event = refused_event(&seen, &malformed);
        assert_eq!(event.decision.as_deref(), Some("Invalid"));
        assert_eq!(event.reason.as_deref(), Some("duplicate key \"id\""));
        assert_eq!(event.principal, None);
    }
}
