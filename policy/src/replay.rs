//! Replaying a recorded call against other policies: what they would decide,
//! from what the audit trail kept of the call.
//!
//! The trail keeps a judged call's method and target, the caller's object id
//! and app, whether the caller held each group, role and scope the policies
//! of the day named ([`AuditPrincipal::checked`]), and the arguments only
//! where a deciding rule captured them, redacted where it said so. A
//! criterion the record cannot settle — a group no policy named then, an
//! argument not recorded or redacted — is unknown, and the replay gives
//! every decision the policies could reach: one when the unknowns do not
//! matter, several when they do.

use crate::audit::{AuditEvent, AuditPrincipal, REDACTED};
use crate::evaluate::{Call, argument_holds, rule_matches};
use crate::mcp::Target;
use crate::model::{
    Action, CompiledMatcher, CompiledPolicy, CompiledRule, Enforcement, Principals,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What the trail recorded of one call the policies judged.
#[derive(Debug)]
pub struct RecordedCall<'a> {
    /// The decision the call got.
    pub decision: Action,
    pub method: &'a str,
    pub target: Target,
    pub caller: &'a AuditPrincipal,
    arguments: Option<&'a Value>,
    argument_tests: &'a BTreeMap<String, bool>,
}

impl<'a> RecordedCall<'a> {
    /// The call `event` records, if it is one the policies judged: a
    /// client's request or notification, with its caller and decision.
    pub fn of(event: &'a AuditEvent) -> Option<RecordedCall<'a>> {
        if event.kind != "message" {
            return None;
        }
        let decision = match event.decision.as_deref()? {
            "Allow" => Action::Allow,
            "RequireApproval" => Action::RequireApproval,
            "Deny" => Action::Deny,
            _ => return None,
        };
        let method = event.method.as_deref()?;
        Some(RecordedCall {
            decision,
            method,
            target: event
                .target
                .clone()
                .map_or(Target::None, |name| Target::addressed(method, name)),
            caller: event.principal.as_ref()?,
            arguments: event.arguments.as_ref(),
            argument_tests: &event.argument_tests,
        })
    }
}

/// What policies would decide on a recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Every decision the policies could reach from what was recorded: one,
    /// unless a criterion the record cannot settle matters.
    pub possible: BTreeSet<Action>,
    /// With one possible decision: the rules that reach it, as
    /// [`crate::evaluate::Decision::reason`] names them.
    pub reason: Option<String>,
    /// With several: the criteria the record does not settle.
    pub unknown: Vec<String>,
}

impl Replayed {
    /// The decision, when the record settles it.
    pub fn decided(&self) -> Option<Action> {
        match (self.possible.len(), self.possible.first()) {
            (1, Some(action)) => Some(*action),
            _ => None,
        }
    }
}

/// What `policies` — taken as the ones that govern the call's server —
/// would decide on `call`.
pub fn replay(policies: &[CompiledPolicy], call: &RecordedCall<'_>) -> Replayed {
    let mut unknown = Vec::new();
    let verdicts: Vec<(&CompiledPolicy, Verdicts)> = policies
        .iter()
        .filter(|p| p.spec.enforcement == Enforcement::Enforce)
        .map(|p| (p, verdicts(p, call, &mut unknown)))
        .collect();
    // The decision is the most restrictive verdict, so each combination of
    // possible verdicts gives its maximum; no enforced policy denies.
    let mut possible = BTreeSet::from([Action::Allow]);
    for (_, each) in &verdicts {
        possible = possible
            .iter()
            .flat_map(|a| each.actions.iter().map(move |b| *a.max(b)))
            .collect();
    }
    if verdicts.is_empty() {
        possible = BTreeSet::from([Action::Deny]);
    }
    let mut replayed = Replayed {
        possible,
        reason: None,
        unknown: Vec::new(),
    };
    match replayed.decided() {
        Some(decided) if verdicts.is_empty() => {
            debug_assert_eq!(decided, Action::Deny);
            replayed.reason = Some("no-policy".into());
        }
        Some(decided) => {
            let reasons: Vec<String> = verdicts
                .iter()
                .filter(|(_, each)| each.actions.first() == Some(&decided))
                .flat_map(|(policy, each)| {
                    each.certain
                        .iter()
                        .map(move |rule| format!("{}/{rule}", policy.name))
                })
                .collect();
            replayed.reason = Some(reasons.join(","));
        }
        None => {
            unknown.dedup();
            replayed.unknown = unknown;
        }
    }
    replayed
}

