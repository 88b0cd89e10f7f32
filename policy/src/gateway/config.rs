//! The filter's static configuration: the Envoy plugin configuration (JSON),
//! rendered by the operator or by `airlock up`.

use crate::canonical::digest;
use crate::entra::TrustConfig;
use crate::gateway::key_refetch::RefetchRules;
use crate::gateway::revocation::Revocation;
use crate::model::{ApprovalPolicySpec, CompiledPolicy, FieldError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Plugin configuration of one gateway, for one McpServer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfig {
    /// `namespace/name` of the McpServer behind this gateway.
    pub server: String,
    /// The Streamable HTTP endpoint path.
    #[serde(default = "default_mcp_path")]
    pub mcp_path: String,
    /// The legacy HTTP+SSE paths (2024-11-05), when the upstream serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_sse: Option<LegacySsePaths>,
    /// Which tokens are accepted.
    pub auth: TrustConfig,
    /// Where each trusted tenant's signing keys are fetched, through Envoy clusters.
    pub jwks: Vec<JwksEndpoint>,
    /// A caller needs one of these scopes or one of `requiredRoles` (when either is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
    /// Client applications (`azp`/`appid`) allowed to call; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_client_apps: Vec<String>,
    /// The approval service: the source of policy, the receiver of audit
    /// events, and the place held calls wait for approval.
    pub approvals: ApprovalEndpoint,
    /// Longest a call is held waiting for approval.
    #[serde(default = "default_hold")]
    pub max_hold_seconds: u64,
    /// Calls this gateway holds for approval at once; past this, a call that
    /// needs approval is refused without asking.
    #[serde(default = "default_max_holds")]
    pub max_holds: usize,
    /// Calls of one caller (tenant and object ID) this gateway holds at once.
    #[serde(default = "default_max_holds_per_caller")]
    pub max_holds_per_caller: usize,
    /// Largest request body judged; larger bodies are refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Forward the caller's bearer token upstream (off by default).
    #[serde(default)]
    pub forward_token: bool,
    /// The URL clients use for this server, for protected-resource metadata;
    /// defaults to `http://<authority><mcpPath>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Authorization servers advertised in protected-resource metadata;
    /// defaults to the v2 issuer of each trusted tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    /// Least time between two key-set fetches asked for by tokens whose
    /// `kid` is unknown (a key the issuer just published, or a made-up one).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_seconds: u64,
    /// Longest a token with an unknown `kid` waits for the refetched keys
    /// before it is refused (503, retry).
    #[serde(default = "default_unknown_key_wait")]
    pub unknown_key_wait_seconds: u64,
    /// Calls each worker lets wait for refetched keys at once; past this,
    /// a token with an unknown `kid` is refused (503, retry).
    #[serde(default = "default_unknown_key_waiters")]
    pub unknown_key_waiters: usize,
    /// Verified tokens kept per worker.
    #[serde(default = "default_token_cache")]
    pub token_cache_entries: usize,
    /// Audit events each worker keeps while the approval service is slow or
    /// down; beyond this, events are dropped, counted and logged.
    #[serde(default = "default_audit_queue")]
    pub audit_queue_events: usize,
}

/// The paths of the 2024-11-05 transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacySsePaths {
    /// The GET event stream, e.g. `/sse`.
    pub stream: String,
    /// The POST endpoint the stream announces, e.g. `/messages/`.
    pub messages: String,
}

/// Where one tenant's JWKS is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksEndpoint {
    pub tenant: String,
    /// The Envoy cluster that reaches the key server.
    pub cluster: String,
    /// Request path on that cluster, e.g. `/{tenant}/discovery/v2.0/keys`.
    pub path: String,
    /// The `:authority` to send, e.g. `login.microsoftonline.com`.
    pub authority: String,
}

/// How the filter reaches the approval service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalEndpoint {
    /// The Envoy cluster of the approval service.
    pub cluster: String,
    /// The cluster a held call's requests (ask, long-polls, release) take,
    /// when not `cluster`: one whose route retries what never reached a
    /// peer, so a replica that just died costs a retry, not the call. It is
    /// an internal listener, which only streams (on Envoy's workers) can
    /// reach; the filter's own polls and flushes use `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_cluster: Option<String>,
    pub authority: String,
    /// The gateway credential (local mode); in a cluster Envoy attaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl ApprovalEndpoint {
    pub fn hold_cluster(&self) -> &str {
        self.hold_cluster.as_deref().unwrap_or(&self.cluster)
    }
}

