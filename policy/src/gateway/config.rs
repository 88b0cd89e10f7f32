//! The filter's static configuration: the Envoy plugin configuration (JSON),
//! rendered by the operator or by `airlock up`.

use crate::entra::TrustConfig;
use crate::model::{ApprovalPolicySpec, CompiledPolicy, FieldError};
use serde::{Deserialize, Serialize};

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
    /// The approval service, for calls that need approval; without it such
    /// calls are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalEndpoint>,
    /// Longest a call is held waiting for approval.
    #[serde(default = "default_hold")]
    pub max_hold_seconds: u64,
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
    /// Least time between two key-set fetches triggered by an unknown `kid`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_seconds: u64,
    /// Verified tokens kept per worker.
    #[serde(default = "default_token_cache")]
    pub token_cache_entries: usize,
    /// Policies in force, for gateways configured statically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<NamedPolicy>,
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
    pub authority: String,
    /// The gateway credential (local mode); in a cluster Envoy attaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
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

fn default_mcp_path() -> String {
    "/mcp".into()
}

fn default_max_body() -> usize {
    1024 * 1024
}

fn default_hold() -> u64 {
    50
}

fn default_jwks_refresh() -> u64 {
    300
}

fn default_token_cache() -> usize {
    1024
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not valid: {0}")]
    Invalid(String),
    #[error("policy {policy}: {errors}")]
    Policy { policy: String, errors: String },
}

impl FilterConfig {
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
        config.compiled_policies()?;
        Ok(config)
    }

    /// The static policies, compiled.
    pub fn compiled_policies(&self) -> Result<Vec<CompiledPolicy>, ConfigError> {
        self.policies
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