/// A policy's possible verdicts on a recorded call.
struct Verdicts {
    actions: BTreeSet<Action>,
    /// The rules (or `defaultAction`) that certainly give the least
    /// restrictive of `actions`.
    certain: Vec<String>,
}

fn verdicts(
    policy: &CompiledPolicy,
    call: &RecordedCall<'_>,
    unknown: &mut Vec<String>,
) -> Verdicts {
    let mut applies = Vec::new();
    let mut may_apply = Vec::new();
    for (rule, compiled) in policy.spec.rules.iter().zip(&policy.rules) {
        let on_call = Call {
            method: call.method,
            target: &call.target,
            arguments: None,
        };
        if !rule_matches(rule, &on_call) {
            continue;
        }
        let mut why = Vec::new();
        match criteria_hold(&rule.principals, compiled, call, &mut why) {
            Truth::Yes => applies.push(rule),
            Truth::No => {}
            Truth::Unknown => may_apply.push((rule, why)),
        }
    }
    // A policy's verdict is its most restrictive applicable rule, else its
    // default. The rules that certainly apply set a floor; a rule that may
    // apply matters only where it could change the verdict: above the
    // floor, or other than the default when nothing certainly applies.
    let floor = applies.iter().map(|r| r.action).max();
    let mut actions = BTreeSet::from([floor.unwrap_or(policy.spec.default_action)]);
    for (rule, why) in may_apply {
        let matters = match floor {
            Some(floor) => rule.action > floor,
            None => rule.action != policy.spec.default_action,
        };
        if matters {
            actions.insert(rule.action);
            unknown.extend(
                why.into_iter()
                    .map(|reason| format!("{}/{}: {reason}", policy.name, rule.name)),
            );
        }
    }
    let certain = match floor {
        Some(floor) => applies
            .iter()
            .filter(|r| r.action == floor)
            .map(|r| r.name.clone())
            .collect(),
        None => vec!["defaultAction".into()],
    };
    Verdicts { actions, certain }
}

/// Kleene's three values: what a criterion is, given what was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Yes,
    No,
    Unknown,
}

impl Truth {
    fn of(known: bool) -> Truth {
        if known { Truth::Yes } else { Truth::No }
    }

    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::No, _) | (_, Truth::No) => Truth::No,
            (Truth::Unknown, _) | (_, Truth::Unknown) => Truth::Unknown,
            _ => Truth::Yes,
        }
    }
}

/// Whether a rule's principals and argument criteria hold (its method and
/// target are known); `why` says what is unknown.
fn criteria_hold(
    principals: &Principals,
    compiled: &CompiledRule,
    call: &RecordedCall<'_>,
    why: &mut Vec<String>,
) -> Truth {
    let caller = call.caller;
    let one_of = |wanted: &[String], have: &str| {
        Truth::of(wanted.is_empty() || wanted.iter().any(|w| w == have))
    };
    let mut truth = member(
        "group",
        &principals.groups,
        &caller.held.groups,
        &caller.checked.groups,
        why,
    )
    .and(one_of(&principals.users, &caller.oid))
    .and(one_of(&principals.apps, &caller.app_id))
    .and(member(
        "role",
        &principals.roles,
        &caller.held.roles,
        &caller.checked.roles,
        why,
    ))
    .and(member(
        "scope",
        &principals.scopes,
        &caller.held.scopes,
        &caller.checked.scopes,
        why,
    ));
    for matcher in &compiled.arguments {
        truth = truth.and(argument(matcher, call, why));
    }
    truth
}

/// Whether the caller holds one of `wanted`: known for the claims the
/// policies named when the call was recorded.
fn member(
    kind: &str,
    wanted: &[String],
    held: &[String],
    checked: &[String],
    why: &mut Vec<String>,
) -> Truth {
    if wanted.is_empty() || wanted.iter().any(|w| held.contains(w)) {
        return Truth::Yes;
    }
    let unsettled: Vec<&String> = wanted.iter().filter(|w| !checked.contains(w)).collect();
    if unsettled.is_empty() {
        return Truth::No;
    }
    for claim in unsettled {
        why.push(format!(
            "whether the caller has {kind} {claim} (no policy named it when the call was recorded)"
        ));
    }
    Truth::Unknown
}

