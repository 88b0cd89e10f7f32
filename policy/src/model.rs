//! The ApprovalPolicy model: the same types back the CRD spec in the cluster
//! and the YAML `airlock up` reads, and [`ApprovalPolicySpec::compile`] is the
//! one validation both use, so a policy is accepted or refused identically
//! everywhere, with the exact field named.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

use crate::rule_index::RuleIndex;

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// What a rule (or a policy by default) does with a call.
///
/// Ordered by restrictiveness: `Deny` > `RequireApproval` > `Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum Action {
    Allow,
    RequireApproval,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "Allow",
            Action::RequireApproval => "RequireApproval",
            Action::Deny => "Deny",
        })
    }
}

/// Whether a policy's verdict is enforced or only recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum Enforcement {
    /// The verdict takes part in the decision.
    #[default]
    Enforce,
    /// The verdict is recorded (audit, metrics, a response header) but never blocks.
    DryRun,
}

/// The specification of an ApprovalPolicy: which MCP servers it governs and
/// the rules that decide each call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "mcp.airlock.dev",
        version = "v1alpha1",
        kind = "ApprovalPolicy",
        namespaced,
        status = "crate::model::ApprovalPolicyStatus",
        shortname = "apol",
        category = "airlock",
        printcolumn = r#"{"name":"Enforcement","type":"string","jsonPath":".spec.enforcement"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type=='Accepted')].status"}"#,
        printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.compiledVersion"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalPolicySpec {
    /// Which MCP servers this policy governs; an empty selector selects every
    /// server in the namespace.
    #[serde(default)]
    pub servers: ServerSelector,
    /// Makes the policy a baseline, honoured in the operator's namespace
    /// only: it governs every server of every namespace whose labels match
    /// (an empty selector: all namespaces), whatever the servers' own
    /// labels, so `spec.servers` must be empty. A namespace's owners can
    /// neither edit it nor relabel a server out of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceSelector>,
    /// The verdict when no rule applies to a call.
    #[serde(default = "deny")]
    pub default_action: Action,
    /// `Enforce` (default) or `DryRun`.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Rules; order never matters: the most restrictive applicable rule wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Where people hear of this policy's approval requests (asked, more
    /// context asked, decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

/// A notification channel for approval requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notify {
    /// A channel the platform team set up: the Secret `airlock-notify-CHANNEL`
    /// in the operator's namespace holds its webhook URL. Never a URL here,
    /// so whoever edits policies cannot point it at an internal address.
    pub channel: String,
}

fn deny() -> Action {
    Action::Deny
}

/// Selects McpServers by name and/or labels; both must hold when both are given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSelector {
    /// Labels the server must carry, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Server names, any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl ServerSelector {
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| n == name))
            && self
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Selects namespaces by their labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    /// Labels the namespace must carry, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl NamespaceSelector {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One rule: when its match and principals hold, its action applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Unique within the policy; recorded with every decision it makes.
    pub name: String,
    /// Which calls the rule is about; an empty match applies to every call.
    #[serde(rename = "match", default)]
    pub matches: Match,
    /// Who the rule is about; empty means everyone.
    #[serde(default)]
    pub principals: Principals,
    pub action: Action,
    /// Required with `RequireApproval`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// What the audit trail records of calls this rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditCapture>,
}

/// Call criteria; every non-empty criterion must hold. `tools` implies method
/// `tools/call`, `resources` `resources/read`, `prompts` `prompts/get`; when
/// several of these are listed, a call matching any of them qualifies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// JSON-RPC method globs (`*` matches any run of characters), e.g. `notifications/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Tool name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Resource URI globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Prompt name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Conditions on the call's arguments, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<ArgumentMatcher>,
}

/// A condition on one argument, addressed by JSON pointer into `arguments`.
/// Exactly one of `equals`, `in`, `notIn`, `matches`, `exists` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgumentMatcher {
    /// RFC 6901 JSON pointer, e.g. `/environment`.
    pub pointer: String,
    /// The argument equals this JSON value exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::model::any_json_schema")
    )]
    pub equals: Option<Value>,
    /// The argument is one of these values.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::model::any_json_list_schema")
    )]
    pub one_of: Option<Vec<Value>>,
    /// The argument is absent or none of these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::model::any_json_list_schema")
    )]
    pub not_in: Option<Vec<Value>>,
    /// The argument is a string matching this regular expression, anchored at both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// The argument is present (`true`) or absent (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// Compare strings in `in`/`notIn` without regard to case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

