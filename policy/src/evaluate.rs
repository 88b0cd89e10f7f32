//! Policy evaluation: most restrictive wins, and order never matters.
//!
//! Each enforced policy gives one verdict — the most restrictive action among
//! its applicable rules, or its default — and the decision is the most
//! restrictive verdict. No policy means deny. So adding a policy, a rule or a
//! label can only ever narrow access, and each rule can be read alone.

use crate::entra::Principal;
use crate::mcp::Target;
use crate::model::{
    Action, ArgumentTest, CompiledMatcher, CompiledPolicy, CompiledRule, Enforcement, Principals,
    Rule,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// The parts of a call that policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub method: &'a str,
    pub target: &'a Target,
    pub arguments: Option<&'a Value>,
}

/// One policy's verdict on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `namespace/name` of the policy.
    pub policy: String,
    pub policy_version: String,
    pub action: Action,
    /// The rules that gave `action`; empty when the policy's default did.
    pub rules: Vec<String>,
}

/// The outcome for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Verdicts of enforced policies that gave `action`: the reasons.
    pub deciding: Vec<Verdict>,
    /// Verdicts of dry-run policies, recorded but not enforced.
    pub dry_run: Vec<Verdict>,
}

impl Decision {
    /// `policy/rule` names of the deciding rules, or the deciding policies
    /// where their default applied; `no-policy` when nothing selected the server.
    pub fn reason(&self) -> String {
        if self.deciding.is_empty() {
            return "no-policy".into();
        }
        let mut reason = String::new();
        let mut part = |policy: &str, rule: &str| {
            if !reason.is_empty() {
                reason.push(',');
            }
            reason.push_str(policy);
            reason.push('/');
            reason.push_str(rule);
        };
        for verdict in &self.deciding {
            if verdict.rules.is_empty() {
                part(&verdict.policy, "defaultAction");
            }
            for rule in &verdict.rules {
                part(&verdict.policy, rule);
            }
        }
        reason
    }

    /// The rules of `policies` that made this decision, e.g. to read their approval settings.
    pub fn deciding_rules<'p>(&self, policies: &'p [CompiledPolicy]) -> Vec<&'p Rule> {
        self.deciding
            .iter()
            .flat_map(|verdict| {
                let policy = policies.iter().find(|p| p.name == verdict.policy);
                verdict.rules.iter().filter_map(move |name| {
                    policy.and_then(|p| p.spec.rules.iter().find(|r| &r.name == name))
                })
            })
            .collect()
    }
}

/// Evaluates `policies` — already narrowed to those selecting the server — for one call.
pub fn evaluate(policies: &[CompiledPolicy], principal: &Principal, call: &Call<'_>) -> Decision {
    let mut enforced = Vec::new();
    let mut dry_run = Vec::new();
    for policy in policies {
        let verdict = policy_verdict(policy, principal, call);
        match policy.spec.enforcement {
            Enforcement::Enforce => enforced.push(verdict),
            Enforcement::DryRun => dry_run.push(verdict),
        }
    }
    let action = enforced
        .iter()
        .map(|v| v.action)
        .max()
        .unwrap_or(Action::Deny);
    enforced.retain(|v| v.action == action);
    Decision {
        action,
        deciding: enforced,
        dry_run,
    }
}

/// The rules of `policy` that may match `call` by what it addresses, with
/// their compiled parts, in the policy's order.
fn candidates<'p>(
    policy: &'p CompiledPolicy,
    call: &Call<'_>,
) -> impl Iterator<Item = (&'p Rule, &'p CompiledRule)> {
    policy
        .index
        .candidates(call.method, call.target)
        .filter_map(|i| Some((policy.spec.rules.get(i)?, policy.rules.get(i)?)))
}

fn policy_verdict(policy: &CompiledPolicy, principal: &Principal, call: &Call<'_>) -> Verdict {
    let applicable: Vec<&Rule> = candidates(policy, call)
        .filter(|(rule, compiled)| {
            rule_matches(rule, call)
                && compiled
                    .arguments
                    .iter()
                    .all(|m| argument_holds(m, call.arguments))
                && principals_hold(&rule.principals, principal)
        })
        .map(|(rule, _)| rule)
        .collect();
    let action = applicable
        .iter()
        .map(|r| r.action)
        .max()
        .unwrap_or(policy.spec.default_action);
    Verdict {
        policy: policy.name.clone(),
        policy_version: policy.version.clone(),
        action,
        rules: applicable
            .iter()
            .filter(|r| r.action == action)
            .map(|r| r.name.clone())
            .collect(),
    }
}

