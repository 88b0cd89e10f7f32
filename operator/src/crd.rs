//! Custom resources of the `mcp.airlock.dev` group.
//!
//! `ApprovalPolicy` is defined next to the policy model in `airlock-policy`
//! (its spec is the model); `McpServer` and `ApprovalRequest` live here. The
//! YAML in `crds/` is generated from these types by `make crds`.

use airlock_policy::entra::TrustConfig;
use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

pub use airlock_policy::model::{ApprovalPolicy, ApprovalPolicySpec, ApprovalPolicyStatus};

/// One MCP server behind the Airlock gateway.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcp.airlock.dev",
    version = "v1alpha1",
    kind = "McpServer",
    namespaced,
    status = "McpServerStatus",
    shortname = "mcps",
    category = "airlock",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.template) != has(self.selector)").message("give exactly one of template and selector"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServerSpec {
    /// Pod template of the MCP server: the operator owns a Deployment with the
    /// Envoy sidecar injected and a Service that exposes only Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// Existing pods to put behind the gateway; a webhook injects the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Pods of the MCP server (template mode).
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0").message("must not be negative"))]
    pub replicas: i32,
    /// The MCP endpoint path.
    #[serde(default = "default_path")]
    pub path: String,
    /// The port the MCP server listens on inside the pod (bind it to 127.0.0.1).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("must be a TCP port"))]
    pub upstream_port: i32,
    /// Which Entra ID tokens the gateway accepts.
    pub auth: TrustConfig,
    /// Gateway behaviour.
    #[serde(default)]
    pub gateway: GatewaySpec,
}

fn default_replicas() -> i32 {
    1
}

fn default_path() -> String {
    "/mcp".into()
}

/// Knobs of the Envoy sidecar.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Longest a call is held waiting for approval; keep it under the 60 s
    /// request timeout of common MCP clients.
    #[serde(default = "default_hold")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("between 1 and 3600 seconds"))]
    pub max_hold_seconds: i32,
    /// Largest request body judged; larger requests are refused with 413.
    #[serde(default = "default_body")]
    pub max_body_bytes: i64,
    /// Calls the gateway holds for approval at once (default 256); past this,
    /// a call that needs approval is refused without asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("between 1 and 100000"))]
    pub max_holds: Option<i32>,
    /// Calls of one caller the gateway holds at once (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("between 1 and 100000"))]
    pub max_holds_per_caller: Option<i32>,
    /// Forward the caller's bearer token to the MCP server (off: a compromised
    /// server could replay it).
    #[serde(default)]
    pub forward_token: bool,
    /// Client applications (`azp`/`appid`) allowed to call; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_client_apps: Vec<String>,
    /// The URL clients use to reach this server, for protected-resource metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Envoy image for the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_hold() -> i32 {
    50
}

fn default_body() -> i64 {
    1024 * 1024
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            max_hold_seconds: default_hold(),
            max_body_bytes: default_body(),
            max_holds: None,
            max_holds_per_caller: None,
            forward_token: false,
            allowed_client_apps: Vec::new(),
            public_url: None,
            envoy_image: None,
            resources: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpServerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where clients reach the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The policies in force and their versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AppliedPolicy>,
    /// What a gated pod of this server carries: admission refuses a pod the
    /// server selects whose sidecar differs (selector mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarStatus>,
    /// Selected pods that run without the sidecar (selector mode): they
    /// started before the server selected them and get it when recreated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ungated_pods: Vec<String>,
}

/// The parts of a gated pod that make its gateway the operator's: images,
/// arguments, mounts, the filter module's digest and the bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    pub gateway_image: String,
    /// The gateway container's command (empty: the image's own Envoy).
    #[serde(default)]
    pub gateway_command: Vec<String>,
    #[serde(default)]
    pub gateway_args: Vec<String>,
    /// Each of its mounts, as `volume=mountPath`.
    #[serde(default)]
    pub gateway_mounts: Vec<String>,
    pub installer_image: String,
    /// The filter installer's command, which carries the module's sha256.
    #[serde(default)]
    pub installer_command: Vec<String>,
    /// The ConfigMap the bootstrap volume is.
    pub config_map: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    pub name: String,
    pub version: String,
}