/// Whether an argument matcher holds: known where the trail recorded its
/// outcome (the same matcher was in a rule that could apply) or kept the
/// argument.
fn argument(matcher: &CompiledMatcher, call: &RecordedCall<'_>, why: &mut Vec<String>) -> Truth {
    if let Some(held) = call.argument_tests.get(&matcher.key) {
        return Truth::of(*held);
    }
    let Some(arguments) = call.arguments else {
        why.push(format!(
            "argument {}: the call's arguments were not recorded",
            matcher.pointer
        ));
        return Truth::Unknown;
    };
    if redacted_along(arguments, &matcher.pointer) {
        why.push(format!("argument {}: recorded redacted", matcher.pointer));
        return Truth::Unknown;
    }
    Truth::of(argument_holds(matcher, Some(arguments)))
}

/// Whether redaction hid the value at `pointer`: it, a value it lies
/// within, or a value within it was recorded as [`REDACTED`].
fn redacted_along(arguments: &Value, pointer: &str) -> bool {
    let ancestors = pointer
        .match_indices('/')
        .map(|(at, _)| &pointer[..at])
        .chain([pointer]);
    for prefix in ancestors {
        match arguments.pointer(prefix) {
            Some(Value::String(s)) if s == REDACTED => return true,
            Some(_) => {}
            None => return false,
        }
    }
    arguments.pointer(pointer).is_some_and(holds_redaction)
}