/// Whether `rule`'s method, target and principal criteria hold, leaving its
/// argument matchers aside (for listing tools, when arguments are unknown).
pub fn rule_applies_without_arguments(
    rule: &Rule,
    principal: &Principal,
    method: &str,
    target: &Target,
) -> bool {
    let call = Call {
        method,
        target,
        arguments: None,
    };
    rule_matches(rule, &call) && principals_hold(&rule.principals, principal)
}

/// The outcome of each argument matcher of the rules that could apply to
/// `call` by its method and target, keyed by the matcher: for the trail, so
/// that a replay against another policy knows them without the arguments.
/// Matchers on arguments any rule redacts are left out — their outcomes
/// would tell what redaction hides.
pub fn argument_outcomes(policies: &[CompiledPolicy], call: &Call<'_>) -> BTreeMap<String, bool> {
    let redacted: Vec<&str> = policies
        .iter()
        .flat_map(|p| &p.spec.rules)
        .filter_map(|r| r.audit.as_ref())
        .flat_map(|a| a.redact.iter().map(String::as_str))
        .collect();
    let mut outcomes = BTreeMap::new();
    for policy in policies {
        for (rule, compiled) in candidates(policy, call) {
            if compiled.arguments.is_empty() || !rule_matches(rule, call) {
                continue;
            }
            for matcher in &compiled.arguments {
                if redacted.iter().any(|r| overlaps(r, &matcher.pointer)) {
                    continue;
                }
                outcomes
                    .entry(matcher.key.clone())
                    .or_insert_with(|| argument_holds(matcher, call.arguments));
            }
        }
    }
    outcomes
}

/// Whether one of two JSON pointers addresses a value within (or at) the other's.
fn overlaps(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// `*` matches any run of characters (including none); everything else is literal.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob_matches(p, text))
}

pub(crate) fn rule_matches(rule: &Rule, call: &Call<'_>) -> bool {
    let m = &rule.matches;
    if !m.methods.is_empty() && !any_glob(&m.methods, call.method) {
        return false;
    }
    if m.tools.is_empty() && m.resources.is_empty() && m.prompts.is_empty() {
        return true;
    }
    match call.target {
        Target::Tool(name) => any_glob(&m.tools, name),
        Target::Resource(uri) => call.method == "resources/read" && any_glob(&m.resources, uri),
        Target::Prompt(name) => any_glob(&m.prompts, name),
        Target::None => false,
    }
}

fn principals_hold(principals: &Principals, principal: &Principal) -> bool {
    let any = |wanted: &[String], have: &[String]| {
        wanted.is_empty() || wanted.iter().any(|w| have.contains(w))
    };
    let one = |wanted: &[String], have: &str| wanted.is_empty() || wanted.iter().any(|w| w == have);
    any(&principals.groups, &principal.groups)
        && one(&principals.users, &principal.object_id)
        && one(&principals.apps, &principal.app_id)
        && any(&principals.roles, &principal.roles)
        && any(&principals.scopes, &principal.scopes)
}

fn values_equal(a: &Value, b: &Value, ignore_case: bool) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) if ignore_case => x.to_lowercase() == y.to_lowercase(),
        _ => a == b,
    }
}

