//! Judging a parsed request body: one verdict per message, one outcome per body.

use super::reply::{Refusal, Reply, codes};
use crate::entra::Principal;
use crate::evaluate::{Call, Decision, evaluate};
use crate::mcp::{Envelope, Message, MessageKind};
use crate::model::{Action, CompiledPolicy};
use serde_json::Value;

/// The verdict on one message of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    /// `None` for responses, which answer the server and are not policed.
    pub decision: Option<Decision>,
}

/// What to do with a whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send it upstream unchanged.
    Forward,
    /// Answer it here.
    Refuse(Reply),
    /// The single message at this index needs approval.
    Hold { index: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub verdicts: Vec<MessageVerdict>,
    pub outcome: Outcome,
    /// `Allow`, `Deny` or `RequireApproval`: the most restrictive enforced action.
    pub action: Action,
    /// What dry-run policies would have done, when it differs (for a response header).
    pub dry_run: Option<String>,
}

/// Whether a refusal travels as an HTTP error (legacy transport: responses go
/// on the SSE stream, so a POST can only fail) or as a JSON-RPC answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    JsonRpc,
    HttpOnly,
}

fn call(message: &Message) -> Option<Call<'_>> {
    Some(Call {
        method: message.method.as_deref()?,
        target: &message.target,
        arguments: message.arguments.as_ref(),
    })
}

/// Describes a denial in words a model can act on.
pub fn denial(message: &Message, decision: &Decision) -> Refusal {
    let what = match (message.method.as_deref(), message.target.name()) {
        (Some(method), Some(name)) => format!("{method} {name}"),
        (Some(method), None) => method.to_string(),
        _ => "this message".to_string(),
    };
    let reason = if decision.deciding.is_empty() {
        format!("Airlock denied {what}: no policy governs this server, so every call is refused.")
    } else {
        format!(
            "Airlock denied {what}: policy {} does not allow it.",
            decision.reason()
        )
    };
    Refusal {
        code: codes::DENIED,
        reason,
        decision: Action::Deny.to_string(),
        rule: Some(decision.reason()),
        approval: None,
    }
}

/// Renders refusals for a body: per message for a batch, one answer otherwise.
pub fn refuse(envelope: &Envelope, refusals: &[(usize, Refusal)], answering: Answering) -> Reply {
    let first = refusals.first().map(|(_, r)| r.clone()).unwrap_or(Refusal {
        code: codes::DENIED,
        reason: "refused".into(),
        decision: Action::Deny.to_string(),
        rule: None,
        approval: None,
    });
    let answer = |index: usize, message: &Message| -> Option<Value> {
        let MessageKind::Request { id } = &message.kind else {
            return None;
        };
        let refusal = refusals
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Refusal {
                reason: format!(
                    "Airlock refused the whole batch because another message in it was refused: {}",
                    first.reason
                ),
                ..first.clone()
            });
        Some(if message.method.as_deref() == Some("tools/call") {
            refusal.tool_result(id)
        } else {
            refusal.error(Some(id))
        })
    };
    if answering == Answering::HttpOnly {
        return Reply::json(
            403,
            &first.error(envelope.messages.first().and_then(Message::id)),
        );
    }
    if envelope.batch {
        let answers: Vec<Value> = envelope
            .messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| answer(i, m))
            .collect();
        return Reply::json(200, &Value::Array(answers));
    }
    match envelope.messages.first().and_then(|m| answer(0, m)) {
        Some(body) => Reply::json(200, &body),
        // A refused notification has no id to answer: refuse at the HTTP level.
        None => Reply::json(403, &first.error(None)),
    }
}