/// A policy with its name and version, as the approval service serves them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPolicy {
    /// `namespace/name`.
    pub name: String,
    pub version: String,
    pub spec: ApprovalPolicySpec,
}

impl NamedPolicy {
    /// `spec` as policy `name` (`namespace/name`), versioned by the digest of
    /// the spec, when it compiles; otherwise every bad field.
    pub fn checked(name: String, spec: ApprovalPolicySpec) -> Result<NamedPolicy, Vec<FieldError>> {
        let version = serde_json::to_value(&spec)
            .map(|v| digest(&v))
            .map_err(|e| {
                vec![FieldError {
                    field: "spec".into(),
                    message: e.to_string(),
                }]
            })?;
        spec.compile(&name, &version)?;
        Ok(NamedPolicy {
            name,
            version,
            spec,
        })
    }
}

/// What decides which policies govern a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Governed {
    /// `namespace/name`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The labels of the server's namespace (baselines select by them).
    pub namespace_labels: BTreeMap<String, String>,
    /// Where baseline policies are kept (the operator's namespace); `None`
    /// where there are none (`airlock up`).
    pub baseline_namespace: Option<String>,
}

impl Governed {
    /// Whether `revocation` reaches this server: one of its own namespace,
    /// or one in the baseline namespace (the platform team's, for every
    /// server).
    pub fn is_reached_by(&self, revocation: &Revocation) -> bool {
        let namespace = self.name.split_once('/').map(|(ns, _)| ns);
        let home = revocation.name.split_once('/').map(|(ns, _)| ns);
        home.is_some() && (home == namespace || home == self.baseline_namespace.as_deref())
    }

    /// Whether `policy` governs this server: one of its namespace whose
    /// selector selects it, or a baseline (kept in the baseline namespace
    /// only) whose selector selects its namespace.
    pub fn is_governed_by(&self, policy: &NamedPolicy) -> bool {
        let (namespace, name) = self.name.split_once('/').unwrap_or(("", &self.name));
        let home = policy.name.split_once('/').map(|(ns, _)| ns);
        match &policy.spec.namespaces {
            Some(namespaces) => {
                home.is_some()
                    && home == self.baseline_namespace.as_deref()
                    && namespaces.selects(&self.namespace_labels)
            }
            None => home == Some(namespace) && policy.spec.servers.selects(name, &self.labels),
        }
    }
}

/// The policies in force for one MCP server, as
/// `GET /v1/config/{namespace}/{server}` serves them to its gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDocument {
    /// `namespace/name` of the server.
    pub server: String,
    /// Digest of `policies`: equal documents have equal versions, on every
    /// replica and across restarts, so a long-poll resumes where it left off.
    pub version: String,
    pub policies: Vec<NamedPolicy>,
    /// People and sessions cut off from this server. Absent when there are
    /// none, so a document without any reads as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<Revocation>,
}

impl PolicyDocument {
    /// The policies of `all` that govern `server`, and the revocations of
    /// `revocations` that reach it.
    pub fn for_server(
        server: &Governed,
        all: &[NamedPolicy],
        revocations: &[Revocation],
    ) -> PolicyDocument {
        let policies: Vec<NamedPolicy> = all
            .iter()
            .filter(|p| server.is_governed_by(p))
            .cloned()
            .collect();
        let revocations: Vec<Revocation> = revocations
            .iter()
            .filter(|r| server.is_reached_by(r))
            .cloned()
            .collect();
        // Without revocations, the version is what it always was.
        let versioned = if revocations.is_empty() {
            serde_json::to_value(&policies)
        } else {
            serde_json::to_value((&policies, &revocations))
        };
        let version = versioned.map(|v| digest(&v)).unwrap_or_default();
        PolicyDocument {
            server: server.name.clone(),
            version,
            policies,
            revocations,
        }
    }
}

/// Compiles named policies, naming every bad field of the first bad policy.
pub fn compile_all(policies: &[NamedPolicy]) -> Result<Vec<CompiledPolicy>, ConfigError> {
    policies
        .iter()
        .map(|p| {
            p.spec
                .compile(&p.name, &p.version)
                .map_err(|errors: Vec<FieldError>| ConfigError::Policy {
                    policy: p.name.clone(),
                    errors: errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                })
        })
        .collect()
}

fn default_mcp_path() -> String {
    "/mcp".into()
}

fn default_max_body() -> usize {
    1024 * 1024
}

fn default_hold() -> u64 {
    50
}

