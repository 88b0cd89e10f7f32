//! Judging one `tools/call` against many rules, natively: what the filter
//! computes per call from policy — the decision (`evaluate`) and the
//! argument outcomes its audit event records (`argument_outcomes`). The
//! rules mix exact tool names, tool globs, method-only rules, argument
//! matchers and principals; every call's arguments differ from the last.

use airlock_policy::entra::{Principal, TokenVersion};
use airlock_policy::evaluate::{Call, argument_outcomes, evaluate};
use airlock_policy::gateway::config::{NamedPolicy, compile_all};
use airlock_policy::mcp::Target;
use airlock_policy::model::Action;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Rule counts judged.
pub const SIZES: [usize; 3] = [1, 100, 1000];

pub struct PolicyScale {
    pub rules: usize,
    /// Median time to judge one call, over batches.
    pub per_call: Duration,
}

/// Rule `i` of a policy of many: three in five name one tool exactly (one in
/// three of those with an argument matcher), one in five a glob, one in ten
/// only a method, one in ten a tool by a glob on its suffix; principals
/// differ from rule to rule.
fn rule(i: usize) -> Value {
    let principals = json!({"groups": [format!("group-{}", i % 20)]});
    match i % 10 {
        0..=5 if i.is_multiple_of(3) => json!({
            "name": format!("rule-{i}"),
            "match": {"tools": [format!("tool_{i}")],
                      "arguments": [{"pointer": "/environment", "in": ["prod"]}]},
            "principals": principals,
            "action": "RequireApproval",
            "approval": {"approvers": {"groups": ["leads"]}}}),
        0..=5 => json!({
            "name": format!("rule-{i}"),
            "match": {"tools": [format!("tool_{i}")]},
            "principals": principals,
            "action": "Allow"}),
        6 | 7 => json!({
            "name": format!("rule-{i}"),
            "match": {"tools": [format!("family_{}_*", i % 50)]},
            "action": "Deny"}),
        8 => json!({
            "name": format!("rule-{i}"),
            "match": {"methods": [format!("resources/{}*", i % 7)]},
            "action": "Allow"}),
        _ => json!({
            "name": format!("rule-{i}"),
            "match": {"tools": [format!("*_v{}", i % 13)]},
            "principals": principals,
            "action": "Deny"}),
    }
}

fn policies(rules: usize) -> anyhow::Result<Vec<NamedPolicy>> {
    let named = json!([{
        "name": "bench/many-rules",
        "version": "1",
        "spec": {"defaultAction": "Deny", "rules": (0..rules).map(rule).collect::<Vec<_>>()},
    }]);
    Ok(serde_json::from_value(named)?)
}

fn caller() -> Principal {
    Principal {
        tenant_id: "tenant".into(),
        object_id: "oid-ada".into(),
        display_name: "ada".into(),
        app_id: "app".into(),
        // Half the groups rules name.
        groups: (0..20).step_by(2).map(|g| format!("group-{g}")).collect(),
        roles: Vec::new(),
        scopes: vec!["mcp.call".into()],
        app_only: false,
        version: TokenVersion::V2,
        expires_at: u64::MAX,
    }
}

/// Times judging a call of a tool the middle rule names exactly, with
/// arguments that change every call.
pub fn run() -> anyhow::Result<Vec<PolicyScale>> {
    let principal = caller();
    let mut results = Vec::new();
    for rules in SIZES {
        let compiled = compile_all(&policies(rules)?)?;
        let target = Target::Tool(format!("tool_{}", rules / 2));
        let arguments: Vec<Value> = (0..64u32)
            .map(|n| json!({"environment": if n.is_multiple_of(2) { "prod" } else { "dev" }, "n": n}))
            .collect();
        let judge = |n: usize| {
            let call = Call {
                method: "tools/call",
                target: &target,
                arguments: Some(&arguments[n % arguments.len()]),
            };
            let decision = evaluate(&compiled, &principal, &call);
            let outcomes = argument_outcomes(&compiled, &call);
            std::hint::black_box((decision, outcomes))
        };
        // A judgement that could not be made would time nothing useful.
        let (decision, _) = judge(0);
        anyhow::ensure!(
            decision.action != Action::Deny || rules == 1,
            "{rules} rules: the judged call matched no rule: {decision:?}"
        );
        let calls_per_batch = (200_000 / rules).clamp(100, 20_000);
        let mut batches = Vec::new();
        for batch in 0..15 {
            let started = Instant::now();
            for n in 0..calls_per_batch {
                judge(n);
            }
            // The first batches warm caches and the allocator.
            if batch >= 3 {
                batches.push(started.elapsed() / calls_per_batch as u32);
            }
        }
        batches.sort();
        results.push(PolicyScale {
            rules,
            per_call: batches[batches.len() / 2],
        });
    }
    Ok(results)
}

/// The table `make bench` prints.
pub fn markdown(results: &[PolicyScale]) -> String {
    let mut out = String::from(
        "\n### Judging one tools/call against many rules (native)\n\n| rules | µs per call |\n|---:|---:|\n",
    );
    for result in results {
        out.push_str(&format!(
            "| {} | {:.2} |\n",
            result.rules,
            result.per_call.as_secs_f64() * 1e6
        ));
    }
    out
}
