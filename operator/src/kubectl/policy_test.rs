//! `kubectl airlock policy test`: what policies would decide for a call,
//! offline, by the same evaluation as the gateway — for a pipeline that
//! checks a policy change before it is applied.
//!
//! A call fixture is the MCP request message itself, exactly as a client
//! sends it (one JSON-RPC request, read by the gateway's strict parser):
//!
//! ```json
//! {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
//!  "params": {"name": "deploy_model", "arguments": {"environment": "prod"}}}
//! ```
//!
//! The caller is given by flags (`--as-groups`, `--as-oid`, `--as-roles`).
//! With `--replay` instead, the calls of a recorded trail are judged
//! (see [`super::policy_replay`]).

use super::{Ran, policy_replay};
use crate::local::policy_files;
use airlock_policy::entra::{Principal, TokenVersion};
use airlock_policy::evaluate::{Call, Decision, evaluate};
use airlock_policy::gateway::config::compile_all;
use airlock_policy::mcp::{RequestContext, classify};
use airlock_policy::model::{Action, CompiledPolicy};
use anyhow::{Context as _, bail};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Options of `policy test`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyTestArgs {
    /// ApprovalPolicy files (YAML, one or several documents; a directory:
    /// its YAML files; repeat).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The call: an MCP JSON-RPC request message, as a client sends it.
    #[arg(long, required_unless_present = "replay", conflicts_with = "replay")]
    pub call: Option<PathBuf>,
    /// The caller's Entra group object IDs (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', conflicts_with = "replay")]
    pub as_groups: Vec<String>,
    /// The caller's Entra object ID.
    #[arg(
        long,
        default_value = "00000000-0000-0000-0000-000000000001",
        conflicts_with = "replay"
    )]
    pub as_oid: String,
    /// The caller's app roles (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', conflicts_with = "replay")]
    pub as_roles: Vec<String>,
    /// Instead of one call: every call of this audit trail (JSON lines, `-`
    /// for standard input), listing each whose decision the policies would
    /// change; exits 0 when none would, 4 when some would or might.
    #[arg(long, value_name = "AUDIT.jsonl")]
    pub replay: Option<PathBuf>,
    /// With --replay: only the calls to this server (`namespace/name`).
    #[arg(long, requires = "replay")]
    pub server: Option<String>,
}

/// What `policy test` found: the text to print and the verdict.
pub struct Outcome {
    pub report: String,
    pub action: Action,
}

impl Outcome {
    /// The exit code a pipeline branches on: 0 allow, 2 deny, 3 approval
    /// (1 stays for errors: an unreadable file, an invalid policy or call).
    pub fn exit_code(&self) -> u8 {
        match self.action {
            Action::Allow => 0,
            Action::Deny => 2,
            Action::RequireApproval => 3,
        }
    }
}

pub fn run(args: &PolicyTestArgs) -> anyhow::Result<Ran> {
    let policies: Vec<_> = policy_files::load(&args.files, "default")?
        .into_iter()
        .map(|(policy, _)| policy)
        .collect();
    let compiled = compile_all(&policies)?;
    if let Some(trail) = &args.replay {
        return policy_replay::run(&compiled, trail, args.server.as_deref());
    }
    let Some(call) = &args.call else {
        bail!("give --call or --replay");
    };
    let message = std::fs::read(call).with_context(|| format!("reading {}", call.display()))?;
    let caller = offline_caller(&args.as_oid, &args.as_groups, &args.as_roles);
    let outcome =
        judge(&compiled, &message, &caller).with_context(|| call.display().to_string())?;
    Ok(Ran {
        code: outcome.exit_code(),
        output: outcome.report,
    })
}

/// The caller the flags describe: a user, no tenant, no expiry.
pub(super) fn offline_caller(oid: &str, groups: &[String], roles: &[String]) -> Principal {
    Principal {
        tenant_id: String::new(),
        object_id: oid.to_string(),
        display_name: oid.to_string(),
        app_id: String::new(),
        groups: groups.to_vec(),
        roles: roles.to_vec(),
        scopes: Vec::new(),
        app_only: false,
        version: TokenVersion::V2,
        expires_at: u64::MAX,
    }
}

