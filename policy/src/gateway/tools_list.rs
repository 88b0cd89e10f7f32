//! Filtering `tools/list` results: a principal does not see tools it may never
//! call, and sees which tools need approval.
//!
//! Arguments are unknown when listing, so each rule with argument matchers
//! may or may not apply. A tool is hidden only when every possible call is
//! denied, and marked when every possible call needs at least approval; the
//! bound is computed per policy and combined as evaluation combines verdicts.

use super::sse::{EventSplitter, parse_event};
use crate::entra::Principal;
use crate::evaluate::rule_applies_without_arguments;
use crate::mcp::{RequestId, Target};
use crate::model::{Action, CompiledPolicy, Enforcement};
use serde_json::{Value, json};

/// Key set in a tool's `_meta` when calling it needs approval.
pub const META_REQUIRES_APPROVAL: &str = "dev.airlock/requiresApproval";
const APPROVAL_NOTE: &str = "[Requires human approval through Airlock] ";

/// The least restrictive action any call of `tool` could get.
pub fn best_case(policies: &[CompiledPolicy], principal: &Principal, tool: &str) -> Action {
    let target = Target::Tool(tool.to_string());
    let mut best = None::<Action>;
    for policy in policies
        .iter()
        .filter(|p| p.spec.enforcement == Enforcement::Enforce)
    {
        let mut certain = Vec::new();
        let mut possible = Vec::new();
        for (rule, has_argument_matchers) in policy.rules_with_argument_flags() {
            if rule_applies_without_arguments(rule, principal, "tools/call", &target) {
                if has_argument_matchers {
                    possible.push(rule.action);
                } else {
                    certain.push(rule.action);
                }
            }
        }
        let policy_best = match certain.iter().max() {
            // Rules that may also apply can only raise a verdict.
            Some(floor) => *floor,
            None => possible
                .iter()
                .copied()
                .chain(std::iter::once(policy.spec.default_action))
                .min()
                .unwrap_or(Action::Deny),
        };
        best = Some(best.map_or(policy_best, |b| b.max(policy_best)));
    }
    best.unwrap_or(Action::Deny)
}

fn filter_result(result: &mut Value, policies: &[CompiledPolicy], principal: &Principal) {
    let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
        return;
    };
    tools.retain_mut(|tool| {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return false;
        };
        match best_case(policies, principal, name) {
            Action::Allow => true,
            Action::Deny => false,
            Action::RequireApproval => {
                if let Some(description) = tool.get("description").and_then(Value::as_str) {
                    tool["description"] = json!(format!("{APPROVAL_NOTE}{description}"));
                }
                match tool.get_mut("_meta").and_then(Value::as_object_mut) {
                    Some(meta) => {
                        meta.insert(META_REQUIRES_APPROVAL.into(), json!(true));
                    }
                    None => tool["_meta"] = json!({META_REQUIRES_APPROVAL: true}),
                }
                true
            }
        }
    });
}

/// Filters one JSON-RPC message if it is a `tools/list` result: the answer to
/// `id`, or, where requests and answers travel apart (the legacy SSE stream),
/// any result carrying a tool list. True if it was filtered.
fn filter_message(
    message: &mut Value,
    id: Option<&RequestId>,
    policies: &[CompiledPolicy],
    principal: &Principal,
) -> bool {
    if id.is_some_and(|id| message.get("id") != Some(&id.to_json())) {
        return false;
    }
    match message.get_mut("result") {
        Some(result) if result.get("tools").is_some_and(Value::is_array) => {
            filter_result(result, policies, principal);
            true
        }
        _ => false,
    }
}

/// Rewrites one complete SSE event if it carries a `tools/list` result
/// (see [`filter_message`]); `None` leaves the event as it is.
pub fn filter_event(
    event: &str,
    id: Option<&RequestId>,
    policies: &[CompiledPolicy],
    principal: &Principal,
) -> Option<String> {
    let (_, data) = parse_event(event);
    let mut message: Value = serde_json::from_str(&data?).ok()?;
    if !filter_message(&mut message, id, policies, principal) {
        return None;
    }
    let mut out = String::with_capacity(event.len());
    for line in event
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("data:"))
    {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&message.to_string());
    out.push_str("\n\n");
    Some(out)
}