fn holds_redaction(value: &Value) -> bool {
    match value {
        Value::String(s) => s == REDACTED,
        Value::Array(items) => items.iter().any(holds_redaction),
        Value::Object(fields) => fields.values().any(holds_redaction),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::redacted;
    use crate::entra::test_principal;
    use crate::evaluate::{argument_outcomes, evaluate};
    use crate::model::ApprovalPolicySpec;
    use proptest::prelude::*;
    use serde_json::json;

    fn compile(name: &str, spec: Value) -> CompiledPolicy {
        let spec: ApprovalPolicySpec = serde_json::from_value(spec).unwrap();
        spec.compile(name, "1").unwrap()
    }

    /// Engineers deploy to staging; production needs a lead; leads read status.
    fn recorded_under() -> Vec<CompiledPolicy> {
        vec![compile(
            "ml/ops",
            json!({"rules": [
                {"name": "staging", "match": {"tools": ["deploy"], "arguments": [{"pointer": "/env", "in": ["staging"]}]},
                 "principals": {"groups": ["eng"]}, "action": "Allow"},
                {"name": "prod", "match": {"tools": ["deploy"], "arguments": [{"pointer": "/env", "in": ["prod"]}]},
                 "principals": {"groups": ["eng"]}, "action": "RequireApproval",
                 "approval": {"approvers": {"groups": ["leads"]}}},
                {"name": "status", "match": {"tools": ["status"]}, "principals": {"groups": ["leads"]}, "action": "Allow"}
            ]}),
        )]
    }

    /// The event the gateway records for `groups` calling `tool` under
    /// [`recorded_under`], keeping the arguments (redacted at `redact`) or not.
    fn event(groups: &[&str], tool: &str, arguments: Option<Value>, redact: &[&str]) -> AuditEvent {
        let policies = recorded_under();
        let caller = test_principal("oid-ada", groups);
        let target = Target::Tool(tool.into());
        let call = Call {
            method: "tools/call",
            target: &target,
            arguments: arguments.as_ref(),
        };
        let decision = evaluate(&policies, &caller, &call);
        let redact: Vec<String> = redact.iter().map(|p| p.to_string()).collect();
        AuditEvent {
            kind: "message".into(),
            method: Some("tools/call".into()),
            target: Some(tool.into()),
            principal: Some(AuditPrincipal::judged(&caller, &policies)),
            decision: Some(decision.action.to_string()),
            argument_tests: argument_outcomes(&policies, &call),
            arguments: arguments.clone().map(|a| redacted(&a, &redact)),
            ..AuditEvent::default()
        }
    }

    fn replayed(policies: &[CompiledPolicy], event: &AuditEvent) -> Replayed {
        replay(policies, &RecordedCall::of(event).unwrap())
    }

    #[test]
    fn only_judged_calls_are_replayed() {
        let judged = event(&["eng"], "status", None, &[]);
        assert!(RecordedCall::of(&judged).is_some());
        for not_judged in [
            AuditEvent {
                decision: Some("Response".into()),
                ..judged.clone()
            },
            AuditEvent {
                decision: Some("Unauthenticated".into()),
                ..judged.clone()
            },
            AuditEvent {
                kind: "approval.decided".into(),
                ..judged.clone()
            },
            AuditEvent {
                principal: None,
                ..judged.clone()
            },
        ] {
            assert!(RecordedCall::of(&not_judged).is_none(), "{not_judged:?}");
        }
    }

    #[test]
    fn a_change_the_record_settles_names_the_rule_that_now_decides() {
        let changed = vec![compile(
            "ml/ops",
            json!({"rules": [
                {"name": "status-for-all", "match": {"tools": ["status"]}, "action": "Allow"}
            ]}),
        )];
        let replayed = replayed(&changed, &event(&["eng"], "status", None, &[]));
        assert_eq!(replayed.decided(), Some(Action::Allow));
        assert_eq!(replayed.reason.as_deref(), Some("ml/ops/status-for-all"));
        assert!(replayed.unknown.is_empty());

        let none = replay(
            &[],
            &RecordedCall::of(&event(&["eng"], "status", None, &[])).unwrap(),
        );
        assert_eq!(none.decided(), Some(Action::Deny));
        assert_eq!(none.reason.as_deref(), Some("no-policy"));
    }

    #[test]
    fn a_group_no_policy_named_is_unknown_unless_it_cannot_matter() {
        let changed = vec![compile(
            "ml/ops",
            json!({"rules": [
                {"name": "status", "match": {"tools": ["status"]}, "principals": {"groups": ["leads", "auditors"]}, "action": "Allow"}
            ]}),
        )];
        // A lead was checked for `leads` and held it: allowed whatever `auditors` is.
        let lead = replayed(
            &changed,
            &event(&["leads", "auditors"], "status", None, &[]),
        );
        assert_eq!(lead.decided(), Some(Action::Allow));
        // An engineer was checked for `leads` only: `auditors` decides.
        let engineer = replayed(&changed, &event(&["eng", "auditors"], "status", None, &[]));
        assert_eq!(engineer.decided(), None);
        assert_eq!(
            engineer.possible,
            BTreeSet::from([Action::Allow, Action::Deny])
        );
        assert_eq!(
            engineer.unknown,
            [
                "ml/ops/status: whether the caller has group auditors (no policy named it when the call was recorded)"
            ]
        );
        // The recorded event kept no group but those the policy named.
        let recorded = event(&["eng", "auditors"], "status", None, &[]);
        assert_eq!(recorded.principal.unwrap().held.groups, ["eng"]);
    }

    #[test]
    fn arguments_not_recorded_or_redacted_are_unknown_where_a_matcher_reads_them() {
        let changed = vec![compile(
            "ml/ops",
            json!({"rules": [
                {"name": "staging", "match": {"tools": ["deploy"], "arguments": [{"pointer": "/env", "in": ["staging", "qa"]}]},
                 "action": "Allow"},
                {"name": "read", "match": {"tools": ["status"]}, "action": "Allow"}
            ]}),
        )];
        let staging = json!({"env": "staging", "model": "m"});
        let kept = replayed(
            &changed,
            &event(&["eng"], "deploy", Some(staging.clone()), &[]),
        );
        assert_eq!(kept.decided(), Some(Action::Allow));
        let lost = replayed(&changed, &event(&["eng"], "deploy", None, &[]));
        assert_eq!(lost.decided(), None);
        assert_eq!(
            lost.unknown,
            ["ml/ops/staging: argument /env: the call's arguments were not recorded"]
        );
        let hidden = replayed(
            &changed,
            &event(&["eng"], "deploy", Some(staging.clone()), &["/env"]),
        );
        assert_eq!(hidden.decided(), None);
        assert_eq!(
            hidden.unknown,
            ["ml/ops/staging: argument /env: recorded redacted"]
        );
        // Redacting another argument hides nothing the matcher reads.
        let elsewhere = replayed(
            &changed,
            &event(&["eng"], "deploy", Some(staging), &["/model"]),
        );
        assert_eq!(elsewhere.decided(), Some(Action::Allow));
        // No matcher, no arguments needed.
        let status = replayed(&changed, &event(&["eng"], "status", None, &[]));
        assert_eq!(status.decided(), Some(Action::Allow));
    }

    #[test]
    fn a_matcher_the_recording_policy_had_is_known_without_the_arguments() {
        // `recorded_under` tests `/env in [prod]` on deploys: its outcome is
        // in the trail, though no argument is.
        let changed = vec![compile(
            "ml/ops",
            json!({"rules": [
                {"name": "prod-denied", "match": {"tools": ["deploy"], "arguments": [{"pointer": "/env", "in": ["prod"]}]},
                 "action": "Deny"},
                {"name": "deploys", "match": {"tools": ["deploy"]}, "action": "Allow"}
            ]}),
        )];
        let prod = event(&["eng"], "deploy", Some(json!({"env": "prod"})), &[]);
        let prod = AuditEvent {
            arguments: None,
            ..prod
        };
        assert_eq!(prod.argument_tests.len(), 2, "{:?}", prod.argument_tests);
        let replayed = replayed(&changed, &prod);
        assert_eq!(replayed.decided(), Some(Action::Deny));
        assert_eq!(replayed.reason.as_deref(), Some("ml/ops/prod-denied"));
    }

    #[test]
    fn no_outcome_is_recorded_for_a_matcher_on_a_redacted_argument() {
        let policies = vec![compile(
            "ml/ops",
            json!({"rules": [
                {"name": "by-token", "match": {"tools": ["login"], "arguments": [
                    {"pointer": "/token", "equals": "letmein"}, {"pointer": "/user", "exists": true}]},
                 "action": "Allow", "audit": {"capture": "Arguments", "redact": ["/token"]}},
                {"name": "other", "match": {"tools": ["other"], "arguments": [{"pointer": "/x", "exists": true}]},
                 "action": "Allow"}
            ]}),
        )];
        let target = Target::Tool("login".into());
        let arguments = json!({"token": "letmein", "user": "ada"});
        let outcomes = argument_outcomes(
            &policies,
            &Call {
                method: "tools/call",
                target: &target,
                arguments: Some(&arguments),
            },
        );
        assert_eq!(
            outcomes,
            BTreeMap::from([(r#"{"exists":true,"pointer":"/user"}"#.to_string(), true)]),
            "not /token (redacted), not /x (a rule for another tool)"
        );
    }

    #[test]
    fn redaction_is_found_above_at_and_below_the_pointer() {
        let arguments =
            json!({"a": {"b": REDACTED}, "c": REDACTED, "d": {"e": 1}, "f": [1, {"g": REDACTED}]});
        for hidden in ["/a", "/a/b", "/a/b/x", "/c", "/c/y", "/f", "/f/1"] {
            assert!(redacted_along(&arguments, hidden), "{hidden}");
        }
        for plain in ["/d", "/d/e", "/missing", "/f/0"] {
            assert!(!redacted_along(&arguments, plain), "{plain}");
        }
    }

    #[test]
    fn a_rule_that_may_apply_only_raises_the_floor_it_could_reach() {
        // Certainly RequireApproval; an unknown Allow cannot lower it, an
        // unknown Deny may raise it.
        let policies = vec![compile(
            "ml/ops",
            json!({"defaultAction": "Allow", "rules": [
                {"name": "held", "match": {"tools": ["deploy"]}, "action": "RequireApproval",
                 "approval": {"approvers": {"groups": ["leads"]}}},
                {"name": "maybe-allow", "match": {"tools": ["deploy"]}, "principals": {"groups": ["x"]}, "action": "Allow"},
                {"name": "maybe-deny", "match": {"tools": ["deploy"]}, "principals": {"groups": ["y"]}, "action": "Deny"}
            ]}),
        )];
        let replayed = replayed(&policies, &event(&["eng"], "deploy", None, &[]));
        assert_eq!(
            replayed.possible,
            BTreeSet::from([Action::RequireApproval, Action::Deny])
        );
        assert_eq!(replayed.unknown.len(), 1, "{:?}", replayed.unknown);
        // Dry-run policies never decide.
        let mut dry = policies[0].clone();
        dry.spec.enforcement = Enforcement::DryRun;
        assert_eq!(
            replay(
                &[dry],
                &RecordedCall::of(&event(&["eng"], "deploy", None, &[])).unwrap()
            )
            .reason
            .as_deref(),
            Some("no-policy")
        );
    }

    proptest! {
        /// With everything recorded (arguments kept, the same policies), a
        /// replay is the gateway's own decision, rules included.
        #[test]
        fn a_fully_recorded_call_replays_to_the_decision_it_got(
            groups in proptest::sample::subsequence(vec!["eng", "leads", "hr"], 0..=3),
            tool in proptest::sample::select(vec!["deploy", "status", "other"]),
            env in proptest::sample::select(vec!["staging", "prod", "dev"]),
        ) {
            let policies = recorded_under();
            let event = event(&groups, tool, Some(json!({"env": env})), &[]);
            let replayed = replayed(&policies, &event);
            let caller = test_principal("oid-ada", &groups);
            let target = Target::Tool(tool.into());
            let arguments = json!({"env": env});
            let decision = evaluate(&policies, &caller, &Call { method: "tools/call", target: &target, arguments: Some(&arguments) });
            prop_assert_eq!(replayed.decided(), Some(decision.action));
            prop_assert_eq!(replayed.reason, Some(decision.reason()));
        }
    }
}