/// Least time between two refetches of a tenant's keys asked for by
/// unknown kids, in the filter and in the approval service: Entra publishes
/// new keys ahead of use, so an unknown `kid` is far more often made up.
pub const DEFAULT_JWKS_MIN_REFRESH_SECONDS: u64 = 30;

fn default_max_holds() -> usize {
    256
}

/// As many as the approval service lets one caller have pending.
fn default_max_holds_per_caller() -> usize {
    20
}

fn default_jwks_refresh() -> u64 {
    DEFAULT_JWKS_MIN_REFRESH_SECONDS
}

fn default_unknown_key_wait() -> u64 {
    5
}

fn default_unknown_key_waiters() -> usize {
    64
}

fn default_token_cache() -> usize {
    1024
}

fn default_audit_queue() -> usize {
    10_000
}

/// The cluster a stream calls to wait: an internal listener that answers
/// after the delay its request asks for (`x-envoy-fault-delay-request`, in
/// milliseconds). A proxy-wasm stream has no timer of its own; the renderer
/// of the filter's Envoy adds this cluster with the filter.
pub const CLOCK_CLUSTER: &str = "airlock_clock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not valid: {0}")]
    Invalid(String),
    #[error("policy {policy}: {errors}")]
    Policy { policy: String, errors: String },
}

impl FilterConfig {
    /// How tokens with unknown kids wait for refetched keys.
    pub fn refetch_rules(&self) -> RefetchRules {
        RefetchRules {
            interval_ms: self.jwks_min_refresh_seconds.saturating_mul(1000),
            wait_ms: self.unknown_key_wait_seconds.saturating_mul(1000),
        }
    }

    /// Reads and checks the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let config: FilterConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if config.auth.tenants.is_empty() || config.auth.audiences.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.tenants and auth.audiences must not be empty".into(),
            ));
        }
        for tenant in &config.auth.tenants {
            if !config.jwks.iter().any(|j| &j.tenant == tenant) {
                return Err(ConfigError::Invalid(format!(
                    "no jwks endpoint for tenant {tenant}"
                )));
            }
        }
        if !config.mcp_path.starts_with('/') {
            return Err(ConfigError::Invalid("mcpPath must start with '/'".into()));
        }
        if config
            .server
            .split_once('/')
            .is_none_or(|(ns, name)| ns.is_empty() || name.is_empty())
        {
            return Err(ConfigError::Invalid("server must be namespace/name".into()));
        }
        Ok(config)
    }

    /// Where this gateway long-polls for its policies.
    pub fn policy_path(&self, after: Option<&str>, wait_seconds: u64) -> String {
        match after {
            Some(version) => format!(
                "/v1/config/{}?after={version}&wait={wait_seconds}",
                self.server
            ),
            None => format!("/v1/config/{}", self.server),
        }
    }

    /// The URL of the protected resource, for RFC 9728 metadata.
    pub fn resource_url(&self, authority: &str) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{authority}{}", self.mcp_path))
    }

    /// The advertised authorization servers.
    pub fn advertised_authorization_servers(&self) -> Vec<String> {
        if self.authorization_servers.is_empty() {
            self.auth
                .tenants
                .iter()
                .map(|t| crate::entra::v2_issuer(t))
                .collect()
        } else {
            self.authorization_servers.clone()
        }
    }
}