/// Judges every message of `envelope` against `policies` for `principal`.
pub fn judge(
    envelope: &Envelope,
    policies: &[CompiledPolicy],
    principal: &Principal,
    answering: Answering,
) -> Judged {
    let verdicts: Vec<MessageVerdict> = envelope
        .messages
        .iter()
        .map(|m| MessageVerdict {
            decision: call(m).map(|c| evaluate(policies, principal, &c)),
        })
        .collect();
    let action = verdicts
        .iter()
        .filter_map(|v| v.decision.as_ref().map(|d| d.action))
        .max()
        .unwrap_or(Action::Allow);
    let dry_run = verdicts
        .iter()
        .filter_map(|v| v.decision.as_ref())
        .flat_map(|d| d.dry_run.iter())
        .filter(|v| v.action > action)
        .map(|v| format!("{} {}", v.action, v.policy))
        .next();
    let denied: Vec<(usize, Refusal)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let decision = v.decision.as_ref()?;
            (decision.action == Action::Deny).then(|| (i, denial(&envelope.messages[i], decision)))
        })
        .collect();
    let outcome = match action {
        Action::Allow => Outcome::Forward,
        Action::Deny => Outcome::Refuse(refuse(envelope, &denied, answering)),
        Action::RequireApproval if envelope.batch => {
            let held: Vec<(usize, Refusal)> = verdicts
                .iter()
                .enumerate()
                .filter(|(_, v)| v.decision.as_ref().is_some_and(|d| d.action == Action::RequireApproval))
                .map(|(i, _)| {
                    (
                        i,
                        Refusal {
                            code: codes::APPROVAL_PENDING,
                            reason: "Airlock holds calls that need approval only when they are sent alone, not in a batch; send this call by itself.".into(),
                            decision: Action::RequireApproval.to_string(),
                            rule: verdicts[i].decision.as_ref().map(Decision::reason),
                            approval: None,
                        },
                    )
                })
                .collect();
            Outcome::Refuse(refuse(envelope, &held, answering))
        }
        Action::RequireApproval => Outcome::Hold { index: 0 },
    };
    Judged {
        verdicts,
        outcome,
        action,
        dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::{ProtocolVersion, RequestContext, classify};
    use crate::model::ApprovalPolicySpec;
    use serde_json::json;

    fn policies(enforcement: &str) -> Vec<CompiledPolicy> {
        let spec: ApprovalPolicySpec = serde_json::from_value(json!({
            "defaultAction": "Allow",
            "enforcement": enforcement,
            "rules": [
                {"name": "no-secrets", "match": {"tools": ["read_secret"]}, "action": "Deny"},
                {"name": "deploy", "match": {"tools": ["deploy_model"]}, "action": "RequireApproval",
                 "approval": {"approvers": {"groups": ["leads"]}}}
            ]
        }))
        .unwrap();
        vec![spec.compile("ns/p", "1").unwrap()]
    }

    fn someone() -> Principal {
        crate::entra::test_principal("o", &[])
    }

    fn body(text: &str, version: ProtocolVersion) -> Envelope {
        classify(
            text.as_bytes(),
            &RequestContext {
                protocol_version: Some(version),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn tool(id: u32, name: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}"}}}}"#
        )
    }

    fn reply_json(outcome: &Outcome) -> (u16, Value) {
        let Outcome::Refuse(reply) = outcome else {
            panic!("not refused: {outcome:?}")
        };
        (reply.status, serde_json::from_slice(&reply.body).unwrap())
    }

    #[test]
    fn allows_denies_and_holds() {
        let p = policies("Enforce");
        let v = ProtocolVersion::V2025_06_18;
        assert_eq!(
            judge(
                &body(&tool(1, "echo"), v),
                &p,
                &someone(),
                Answering::JsonRpc
            )
            .outcome,
            Outcome::Forward
        );
        let denied = judge(
            &body(&tool(2, "read_secret"), v),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        let (status, answer) = reply_json(&denied.outcome);
        assert_eq!(status, 200);
        assert_eq!(answer["id"], 2);
        assert_eq!(answer["result"]["isError"], true);
        assert!(
            answer["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("ns/p/no-secrets")
        );
        let held = judge(
            &body(&tool(3, "deploy_model"), v),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        assert_eq!(held.outcome, Outcome::Hold { index: 0 });
        // Responses to the server's own requests are not policed.
        let response = judge(
            &body(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#, v),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        assert_eq!(response.outcome, Outcome::Forward);
    }

    #[test]
    fn other_methods_get_json_rpc_errors_and_notifications_http_errors() {
        let spec: ApprovalPolicySpec =
            serde_json::from_value(json!({"defaultAction": "Deny"})).unwrap();
        let p = vec![spec.compile("ns/closed", "1").unwrap()];
        let v = ProtocolVersion::V2025_06_18;
        let list = judge(
            &body(r#"{"jsonrpc":"2.0","id":"x","method":"tools/list"}"#, v),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        let (status, answer) = reply_json(&list.outcome);
        assert_eq!(
            (
                status,
                answer["id"].clone(),
                answer["error"]["code"].clone()
            ),
            (200, json!("x"), json!(codes::DENIED))
        );
        let note = judge(
            &body(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                v,
            ),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        assert_eq!(reply_json(&note.outcome).0, 403);
        let legacy = judge(
            &body(&tool(1, "x"), ProtocolVersion::V2024_11_05),
            &p,
            &someone(),
            Answering::HttpOnly,
        );
        assert_eq!(reply_json(&legacy.outcome).0, 403);
        let nobody = judge(&body(&tool(1, "x"), v), &[], &someone(), Answering::JsonRpc);
        let (_, answer) = reply_json(&nobody.outcome);
        assert!(
            answer["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("no policy")
        );
    }

    #[test]
    fn one_refusal_refuses_the_batch() {
        let p = policies("Enforce");
        let batch = format!(
            "[{},{},{}]",
            tool(1, "echo"),
            tool(2, "read_secret"),
            r#"{"jsonrpc":"2.0","method":"notifications/x"}"#
        );
        let judged = judge(
            &body(&batch, ProtocolVersion::V2025_03_26),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        let (status, answers) = reply_json(&judged.outcome);
        assert_eq!(status, 200);
        let answers = answers.as_array().unwrap();
        assert_eq!(answers.len(), 2);
        assert!(
            answers[0]["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("whole batch")
        );
        assert!(
            answers[1]["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("no-secrets")
        );
        // A call needing approval is never held inside a batch.
        let held = format!("[{},{}]", tool(1, "echo"), tool(2, "deploy_model"));
        let judged = judge(
            &body(&held, ProtocolVersion::V2025_03_26),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        let (_, answers) = reply_json(&judged.outcome);
        assert_eq!(
            answers[1]["result"]["_meta"][super::super::reply::META_CODE],
            codes::APPROVAL_PENDING
        );
    }

    #[test]
    fn dry_run_records_without_blocking() {
        let mut p = policies("DryRun");
        let open: ApprovalPolicySpec =
            serde_json::from_value(json!({"defaultAction": "Allow"})).unwrap();
        p.push(open.compile("ns/open", "1").unwrap());
        let judged = judge(
            &body(&tool(1, "read_secret"), ProtocolVersion::V2025_06_18),
            &p,
            &someone(),
            Answering::JsonRpc,
        );
        assert_eq!(judged.outcome, Outcome::Forward);
        assert_eq!(judged.dry_run.as_deref(), Some("Deny ns/p"));
    }
}
