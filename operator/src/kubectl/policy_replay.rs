//! `kubectl airlock policy test --replay`: the calls of a recorded trail
//! judged again by changed policies, so that a reviewer of a policy change
//! sees its effect on real traffic before it lands.
//!
//! The policies given are taken as the ones that govern the replayed calls'
//! server (as `policy test` takes them for one call); `--server` picks that
//! server's calls from a trail of several. What the trail does not record —
//! a group no policy named when the call was made, arguments no rule
//! captured — can leave a decision open: such calls are listed as
//! undecidable, with what is missing (see [`airlock_policy::replay`]).

use super::Ran;
use crate::audit::cli::read_input;
use crate::present::printable;
use airlock_policy::audit::{AuditEvent, recorded_event};
use airlock_policy::model::CompiledPolicy;
use airlock_policy::replay::{RecordedCall, replay};
use std::path::Path;

/// The exit code when some call's decision would, or might, change.
pub const CHANGES: u8 = 4;

pub fn run(policies: &[CompiledPolicy], trail: &Path, server: Option<&str>) -> anyhow::Result<Ran> {
    let text = read_input(trail)?;
    Ok(report(policies, &text, server))
}

/// Each call of `trail` (to `server`, if given) whose decision `policies`
/// would change or leave open, after a summary.
fn report(policies: &[CompiledPolicy], trail: &str, server: Option<&str>) -> Ran {
    let mut listed = Vec::new();
    let (mut calls, mut changed, mut open, mut not_records) = (0, 0, 0, 0);
    for (index, line) in trail.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some(event) = recorded_event(line) else {
            not_records += 1;
            continue;
        };
        if server.is_some_and(|server| server != event.server) {
            continue;
        }
        let Some(call) = RecordedCall::of(&event) else {
            continue;
        };
        calls += 1;
        let replayed = replay(policies, &call);
        match replayed.decided() {
            Some(now) if now == call.decision => {}
            Some(now) => {
                changed += 1;
                listed.push(format!(
                    "CHANGED      {}  {} -> {now}  by {}",
                    described(index + 1, &event),
                    call.decision,
                    replayed.reason.unwrap_or_default()
                ));
            }
            None => {
                open += 1;
                let possible: Vec<String> =
                    replayed.possible.iter().map(ToString::to_string).collect();
                listed.push(format!(
                    "UNDECIDABLE  {}  {} -> {}",
                    described(index + 1, &event),
                    call.decision,
                    possible.join(" or ")
                ));
                for missing in &replayed.unknown {
                    listed.push(format!("             {}", printable(missing)));
                }
            }
        }
    }
    let mut summary = format!(
        "{calls} calls replayed: {changed} would change, {open} undecidable, {} unchanged",
        calls - changed - open
    );
    match not_records {
        0 => {}
        1 => summary.push_str(" (1 line was not an audit record)"),
        n => summary.push_str(&format!(" ({n} lines were not audit records)")),
    }
    listed.insert(0, summary);
    Ran {
        output: listed.join("\n"),
        code: if changed + open > 0 { CHANGES } else { 0 },
    }
}

/// Where a call is in the trail, when, who made it, to which server, what it was.
fn described(line: usize, event: &AuditEvent) -> String {
    let caller = event
        .principal
        .as_ref()
        .map_or("-", |p| if p.name.is_empty() { &p.oid } else { &p.name });
    printable(&format!(
        "line {line}  {}  {caller}  {}  {} {}",
        event.time,
        event.server,
        event.method.as_deref().unwrap_or("-"),
        event.target.as_deref().unwrap_or("")
    ))
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubectl::policy_test::offline_caller;
    use airlock_policy::audit::{AuditPrincipal, Chain};
    use airlock_policy::gateway::config::{NamedPolicy, compile_all};
    use serde_json::json;

    fn policies(rules: serde_json::Value) -> Vec<CompiledPolicy> {
        let spec =
            serde_json::from_value(json!({"defaultAction": "Deny", "rules": rules})).unwrap();
        compile_all(&[NamedPolicy::checked("ml/ops".into(), spec).unwrap()]).unwrap()
    }

    fn trail() -> String {
        let before = policies(json!([
            {"name": "status", "match": {"tools": ["get_status"]}, "principals": {"groups": ["eng"]}, "action": "Allow"}
        ]));
        let mut chain = Chain::named("r-1");
        let mut lines = vec!["some log line that is not a record".to_string()];
        for (who, groups, server, tool, decision) in [
            ("ada", vec!["eng"], "ml/models", "get_status", "Allow"),
            ("bob", vec![], "ml/models", "get_status", "Deny"),
            ("ada", vec!["eng"], "ml/models", "read_secret", "Deny"),
            ("ada", vec!["eng"], "hr/payroll", "get_status", "Allow"),
        ] {
            let groups: Vec<String> = groups.iter().map(|g: &&str| g.to_string()).collect();
            let mut caller = offline_caller(&format!("oid-{who}"), &groups, &[]);
            caller.display_name = who.into();
            lines.push(
                chain
                    .append(&AuditEvent {
                        time: "2026-12-03T01:00:00Z".into(),
                        kind: "message".into(),
                        server: server.into(),
                        principal: Some(AuditPrincipal::judged(&caller, &before)),
                        method: Some("tools/call".into()),
                        target: Some(tool.into()),
                        decision: Some(decision.into()),
                        ..AuditEvent::default()
                    })
                    .unwrap(),
            );
        }
        lines.join("\n")
    }

    #[test]
    fn lists_what_would_change_and_what_the_trail_cannot_settle() {
        let after = policies(json!([
            {"name": "status", "match": {"tools": ["get_status"]}, "principals": {"groups": ["eng", "auditors"]}, "action": "Allow"},
            {"name": "secrets", "match": {"tools": ["read_secret"]}, "principals": {"groups": ["eng"]},
             "action": "RequireApproval", "approval": {"approvers": {"groups": ["leads"]}}}
        ]));
        let ran = report(&after, &trail(), Some("ml/models"));
        assert_eq!(ran.code, CHANGES);
        assert_eq!(
            ran.output,
            "3 calls replayed: 1 would change, 1 undecidable, 1 unchanged (1 line was not an audit record)\n\
             UNDECIDABLE  line 3  2026-12-03T01:00:00Z  bob  ml/models  tools/call get_status  Deny -> Allow or Deny\n\
             \x20            ml/ops/status: whether the caller has group auditors (no policy named it when the call was recorded)\n\
             CHANGED      line 4  2026-12-03T01:00:00Z  ada  ml/models  tools/call read_secret  Deny -> RequireApproval  by ml/ops/secrets"
        );
        let same = policies(json!([
            {"name": "status", "match": {"tools": ["get_status"]}, "principals": {"groups": ["eng"]}, "action": "Allow"}
        ]));
        let ran = report(&same, &trail(), None);
        assert_eq!(ran.code, 0, "{}", ran.output);
        assert!(
            ran.output.starts_with("4 calls replayed: 0 would change"),
            "{}",
            ran.output
        );
    }
}