/// Rewrites a whole `tools/list` response body (JSON or SSE). Returns `None`
/// when the body holds no response to `id` in a form the gateway can read, in
/// which case the caller refuses to pass it on unfiltered.
pub fn filter_response(
    body: &[u8],
    event_stream: bool,
    id: &RequestId,
    policies: &[CompiledPolicy],
    principal: &Principal,
) -> Option<Vec<u8>> {
    if !event_stream {
        let mut message: Value = serde_json::from_slice(body).ok()?;
        return filter_message(&mut message, Some(id), policies, principal)
            .then(|| message.to_string().into_bytes());
    }
    let mut splitter = EventSplitter::default();
    let mut events = splitter.push(body);
    let rest = splitter.finish();
    if !rest.trim().is_empty() {
        events.push(format!("{rest}\n\n"));
    }
    let mut out = String::with_capacity(body.len());
    let mut found = false;
    for event in events {
        match filter_event(&event, Some(id), policies, principal) {
            Some(filtered) => {
                found = true;
                out.push_str(&filtered);
            }
            None => out.push_str(&event),
        }
    }
    found.then(|| out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApprovalPolicySpec;

    fn principal(groups: &[&str]) -> Principal {
        crate::entra::test_principal("o", groups)
    }

    fn policies() -> Vec<CompiledPolicy> {
        let spec: ApprovalPolicySpec = serde_json::from_value(json!({
            "defaultAction": "Deny",
            "rules": [
                {"name": "status", "match": {"tools": ["get_status"]}, "principals": {"groups": ["eng"]}, "action": "Allow"},
                {"name": "deploy-any", "match": {"tools": ["deploy_model"]}, "principals": {"groups": ["eng"]}, "action": "Allow"},
                {"name": "deploy-prod", "match": {"tools": ["deploy_model"], "arguments": [{"pointer": "/env", "equals": "prod"}]},
                 "action": "RequireApproval", "approval": {"approvers": {"groups": ["leads"]}}},
                {"name": "config", "match": {"tools": ["update_runtime_config"]}, "action": "RequireApproval",
                 "approval": {"approvers": {"groups": ["leads"]}}},
                {"name": "secrets", "match": {"tools": ["read_secret"]}, "action": "Deny"}
            ]
        }))
        .unwrap();
        vec![spec.compile("ns/p", "1").unwrap()]
    }

    #[test]
    fn best_cases() {
        let p = policies();
        let eng = principal(&["eng"]);
        assert_eq!(best_case(&p, &eng, "get_status"), Action::Allow);
        assert_eq!(best_case(&p, &principal(&[]), "get_status"), Action::Deny);
        // Allowed for some arguments, held for others: shown, not marked.
        assert_eq!(best_case(&p, &eng, "deploy_model"), Action::Allow);
        // Only possibly held for an outsider (default Deny otherwise): marked.
        assert_eq!(
            best_case(&p, &principal(&[]), "deploy_model"),
            Action::RequireApproval
        );
        assert_eq!(
            best_case(&p, &eng, "update_runtime_config"),
            Action::RequireApproval
        );
        assert_eq!(best_case(&p, &eng, "read_secret"), Action::Deny);
        assert_eq!(best_case(&[], &eng, "get_status"), Action::Deny);
    }

    fn tools_result(id: i64) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
            {"name": "get_status", "description": "Status", "inputSchema": {"type": "object"}},
            {"name": "update_runtime_config", "description": "Config", "inputSchema": {"type": "object"}},
            {"name": "read_secret", "inputSchema": {"type": "object"}}
        ]}})
    }

    fn names(message: &Value) -> Vec<&str> {
        message["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn filters_json_responses() {
        let body = tools_result(4).to_string();
        let out = filter_response(
            body.as_bytes(),
            false,
            &RequestId::Number(4),
            &policies(),
            &principal(&["eng"]),
        )
        .unwrap();
        let message: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&message), ["get_status", "update_runtime_config"]);
        let marked = &message["result"]["tools"][1];
        assert_eq!(marked["_meta"][META_REQUIRES_APPROVAL], true);
        assert!(
            marked["description"]
                .as_str()
                .unwrap()
                .starts_with(APPROVAL_NOTE)
        );
        // A body that is not the expected response is not passed on as if filtered.
        assert!(
            filter_response(
                body.as_bytes(),
                false,
                &RequestId::Number(5),
                &policies(),
                &principal(&["eng"])
            )
            .is_none()
        );
        assert!(
            filter_response(
                b"{",
                false,
                &RequestId::Number(4),
                &policies(),
                &principal(&["eng"])
            )
            .is_none()
        );
    }

    #[test]
    fn filters_any_tool_list_on_a_legacy_stream() {
        let event = format!("event: message\r\ndata: {}\r\n\r\n", tools_result(9));
        let mut splitter = EventSplitter::default();
        let events = splitter.push(event.as_bytes());
        let filtered = filter_event(&events[0], None, &policies(), &principal(&[])).unwrap();
        let data: Value =
            serde_json::from_str(filtered.trim_start_matches("event: message\ndata: ")).unwrap();
        assert_eq!(names(&data), ["update_runtime_config"]);
        let other = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        assert_eq!(
            filter_event(other, None, &policies(), &principal(&[])),
            None
        );
    }

    #[test]
    fn filters_sse_responses_and_keeps_other_events() {
        let body = format!(
            "event: message\nid: 1\ndata: {}\n\nevent: message\ndata: {}\n\n",
            json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}),
            tools_result(7)
        );
        let out = filter_response(
            body.as_bytes(),
            true,
            &RequestId::Number(7),
            &policies(),
            &principal(&["eng"]),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2);
        assert!(events[0].contains("notifications/progress"));
        assert!(events[1].starts_with("event: message\ndata: "), "{text}");
        let data: Value =
            serde_json::from_str(events[1].trim_start_matches("event: message\ndata: ")).unwrap();
        assert_eq!(names(&data), ["get_status", "update_runtime_config"]);
    }
}