/// The decision of `policies` on `message` from `caller`, as a report.
pub fn judge(
    policies: &[CompiledPolicy],
    message: &[u8],
    caller: &Principal,
) -> anyhow::Result<Outcome> {
    let envelope = classify(message, &RequestContext::default())?;
    let ([call], false) = (envelope.messages.as_slice(), envelope.batch) else {
        bail!("a call fixture is one JSON-RPC request, not a batch");
    };
    let Some(method) = call.method.as_deref() else {
        bail!("a call fixture is a request (with a method), not a response");
    };
    let decision = evaluate(
        policies,
        caller,
        &Call {
            method,
            target: &call.target,
            arguments: call.arguments.as_ref(),
        },
    );
    Ok(Outcome {
        report: report(&decision, policies),
        action: decision.action,
    })
}

fn report(decision: &Decision, policies: &[CompiledPolicy]) -> String {
    let mut out = format!(
        "decision: {}\nrules:    {}\n",
        decision.action,
        decision.reason()
    );
    for rule in decision.deciding_rules(policies) {
        if let Some(approval) = &rule.approval {
            let _ = writeln!(
                out,
                "approval: {} of groups [{}] / users [{}] within {}",
                approval.min_approvals,
                approval.approvers.groups.join(", "),
                approval.approvers.users.join(", "),
                approval.timeout
            );
        }
    }
    for verdict in &decision.dry_run {
        let _ = writeln!(out, "dry run:  {} would {}", verdict.policy, verdict.action);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_policy::gateway::config::NamedPolicy;

    fn policies() -> Vec<CompiledPolicy> {
        let spec = serde_json::from_value(serde_json::json!({
            "defaultAction": "Deny",
            "rules": [
                {"name": "read", "match": {"tools": ["get_status"]}, "action": "Allow"},
                {"name": "deploy-to-prod",
                 "match": {"tools": ["deploy_model"],
                           "arguments": [{"pointer": "/environment", "in": ["prod"]}]},
                 "principals": {"groups": ["engineers"]},
                 "action": "RequireApproval",
                 "approval": {"approvers": {"groups": ["leads"]}, "minApprovals": 2}}
            ]
        }))
        .unwrap();
        let policy = NamedPolicy::checked("ml/models".into(), spec).unwrap();
        compile_all(&[policy]).unwrap()
    }

    fn caller(groups: &[&str]) -> Principal {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        offline_caller("oid", &groups, &[])
    }

    fn call(tool: &str, environment: &str) -> Vec<u8> {
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {"environment": environment}}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn each_verdict_has_its_exit_code_and_names_its_rules() {
        let policies = policies();
        let held = judge(
            &policies,
            &call("deploy_model", "prod"),
            &caller(&["engineers"]),
        )
        .unwrap();
        assert_eq!(held.exit_code(), 3);
        assert!(
            held.report.contains("ml/models/deploy-to-prod"),
            "{}",
            held.report
        );
        assert!(
            held.report.contains("2 of groups [leads]"),
            "{}",
            held.report
        );
        let allowed = judge(&policies, &call("get_status", "-"), &caller(&[])).unwrap();
        assert_eq!(allowed.exit_code(), 0);
        let denied = judge(&policies, &call("deploy_model", "prod"), &caller(&[])).unwrap();
        assert_eq!(denied.exit_code(), 2);
        assert!(denied.report.contains("defaultAction"), "{}", denied.report);
    }

    #[test]
    fn a_fixture_is_one_request_read_strictly() {
        let policies = policies();
        let batch = format!("[{}]", String::from_utf8(call("get_status", "-")).unwrap());
        let duplicate = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}"#;
        for bad in [batch.as_bytes(), duplicate, b"not json"] {
            assert!(judge(&policies, bad, &caller(&[])).is_err());
        }
    }
}