/// A valid configuration for tenant `t1` and audience `a`, with `extra`
/// fields merged in, for unit tests.
#[cfg(test)]
pub(crate) fn test_config(extra: serde_json::Value) -> FilterConfig {
    let mut value = serde_json::json!({
        "server": "ns/s",
        "auth": {"tenants": ["t1"], "audiences": ["a"]},
        "jwks": [{"tenant": "t1", "cluster": "c", "path": "/k", "authority": "h"}],
        "approvals": {"cluster": "approvals", "authority": "approvals"},
    });
    if let (Some(target), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    FilterConfig::from_json(value.to_string().as_bytes()).expect("test configuration is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configuration_is_checked() {
        let bad = |extra: serde_json::Value| {
            let mut value = serde_json::to_value(test_config(json!({}))).unwrap();
            value
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            FilterConfig::from_json(value.to_string().as_bytes()).is_err()
        };
        assert!(!bad(json!({})));
        assert!(bad(json!({"jwks": []})));
        assert!(bad(json!({"auth": {"tenants": [], "audiences": ["a"]}})));
        assert!(bad(json!({"unknown": 1})));
        assert!(bad(json!({"server": "no-namespace"})));
        assert!(bad(json!({"mcpPath": "mcp"})));
        assert!(bad(json!({"approvals": null})));
        // Policies come from the approval service, never from the plugin configuration.
        assert!(bad(json!({"policies": []})));
    }

    fn baseline(name: &str, namespaces: serde_json::Value) -> NamedPolicy {
        serde_json::from_value(json!({"name": name, "version": "1",
            "spec": {"namespaces": namespaces, "rules": [{"name": "r", "action": "Allow"}]}}))
        .unwrap()
    }

    #[test]
    fn a_baseline_governs_by_namespace_labels_from_the_operators_namespace_only() {
        let all = vec![
            baseline(
                "airlock-system/prod",
                json!({"matchLabels": {"tier": "prod"}}),
            ),
            baseline("airlock-system/all", json!({})),
            // Written elsewhere, a baseline governs nothing.
            baseline("ml/self-made", json!({})),
        ];
        let server = |namespace_labels: &[(&str, &str)]| Governed {
            name: "ml/models".into(),
            labels: BTreeMap::new(),
            namespace_labels: namespace_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            baseline_namespace: Some("airlock-system".into()),
        };
        let names = |server: Governed| -> Vec<String> {
            PolicyDocument::for_server(&server, &all, &[])
                .policies
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        assert_eq!(
            names(server(&[("tier", "prod")])),
            ["airlock-system/prod", "airlock-system/all"]
        );
        assert_eq!(names(server(&[("tier", "dev")])), ["airlock-system/all"]);
        // Without a baseline namespace (airlock up), none applies.
        let mut local = server(&[("tier", "prod")]);
        local.baseline_namespace = None;
        assert!(names(local).is_empty());
    }

    fn policy(name: &str, selector: serde_json::Value) -> NamedPolicy {
        serde_json::from_value(json!({"name": name, "version": "1",
            "spec": {"servers": selector, "rules": [{"name": "r", "action": "Allow"}]}}))
        .unwrap()
    }

    #[test]
    fn a_server_gets_the_policies_of_its_namespace_that_select_it() {
        let all = vec![
            policy("ml/everything", json!({})),
            policy("ml/by-label", json!({"matchLabels": {"team": "ml"}})),
            policy("ml/by-name", json!({"names": ["other"]})),
            policy("web/everything", json!({})),
        ];
        let labels = BTreeMap::from([("team".to_string(), "ml".to_string())]);
        let server = |labels: &BTreeMap<String, String>| Governed {
            name: "ml/models".into(),
            labels: labels.clone(),
            ..Governed::default()
        };
        let document = PolicyDocument::for_server(&server(&labels), &all, &[]);
        let names: Vec<&str> = document.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ml/everything", "ml/by-label"]);
        assert!(document.version.starts_with("sha256:"));

        let same = PolicyDocument::for_server(&server(&labels), &all, &[]);
        assert_eq!(same.version, document.version);
        let unlabelled = PolicyDocument::for_server(&server(&BTreeMap::new()), &all, &[]);
        assert_ne!(unlabelled.version, document.version);
        assert!(compile_all(&document.policies).is_ok());
    }

    #[test]
    fn a_server_is_reached_by_revocations_of_its_namespace_and_the_platforms() {
        let revocation = |name: &str| Revocation {
            name: name.into(),
            oid: Some("oid-ada".into()),
            tenant: None,
            session: None,
            reason: String::new(),
            until: None,
        };
        let server = Governed {
            name: "ml/models".into(),
            baseline_namespace: Some("airlock-system".into()),
            ..Governed::default()
        };
        let all = [
            revocation("ml/ada"),
            revocation("web/ada"),
            revocation("airlock-system/ada"),
        ];
        let document = PolicyDocument::for_server(&server, &[], &all);
        let names: Vec<&str> = document
            .revocations
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["ml/ada", "airlock-system/ada"]);
        // A revocation changes the version: long-polling gateways wake.
        let without = PolicyDocument::for_server(&server, &[], &[]);
        assert_ne!(without.version, document.version);
        assert!(
            !serde_json::to_string(&without)
                .unwrap()
                .contains("revocations")
        );
    }

    #[test]
    fn compiling_names_the_bad_policy_and_field() {
        let bad: NamedPolicy = serde_json::from_value(json!({"name": "ml/p", "version": "1",
            "spec": {"rules": [{"name": "r", "action": "RequireApproval"}]}}))
        .unwrap();
        let error = compile_all(&[bad]).unwrap_err().to_string();
        assert!(
            error.contains("ml/p") && error.contains("spec.rules[0]"),
            "{error}"
        );
    }
}