/// One held call waiting for (or decided by) approvers. Created only by the
/// approval service; the spec never changes after creation.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcp.airlock.dev",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    namespaced,
    status = "ApprovalRequestStatus",
    shortname = "areq",
    category = "airlock",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.server"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.call.target"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".spec.requester.name"}"#,
    printcolumn = r#"{"name":"Needed","type":"integer","description":"Approvals still needed","jsonPath":".status.approvalsNeeded"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequestSpec {
    /// `namespace/name` of the McpServer.
    pub server: String,
    /// Who asked, as their verified token says.
    pub requester: Requester,
    pub call: HeldCall,
    /// Every policy rule that asked for approval of this call; each needs its
    /// own quorum.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one requirement"))]
    pub requirements: Vec<RequiredApproval>,
    /// One line for people: who wants to do what.
    pub summary: String,
    /// RFC 3339, by the approval service's clock.
    #[schemars(extend("format" = "date-time"))]
    pub requested_at: String,
    /// RFC 3339; after this the request is expired, whatever its decisions.
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: String,
    /// Seconds an approval lets identical calls through; absent means once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_window_seconds: Option<i64>,
}

#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requester {
    /// Entra tenant ID.
    pub tid: String,
    /// Entra object ID.
    pub oid: String,
    /// Display only.
    #[serde(default)]
    pub name: String,
    /// The client application (`azp`/`appid`) the call came through.
    #[serde(default)]
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeldCall {
    pub method: String,
    /// Tool name, resource URI or prompt name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `sha256:` digest of the canonical params without `_meta`.
    pub arguments_digest: String,
    /// The arguments as the policy allows them to be recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "airlock_policy::model::any_json_schema")]
    pub arguments: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
}

/// One rule's demand: who may approve, how many.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequiredApproval {
    /// `namespace/policy/rule`.
    pub rule: String,
    pub policy_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approver_groups: Vec<String>,
    /// Entra object IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approver_users: Vec<String>,
    /// Distinct approvers needed.
    #[x_kube(validation = Rule::new("self >= 1").message("at least one approver"))]
    pub min_approvals: i32,
    #[serde(default)]
    pub allow_self_approval: bool,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Phase {
    #[default]
    Pending,
    InfoRequested,
    Approved,
    Denied,
    Expired,
    Executed,
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Append-only; who decided is stamped by the server that verified them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// Questions from approvers and answers from the requester.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conversation: Vec<Remark>,
    /// RFC 3339; when the last required approval arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub approved_at: Option<String>,
    /// Held calls (or retries) this approval has let through.
    #[serde(default)]
    pub releases: i64,
    /// The gateway's key for the last release: the same release asked again
    /// (its answer lost) is answered again and spends nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release: Option<String>,
    /// Approvals still missing before the call may run; 0 once decided.
    #[serde(default)]
    pub approvals_needed: i64,
    /// Bumped by the approval service on every change; with `resourceVersion`
    /// it makes each change a compare-and-set.
    #[serde(default)]
    pub revision: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Verdict {
    Approve,
    Deny,
}

/// A person as the server that verified them recorded them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// Display name.
    pub user: String,
    /// Entra object ID.
    pub uid: String,
    /// Entra tenant ID; on what an approver writes through the API server,
    /// absent until the approval service records the cluster's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The path a decision or a remark came through.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The approval service's people's API, with an Entra token it verified.
    #[default]
    Service,
    /// This status, written through the API server (`kubectl airlock`), its
    /// admission policies vouching for who wrote it.
    Kubectl,
}