/// Who a rule applies to; every non-empty list must contain one of the caller's values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Principals {
    /// Entra group object ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// User object ids (`oid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Client application ids (`appid`/`azp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// App roles (`roles`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Delegated scopes (`scp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Groups, app roles and delegated scopes: the caller's claims that rules
/// test by membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

impl Claims {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.roles.is_empty() && self.scopes.is_empty()
    }

    /// Adds what `other` holds that `self` does not.
    pub fn extend(&mut self, other: &Claims) {
        for (mine, theirs) in [
            (&mut self.groups, &other.groups),
            (&mut self.roles, &other.roles),
            (&mut self.scopes, &other.scopes),
        ] {
            for claim in theirs {
                if !mine.contains(claim) {
                    mine.push(claim.clone());
                }
            }
        }
    }

    /// Those of these claims that `principal` holds.
    pub fn held_by(&self, principal: &crate::entra::Principal) -> Claims {
        let held = |named: &[String], have: &[String]| -> Vec<String> {
            named.iter().filter(|c| have.contains(c)).cloned().collect()
        };
        Claims {
            groups: held(&self.groups, &principal.groups),
            roles: held(&self.roles, &principal.roles),
            scopes: held(&self.scopes, &principal.scopes),
        }
    }
}

/// Who may approve a held call, how many, and what the approval grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    /// Who may approve: members of these groups, or these users.
    pub approvers: Approvers,
    /// Distinct approvers needed; one deny denies.
    #[serde(default = "one")]
    pub min_approvals: u32,
    /// How long a request waits for a decision, e.g. `30m`.
    #[serde(default = "thirty_minutes")]
    pub timeout: String,
    /// Whether the requester may approve their own call.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// `Once` (default) or `{window: 10m}`.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::model::any_json_schema")
    )]
    pub grant: Grant,
}

fn one() -> u32 {
    1
}

fn thirty_minutes() -> String {
    "30m".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approvers {
    /// Entra group object ids whose members may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// User object ids who may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// What an approval lets through: `Once` or `{window: 10m}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Grant {
    /// One release of the approved call.
    #[default]
    Once,
    /// Any number of identical calls within the window after approval.
    Window { window: String },
}

/// The two spellings of a grant in YAML.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum GrantForm {
    Word(String),
    Window(GrantWindow),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantWindow {
    window: String,
}

impl Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Grant::Once => GrantForm::Word("Once".into()),
            Grant::Window { window } => GrantForm::Window(GrantWindow {
                window: window.clone(),
            }),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match GrantForm::deserialize(d) {
            Ok(GrantForm::Word(word)) if word == "Once" => Ok(Grant::Once),
            Ok(GrantForm::Window(GrantWindow { window })) => Ok(Grant::Window { window }),
            _ => Err(D::Error::custom(
                "grant must be \"Once\" or {window: <duration>}",
            )),
        }
    }
}

/// What the audit trail keeps of calls a rule decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditCapture {
    /// How much of each call the trail keeps: `None` (the arguments'
    /// digest only), `Arguments` (redacted), `Session` (every message of
    /// the exchange, redacted); where several rules decide, the most wins.
    #[serde(default)]
    pub capture: Capture,
    /// JSON pointers replaced by `"[redacted]"`: each applies to the
    /// arguments and, with `Session` capture, to every captured message too
    /// (`/password` for an argument, `/result/content` for a response's content).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

/// Ordered by how much is kept: where several rules decide, the most wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum Capture {
    /// Only the digest of the arguments.
    #[default]
    None,
    /// The arguments, redacted.
    Arguments,
    /// Full request and response messages of the session, redacted.
    Session,
}

/// Any JSON value, in a form Kubernetes accepts in a structural schema.
#[cfg(feature = "schema")]
pub fn any_json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// A list of any JSON values, in a form Kubernetes accepts in a structural schema.
#[cfg(feature = "schema")]
pub fn any_json_list_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// What the operator reports about an ApprovalPolicy.
#[cfg(feature = "crd")]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (True, or False with the exact reason in its message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The version filters report when this policy is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled_version: Option<String>,
    /// `namespace/name` of the McpServers this policy selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_servers: Vec<String>,
}