pub(crate) fn argument_holds(matcher: &CompiledMatcher, arguments: Option<&Value>) -> bool {
    let value = arguments.and_then(|args| args.pointer(&matcher.pointer));
    let in_list = |list: &[Value], v: &Value| {
        list.iter()
            .any(|item| values_equal(item, v, matcher.ignore_case))
    };
    match (&matcher.test, value) {
        (ArgumentTest::Exists(wanted), v) => v.is_some() == *wanted,
        (ArgumentTest::Equals(expected), Some(v)) => v == expected,
        (ArgumentTest::In(list), Some(v)) => in_list(list, v),
        // Absent counts as "not in": a server may default a missing argument to anything.
        (ArgumentTest::NotIn(list), v) => v.is_none_or(|v| !in_list(list, v)),
        (ArgumentTest::Matches(re), Some(Value::String(s))) => re.is_match(s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::design_example;
    use crate::model::{ApprovalPolicySpec, ArgumentMatcher};
    use proptest::prelude::*;
    use serde_json::json;

    fn person(groups: &[&str]) -> Principal {
        Principal {
            object_id: "oid-1".into(),
            app_id: "app-1".into(),
            roles: vec!["Reader".into()],
            scopes: vec!["mcp.call".into()],
            ..crate::entra::test_principal("oid-1", groups)
        }
    }

    fn tool<'a>(target: &'a Target, arguments: Option<&'a Value>) -> Call<'a> {
        Call {
            method: "tools/call",
            target,
            arguments,
        }
    }

    fn compile(spec: &ApprovalPolicySpec, name: &str) -> CompiledPolicy {
        spec.compile(name, "1").unwrap()
    }

    #[test]
    fn design_example_behaves_as_documented() {
        let policies = [compile(&design_example(), "ml/model-ops")];
        let engineer = person(&["engineers"]);
        let outsider = person(&[]);

        let list = Call {
            method: "tools/list",
            target: &Target::None,
            arguments: None,
        };
        assert_eq!(evaluate(&policies, &outsider, &list).action, Action::Allow);
        let note = Call {
            method: "notifications/initialized",
            target: &Target::None,
            arguments: None,
        };
        assert_eq!(evaluate(&policies, &outsider, &note).action, Action::Allow);

        let status = Target::Tool("get_status".into());
        let d = evaluate(&policies, &engineer, &tool(&status, None));
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.reason(), "ml/model-ops/read-status");
        let d = evaluate(&policies, &outsider, &tool(&status, None));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.reason(), "ml/model-ops/defaultAction");

        let deploy = Target::Tool("deploy_model".into());
        let prod = json!({"environment": "Production", "model": "m"});
        let d = evaluate(&policies, &engineer, &tool(&deploy, Some(&prod)));
        assert_eq!(d.action, Action::RequireApproval);
        assert_eq!(d.deciding_rules(&policies)[0].name, "deploy-to-prod");
        let dev = json!({"environment": "dev"});
        assert_eq!(
            evaluate(&policies, &engineer, &tool(&deploy, Some(&dev))).action,
            Action::Deny
        );

        let secret = Target::Tool("read_secret".into());
        assert_eq!(
            evaluate(&policies, &engineer, &tool(&secret, None)).action,
            Action::Deny
        );
    }

    #[test]
    fn no_policy_denies() {
        let d = evaluate(
            &[],
            &person(&[]),
            &Call {
                method: "ping",
                target: &Target::None,
                arguments: None,
            },
        );
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.reason(), "no-policy");
    }

    #[test]
    fn most_restrictive_wins_across_policies_and_dry_run_only_records() {
        let allow_all: ApprovalPolicySpec =
            serde_json::from_value(json!({"defaultAction": "Allow"})).unwrap();
        let deny_secrets: ApprovalPolicySpec = serde_json::from_value(json!({
            "defaultAction": "Allow",
            "rules": [{"name": "no-secrets", "match": {"tools": ["read_*"]}, "action": "Deny"}]
        }))
        .unwrap();
        let mut dry = deny_secrets.clone();
        dry.enforcement = Enforcement::DryRun;
        let secret = Target::Tool("read_secret".into());
        let call = tool(&secret, None);
        let p = person(&[]);

        let d = evaluate(
            &[compile(&allow_all, "a"), compile(&deny_secrets, "b")],
            &p,
            &call,
        );
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.reason(), "b/no-secrets");

        let d = evaluate(&[compile(&allow_all, "a"), compile(&dry, "b")], &p, &call);
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.dry_run[0].action, Action::Deny);
        // A dry-run policy alone does not select: the call is still denied.
        assert_eq!(
            evaluate(&[compile(&dry, "b")], &p, &call).action,
            Action::Deny
        );
    }

    #[test]
    fn principals_all_must_hold() {
        let spec: ApprovalPolicySpec = serde_json::from_value(json!({
            "rules": [{"name": "r", "principals": {"groups": ["g"], "apps": ["app-1"], "roles": ["Reader"], "scopes": ["mcp.call"], "users": ["oid-1"]}, "action": "Allow"}]
        }))
        .unwrap();
        let policies = [compile(&spec, "p")];
        let call = Call {
            method: "ping",
            target: &Target::None,
            arguments: None,
        };
        assert_eq!(
            evaluate(&policies, &person(&["g"]), &call).action,
            Action::Allow
        );
        assert_eq!(
            evaluate(&policies, &person(&["h"]), &call).action,
            Action::Deny
        );
        let mut other_app = person(&["g"]);
        other_app.app_id = "app-2".into();
        assert_eq!(evaluate(&policies, &other_app, &call).action, Action::Deny);
        let mut other_user = person(&["g"]);
        other_user.object_id = "oid-2".into();
        assert_eq!(evaluate(&policies, &other_user, &call).action, Action::Deny);
    }

    #[test]
    fn argument_matchers() {
        let check = |matcher: serde_json::Value, args: Value| {
            let m: ArgumentMatcher = serde_json::from_value(matcher).unwrap();
            let spec = ApprovalPolicySpec {
                servers: Default::default(),
                namespaces: None,
                default_action: Action::Deny,
                enforcement: Enforcement::Enforce,
                notify: None,
                rules: vec![Rule {
                    name: "r".into(),
                    matches: crate::model::Match {
                        arguments: vec![m],
                        ..Default::default()
                    },
                    principals: Default::default(),
                    action: Action::Allow,
                    approval: None,
                    audit: None,
                }],
            };
            let t = Target::Tool("t".into());
            evaluate(&[compile(&spec, "p")], &person(&[]), &tool(&t, Some(&args))).action
                == Action::Allow
        };
        assert!(check(
            json!({"pointer": "/env", "equals": "prod"}),
            json!({"env": "prod"})
        ));
        assert!(!check(
            json!({"pointer": "/env", "equals": "prod"}),
            json!({"env": "Prod"})
        ));
        assert!(!check(
            json!({"pointer": "/env", "equals": "prod"}),
            json!({})
        ));
        assert!(check(
            json!({"pointer": "/n", "equals": 100}),
            json!({"n": 100})
        ));
        assert!(check(
            json!({"pointer": "/a/0/b", "equals": true}),
            json!({"a": [{"b": true}]})
        ));
        assert!(check(
            json!({"pointer": "/env", "in": ["prod", "production"]}),
            json!({"env": "production"})
        ));
        assert!(!check(
            json!({"pointer": "/env", "in": ["prod"]}),
            json!({"env": "PROD"})
        ));
        assert!(check(
            json!({"pointer": "/env", "in": ["prod"], "ignoreCase": true}),
            json!({"env": "PROD"})
        ));
        assert!(check(
            json!({"pointer": "/env", "notIn": ["dev"]}),
            json!({"env": "prod"})
        ));
        assert!(check(
            json!({"pointer": "/env", "notIn": ["dev"]}),
            json!({})
        ));
        assert!(!check(
            json!({"pointer": "/env", "notIn": ["dev"]}),
            json!({"env": "dev"})
        ));
        assert!(check(
            json!({"pointer": "/v", "matches": "v[0-9]+"}),
            json!({"v": "v12"})
        ));
        assert!(!check(
            json!({"pointer": "/v", "matches": "v[0-9]+"}),
            json!({"v": "xv12y"})
        ));
        assert!(!check(
            json!({"pointer": "/v", "matches": "1"}),
            json!({"v": 1})
        ));
        assert!(check(
            json!({"pointer": "/v", "exists": true}),
            json!({"v": null})
        ));
        assert!(check(json!({"pointer": "/v", "exists": false}), json!({})));
    }

    #[test]
    fn targets_imply_methods() {
        let spec: ApprovalPolicySpec = serde_json::from_value(json!({
            "rules": [
                {"name": "files", "match": {"resources": ["file:///public/*"]}, "action": "Allow"},
                {"name": "prompts", "match": {"prompts": ["greet*"]}, "action": "Allow"}
            ]
        }))
        .unwrap();
        let policies = [compile(&spec, "p")];
        let p = person(&[]);
        let public = Target::Resource("file:///public/a/b".into());
        let read = Call {
            method: "resources/read",
            target: &public,
            arguments: None,
        };
        assert_eq!(evaluate(&policies, &p, &read).action, Action::Allow);
        let subscribe = Call {
            method: "resources/subscribe",
            target: &public,
            arguments: None,
        };
        assert_eq!(evaluate(&policies, &p, &subscribe).action, Action::Deny);
        let private = Target::Resource("file:///private".into());
        assert_eq!(
            evaluate(
                &policies,
                &p,
                &Call {
                    method: "resources/read",
                    target: &private,
                    arguments: None
                }
            )
            .action,
            Action::Deny
        );
        let prompt = Target::Prompt("greeting".into());
        assert_eq!(
            evaluate(
                &policies,
                &p,
                &Call {
                    method: "prompts/get",
                    target: &prompt,
                    arguments: None
                }
            )
            .action,
            Action::Allow
        );
    }

    #[test]
    fn globs() {
        assert!(glob_matches("get_*", "get_status"));
        assert!(glob_matches("get_*", "get_"));
        assert!(!glob_matches("get_*", "Get_status"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches(
            "notifications/*",
            "notifications/tools/list_changed"
        ));
        assert!(!glob_matches("tools/list", "tools/listx"));
        assert!(glob_matches("*secret*", "read_secret_v2"));
    }

    fn arbitrary_rule() -> impl Strategy<Value = Rule> {
        (
            "[a-z]{1,6}",
            prop::sample::select(vec![Action::Allow, Action::Deny]),
            prop::option::of(prop::sample::select(vec![
                "get_*",
                "deploy_model",
                "*",
                "read_secret",
            ])),
            prop::option::of(prop::sample::select(vec!["g1", "g2"])),
            prop::option::of(prop::sample::select(vec!["prod", "dev"])),
        )
            .prop_map(|(name, action, tool, group, env)| Rule {
                name,
                matches: crate::model::Match {
                    tools: tool.map(|t| vec![t.to_string()]).unwrap_or_default(),
                    arguments: env
                        .map(|e| {
                            vec![ArgumentMatcher {
                                pointer: "/env".into(),
                                equals: Some(json!(e)),
                                one_of: None,
                                not_in: None,
                                matches: None,
                                exists: None,
                                ignore_case: false,
                            }]
                        })
                        .unwrap_or_default(),
                    ..Default::default()
                },
                principals: Principals {
                    groups: group.map(|g| vec![g.to_string()]).unwrap_or_default(),
                    ..Default::default()
                },
                action,
                approval: None,
                audit: None,
            })
    }

    fn arbitrary_policies() -> impl Strategy<Value = Vec<ApprovalPolicySpec>> {
        prop::collection::vec(
            (
                prop::collection::vec(arbitrary_rule(), 0..5),
                prop::sample::select(vec![Action::Allow, Action::Deny]),
            )
                .prop_map(|(mut rules, default_action)| {
                    for (i, r) in rules.iter_mut().enumerate() {
                        r.name = format!("{}-{i}", r.name);
                    }
                    ApprovalPolicySpec {
                        servers: Default::default(),
                        namespaces: None,
                        default_action,
                        enforcement: Enforcement::Enforce,
                        rules,
                        notify: None,
                    }
                }),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn order_never_matters(specs in arbitrary_policies(), seed in any::<u64>(), tool_name in prop::sample::select(vec!["get_status", "deploy_model", "read_secret"]), env in prop::sample::select(vec!["prod", "dev"]), group in prop::sample::select(vec!["g1", "g2"])) {
            let compiled: Vec<CompiledPolicy> = specs.iter().enumerate().map(|(i, s)| compile(s, &format!("p{i}"))).collect();
            let shuffled: Vec<CompiledPolicy> = specs
                .iter()
                .enumerate()
                .rev()
                .map(|(i, spec)| {
                    let mut spec = spec.clone();
                    let n = spec.rules.len();
                    if n > 1 {
                        spec.rules.rotate_left((seed as usize) % n);
                    }
                    compile(&spec, &format!("p{i}"))
                })
                .collect();
            let target = Target::Tool(tool_name.into());
            let args = json!({"env": env});
            let who = person(&[group]);
            let a = evaluate(&compiled, &who, &tool(&target, Some(&args)));
            let b = evaluate(&shuffled, &who, &tool(&target, Some(&args)));
            prop_assert_eq!(a.action, b.action);
        }

        #[test]
        fn adding_a_policy_never_widens(specs in arbitrary_policies(), extra in arbitrary_policies(), tool_name in prop::sample::select(vec!["get_status", "deploy_model"]), group in prop::sample::select(vec!["g1", "g2"])) {
            let base: Vec<CompiledPolicy> = specs.iter().enumerate().map(|(i, s)| compile(s, &format!("p{i}"))).collect();
            let mut more = base.clone();
            more.extend(extra.iter().enumerate().map(|(i, s)| compile(s, &format!("x{i}"))));
            let target = Target::Tool(tool_name.into());
            let who = person(&[group]);
            let before = evaluate(&base, &who, &tool(&target, None)).action;
            let after = evaluate(&more, &who, &tool(&target, None)).action;
            prop_assert!(after >= before || base.is_empty());
        }
    }
}