/// One approver's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    #[serde(flatten)]
    pub by: Actor,
    pub verdict: Verdict,
    #[serde(default)]
    pub reason: String,
    /// RFC 3339, by the approval service's clock when it counted the
    /// decision; absent on one an approver just wrote, until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub time: Option<String>,
    #[serde(default)]
    pub via: Via,
}

/// A question from an approver or the requester's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remark {
    #[serde(flatten)]
    pub by: Actor,
    pub message: String,
    /// RFC 3339, as for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub time: Option<String>,
    #[serde(default)]
    pub via: Via,
}

/// The head of one operator replica's audit chain, written by that replica
/// every few seconds: records the chain holds at this sequence must hash as
/// recorded here, so a trail rewritten or cut after the fact no longer
/// matches (`airlock audit verify --checkpoints`). Named after its chain.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcp.airlock.dev",
    version = "v1alpha1",
    kind = "AuditCheckpoint",
    namespaced,
    shortname = "auditcp",
    category = "airlock",
    printcolumn = r#"{"name":"Sequence","type":"integer","jsonPath":".spec.sequence"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".spec.hash"}"#,
    printcolumn = r#"{"name":"Taken","type":"string","jsonPath":".spec.time"}"#
)]
#[x_kube(validation = Rule::new("self.chain == oldSelf.chain && self.sequence >= oldSelf.sequence").message("a checkpoint only moves forward along its own chain"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditCheckpointSpec {
    /// The chain, as its records name it.
    pub chain: String,
    /// The last record's `seq` when the checkpoint was taken.
    #[x_kube(validation = Rule::new("self >= 1").message("must be at least 1"))]
    pub sequence: i64,
    /// That record's `hash`.
    pub hash: String,
    /// RFC 3339 time the checkpoint was taken.
    pub time: String,
}

/// A person or one MCP session cut off from the MCP servers of this
/// namespace — of every namespace when it is kept in the operator's — until
/// it is deleted (lifted) or runs out: their next request is refused, and a
/// call of theirs already held is refused, not released, even if approved.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcp.airlock.dev",
    version = "v1alpha1",
    kind = "Revocation",
    namespaced,
    shortname = "revoke",
    category = "airlock",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user.oid"}"#,
    printcolumn = r#"{"name":"Session","type":"string","jsonPath":".spec.session"}"#,
    printcolumn = r#"{"name":"Until","type":"string","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.user) != has(self.session)").message("a revocation names a user or a session, not both"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevocationSpec {
    /// The person cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<RevokedUser>,
    /// The MCP session (`Mcp-Session-Id`) cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("must not be empty"))]
    pub session: Option<String>,
    /// Why: the refused caller is told.
    pub reason: String,
    /// RFC 3339; absent: until the revocation is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,
}

#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokedUser {
    /// Entra object ID.
    #[x_kube(validation = Rule::new("size(self) > 0").message("must not be empty"))]
    pub oid: String,
    /// Entra tenant ID; absent: that object ID in any tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Every CRD as (file name, YAML).
pub fn all_yaml() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    Ok(vec![
        ("mcpservers.yaml", serde_yaml::to_string(&McpServer::crd())?),
        (
            "approvalpolicies.yaml",
            serde_yaml::to_string(&ApprovalPolicy::crd())?,
        ),
        (
            "approvalrequests.yaml",
            serde_yaml::to_string(&ApprovalRequest::crd())?,
        ),
        (
            "auditcheckpoints.yaml",
            serde_yaml::to_string(&AuditCheckpoint::crd())?,
        ),
        (
            "revocations.yaml",
            serde_yaml::to_string(&Revocation::crd())?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["crds", "charts/airlock/crds"] {
            for (file, yaml) in all_yaml().unwrap() {
                let committed =
                    std::fs::read_to_string(root.join(dir).join(file)).unwrap_or_default();
                assert!(committed == yaml, "{dir}/{file} is stale: run `make crds`");
            }
        }
    }
}