/// A policy field that failed validation, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the spec, e.g. `spec.rules[2].match.arguments[0].matches`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Parses durations like `45s`, `10m`, `1h30m`, `2d` into seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    (number.is_none() && total > 0).then_some(total)
}

/// A validated policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `namespace/name`, as decisions and audit records name it.
    pub name: String,
    /// Changes whenever the spec changes (the resource's generation, or a digest locally).
    pub version: String,
    pub spec: ApprovalPolicySpec,
    pub(crate) rules: Vec<CompiledRule>,
    /// The rules by what they name, so that a call tries only those that can match.
    pub(crate) index: RuleIndex,
    /// Every group, role and scope its rules' principals name.
    pub named: Claims,
}

impl CompiledPolicy {
    /// Each rule, with whether it has argument matchers.
    pub fn rules_with_argument_flags(&self) -> impl Iterator<Item = (&Rule, bool)> {
        self.spec
            .rules
            .iter()
            .zip(&self.rules)
            .map(|(rule, compiled)| (rule, !compiled.arguments.is_empty()))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) arguments: Vec<CompiledMatcher>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledMatcher {
    /// The matcher as canonical JSON: the same in every policy that has it,
    /// so the trail can record its outcome by it.
    pub(crate) key: String,
    pub(crate) pointer: String,
    pub(crate) test: ArgumentTest,
    pub(crate) ignore_case: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum ArgumentTest {
    Equals(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Matches(Regex),
    Exists(bool),
}

/// The largest compiled regex a policy may carry.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl ApprovalPolicySpec {
    /// Validates every field and compiles matchers. Errors name each bad field.
    pub fn compile(&self, name: &str, version: &str) -> Result<CompiledPolicy, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: &str| {
            errors.push(FieldError {
                field,
                message: message.to_string(),
            })
        };
        if self.namespaces.is_some() && self.servers != ServerSelector::default() {
            err(
                "spec.servers".into(),
                "a baseline (spec.namespaces) governs every server of its namespaces: \
                 a server selector would let a server's labels take it out",
            );
        }
        if let Some(notify) = &self.notify {
            let label = &notify.channel;
            let valid = !label.is_empty()
                && label.len() <= 40
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                err(
                    "spec.notify.channel".into(),
                    "must be a channel name: lowercase letters, digits and '-', at most 40",
                );
            }
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            if rule.name.is_empty() {
                err(format!("{at}.name"), "must not be empty");
            } else if self.rules[..i].iter().any(|r| r.name == rule.name) {
                err(format!("{at}.name"), "duplicate rule name");
            }
            let globs = [
                ("methods", &rule.matches.methods),
                ("tools", &rule.matches.tools),
                ("resources", &rule.matches.resources),
                ("prompts", &rule.matches.prompts),
            ];
            for (list, patterns) in globs {
                for (j, pattern) in patterns.iter().enumerate() {
                    if pattern.is_empty() {
                        err(format!("{at}.match.{list}[{j}]"), "must not be empty");
                    }
                }
            }
            let mut arguments = Vec::new();
            for (j, m) in rule.matches.arguments.iter().enumerate() {
                let at = format!("{at}.match.arguments[{j}]");
                if !(m.pointer.is_empty() || m.pointer.starts_with('/')) {
                    err(
                        format!("{at}.pointer"),
                        "must be a JSON pointer starting with '/'",
                    );
                }
                let given = [
                    m.equals.is_some(),
                    m.one_of.is_some(),
                    m.not_in.is_some(),
                    m.matches.is_some(),
                    m.exists.is_some(),
                ]
                .iter()
                .filter(|g| **g)
                .count();
                if given != 1 {
                    err(
                        at.clone(),
                        "give exactly one of equals, in, notIn, matches, exists",
                    );
                    continue;
                }
                if m.ignore_case && m.one_of.is_none() && m.not_in.is_none() {
                    err(format!("{at}.ignoreCase"), "applies only to in and notIn");
                }
                let test = if let Some(v) = &m.equals {
                    ArgumentTest::Equals(v.clone())
                } else if let Some(v) = &m.one_of {
                    ArgumentTest::In(v.clone())
                } else if let Some(v) = &m.not_in {
                    ArgumentTest::NotIn(v.clone())
                } else if let Some(pattern) = &m.matches {
                    match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                    {
                        Ok(re) => ArgumentTest::Matches(re),
                        Err(_) => {
                            err(format!("{at}.matches"), "not a valid regular expression");
                            continue;
                        }
                    }
                } else {
                    ArgumentTest::Exists(m.exists.unwrap_or(true))
                };
                arguments.push(CompiledMatcher {
                    key: serde_json::to_value(m)
                        .map(|v| crate::canonical::to_canonical_string(&v))
                        .unwrap_or_default(),
                    pointer: m.pointer.clone(),
                    test,
                    ignore_case: m.ignore_case,
                });
            }
            match (&rule.action, &rule.approval) {
                (Action::RequireApproval, None) => err(
                    format!("{at}.approval"),
                    "required when action is RequireApproval",
                ),
                (Action::Allow | Action::Deny, Some(_)) => err(
                    format!("{at}.approval"),
                    "only allowed when action is RequireApproval",
                ),
                (_, Some(approval)) => {
                    let at = format!("{at}.approval");
                    if approval.approvers.groups.is_empty() && approval.approvers.users.is_empty() {
                        err(format!("{at}.approvers"), "name at least one group or user");
                    }
                    if approval.min_approvals == 0 {
                        err(format!("{at}.minApprovals"), "must be at least 1");
                    }
                    if parse_duration(&approval.timeout).is_none() {
                        err(format!("{at}.timeout"), "not a duration like 30m or 1h");
                    }
                    if let Grant::Window { window } = &approval.grant
                        && parse_duration(window).is_none()
                    {
                        err(format!("{at}.grant.window"), "not a duration like 10m");
                    }
                }
                _ => {}
            }
            if let Some(audit) = &rule.audit {
                for (j, pointer) in audit.redact.iter().enumerate() {
                    if !pointer.starts_with('/') {
                        err(
                            format!("{at}.audit.redact[{j}]"),
                            "must be a JSON pointer starting with '/'",
                        );
                    }
                }
            }
            rules.push(CompiledRule { arguments });
        }
        if errors.is_empty() {
            let mut named = Claims::default();
            for rule in &self.rules {
                named.extend(&Claims {
                    groups: rule.principals.groups.clone(),
                    roles: rule.principals.roles.clone(),
                    scopes: rule.principals.scopes.clone(),
                });
            }
            Ok(CompiledPolicy {
                name: name.to_string(),
                version: version.to_string(),
                spec: self.clone(),
                rules,
                index: RuleIndex::new(&self.rules),
                named,
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_baseline_selects_no_servers_by_label() {
        let spec: ApprovalPolicySpec = serde_json::from_value(serde_json::json!({
            "namespaces": {"matchLabels": {"tier": "prod"}},
            "servers": {"matchLabels": {"team": "ml"}},
            "rules": [{"name": "r", "action": "Allow"}]}))
        .unwrap();
        let errors = spec.compile("airlock-system/b", "1").unwrap_err();
        assert_eq!(errors[0].field, "spec.servers");
    }

    pub(crate) const DESIGN_EXAMPLE: &str = r#"{
      "servers": {"matchLabels": {"team": "ml"}},
      "defaultAction": "Deny",
      "enforcement": "Enforce",
      "rules": [
        {"name": "handshake-and-discovery",
         "match": {"methods": ["initialize", "ping", "notifications/*", "tools/list", "resources/list", "prompts/list"]},
         "action": "Allow"},
        {"name": "read-status", "match": {"tools": ["get_*", "list_*"]},
         "principals": {"groups": ["engineers"]}, "action": "Allow"},
        {"name": "deploy-to-prod",
         "match": {"tools": ["deploy_model", "update_runtime_config"],
                   "arguments": [{"pointer": "/environment", "in": ["prod", "production"], "ignoreCase": true}]},
         "principals": {"groups": ["engineers"]},
         "action": "RequireApproval",
         "approval": {"approvers": {"groups": ["leads"]}, "minApprovals": 1, "timeout": "30m",
                      "allowSelfApproval": false, "grant": "Once"},
         "audit": {"capture": "Arguments", "redact": ["/password", "/token"]}},
        {"name": "no-secrets", "match": {"tools": ["read_secret"]}, "action": "Deny"}
      ]
    }"#;

    pub(crate) fn design_example() -> ApprovalPolicySpec {
        serde_json::from_str(DESIGN_EXAMPLE).unwrap()
    }

    #[test]
    fn reads_the_design_example() {
        let spec = design_example();
        assert_eq!(spec.rules.len(), 4);
        assert_eq!(spec.rules[2].approval.as_ref().unwrap().grant, Grant::Once);
        spec.compile("ml/model-ops", "1").unwrap();
        // Serializing and reading back gives the same spec.
        let again: ApprovalPolicySpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn grant_is_once_or_a_window() {
        let window: Grant = serde_json::from_str(r#"{"window": "10m"}"#).unwrap();
        assert_eq!(
            window,
            Grant::Window {
                window: "10m".into()
            }
        );
        assert!(serde_json::from_str::<Grant>(r#""Twice""#).is_err());
        assert!(serde_json::from_str::<Grant>(r#"{"window": "10m", "x": 1}"#).is_err());
        assert_eq!(serde_json::to_string(&Grant::Once).unwrap(), r#""Once""#);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let with_typo = DESIGN_EXAMPLE.replace("\"defaultAction\"", "\"defaultActoin\"");
        let err = serde_json::from_str::<ApprovalPolicySpec>(&with_typo).unwrap_err();
        assert!(err.to_string().contains("defaultActoin"), "{err}");
        let bad_action = DESIGN_EXAMPLE.replace("\"Deny\"}", "\"Block\"}");
        assert!(serde_json::from_str::<ApprovalPolicySpec>(&bad_action).is_err());
    }

    #[test]
    fn invalid_policies_name_the_exact_field() {
        let mut spec = design_example();
        spec.rules[1].name = "deploy-to-prod".into();
        spec.rules[2].matches.arguments[0].matches = Some("(".into());
        spec.rules[2].approval.as_mut().unwrap().timeout = "soon".into();
        spec.rules[2].approval.as_mut().unwrap().min_approvals = 0;
        spec.rules[2].approval.as_mut().unwrap().grant = Grant::Window { window: "x".into() };
        spec.rules[3].approval = spec.rules[2].approval.clone();
        spec.rules[0].matches.methods.push(String::new());
        spec.notify = Some(Notify {
            channel: "http://10.0.0.1/".into(),
        });
        let errors = spec.compile("p", "1").unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.notify.channel",
                "spec.rules[0].match.methods[6]",
                "spec.rules[2].name",
                "spec.rules[2].match.arguments[0]",
                "spec.rules[2].approval.minApprovals",
                "spec.rules[2].approval.timeout",
                "spec.rules[2].approval.grant.window",
                "spec.rules[3].approval",
            ]
        );

        let mut spec = design_example();
        spec.rules[2].matches.arguments[0].one_of = None;
        spec.rules[2].matches.arguments[0].matches = Some("(".into());
        spec.rules[2].approval = None;
        spec.rules[2].matches.arguments.push(ArgumentMatcher {
            pointer: "environment".into(),
            equals: None,
            one_of: None,
            not_in: None,
            matches: None,
            exists: Some(true),
            ignore_case: false,
        });
        let errors = spec.compile("p", "1").unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.rules[2].match.arguments[0].ignoreCase",
                "spec.rules[2].match.arguments[0].matches",
                "spec.rules[2].match.arguments[1].pointer",
                "spec.rules[2].approval",
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45s"), Some(45));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("2d"), Some(172800));
        for bad in ["", "10", "m", "1x", "0s", "-1m", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "ml".to_string())].into();
        assert!(ServerSelector::default().selects("any", &BTreeMap::new()));
        let by_label = ServerSelector {
            match_labels: labels.clone(),
            names: vec![],
        };
        assert!(by_label.selects("s", &labels));
        assert!(!by_label.selects("s", &BTreeMap::new()));
        let both = ServerSelector {
            match_labels: labels.clone(),
            names: vec!["a".into()],
        };
        assert!(both.selects("a", &labels));
        assert!(!both.selects("b", &labels));
    }
}
