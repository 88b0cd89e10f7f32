//! An McpServer in template mode, as the objects the operator owns: a
//! ConfigMap with the sidecar's Envoy bootstrap, a Deployment whose pods run
//! the MCP server behind that sidecar, a Service exposing only the gateway,
//! and a NetworkPolicy admitting only the gateway's ports.
//!
//! The sidecar is a native sidecar (an init container with `restartPolicy:
//! Always` and a startup probe): the MCP server starts only once the gateway
//! serves, and stops before it. The filter module comes from the operator's
//! image through an init container that checks its sha256, so the pod runs
//! exactly the module the operator was built with and needs no registry.

use super::envoy::{
    Bootstrap, Cluster, FileCredential, FilterModule, InPod, MemoryPressure, READY_PATH, UrlError,
    WatchedTrust,
};
use super::hardening::{self, Unsafe, gateway_security_context, installer_security_context};
use crate::approvals::gateway_identity;
use crate::crd::{McpServer, SidecarStatus};
use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_policy::gateway::config::FilterConfig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The gateway's MCP port in every pod; the Service's `mcp` port targets
/// it. Below 1024, so that only Envoy may bind it (see [`hardening`]).
pub const GATEWAY_PORT: u16 = 80;
/// Readiness and Prometheus stats, nothing else; privileged too.
pub const STATS_PORT: u16 = 90;
/// Label on everything rendered for a server, with the server's name.
pub const SERVER_LABEL: &str = "mcp.airlock.dev/server";
/// Label an injected pod carries besides [`SERVER_LABEL`]: its creator is
/// not the operator's Deployment, so admission judges it by its sidecar.
pub const INJECTED_LABEL: &str = "mcp.airlock.dev/injected";
/// Annotation with the digest of the bootstrap, so a change rolls the pods.
pub const CONFIG_ANNOTATION: &str = "mcp.airlock.dev/gateway-config";
/// Seconds a pod keeps draining after the longest hold, before it is killed.
const DRAIN_SECONDS: i64 = 15;

const FILTER_DIR: &str = "/var/run/airlock/filter";
const FILTER_FILE: &str = "airlock_filter.wasm";
const ADMIN_DIR: &str = "/var/run/airlock/admin";
const CONFIG_DIR: &str = "/etc/airlock";
/// The volume with the sidecar's bootstrap (the server's ConfigMap).
pub const CONFIG_VOLUME: &str = "airlock-gateway-config";
const CONFIG_FILE: &str = "envoy.json";
/// The operator's CA bundle, and the SDS document through which Envoy reads it.
const TRUST_FILE: &str = "approvals-ca.crt";
const TRUST_SDS_FILE: &str = "approvals-ca.json";
/// The SDS document through which Envoy reads the gateway's token.
const CREDENTIAL_SDS_FILE: &str = "gateway-token.json";
/// The pod's ServiceAccount token for the `airlock` audience, projected
/// into the gateway container only: it is how the approval service knows
/// which server's gateway is asking.
const TOKEN_DIR: &str = "/var/run/airlock/token";
const TOKEN_FILE: &str = "token";
/// An hour; kubelet renews the token after 80% of it.
const TOKEN_SECONDS: i64 = 3600;

/// What the operator knows that an McpServer does not say.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidecar's image, unless the McpServer names one.
    pub envoy_image: String,
    /// The operator's own image: it carries the filter module.
    pub operator_image: String,
    pub image_pull_policy: String,
    /// Where the filter module is inside the operator's image, and its sha256.
    pub filter_path: String,
    pub filter_sha256: String,
    /// The gateways' API of the approval service, as sidecars reach it
    /// (`https://airlock-gateways.airlock-system.svc:8443`).
    pub approvals_url: String,
    /// The CAs (PEM) that sign the approval service's certificates, when
    /// `approvals_url` is https: sidecars trust them alone. More than one
    /// while the operator rotates its CA.
    pub approvals_ca: Option<String>,
    /// Where a tenant's signing keys are fetched, when not from Entra.
    pub jwks_urls: BTreeMap<String, String>,
    /// The operator's namespace: nothing is injected into its pods.
    pub operator_namespace: String,
}

/// Everything one McpServer owns, and what its gateway adds to a pod.
#[derive(Debug, Clone)]
pub struct Workload {
    pub config_map: ConfigMap,
    /// Template mode only: in selector mode the pods are the namespace's own.
    pub deployment: Option<Deployment>,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub sidecar: Sidecar,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("give exactly one of spec.template and spec.selector")]
    NoMode,
    #[error("metadata.{0} is missing")]
    NoMetadata(&'static str),
    #[error(
        "spec.upstreamPort {0} is below 1024: the MCP container holds no capabilities, so it listens on 1024 or above"
    )]
    PrivilegedPort(i32),
    #[error("spec.template.spec is missing")]
    NoPodSpec,
    #[error("spec.template.spec.{0}")]
    Unsafe(#[from] Unsafe),
    /// An unsafe field of a pod the sidecar is injected into.
    #[error("spec.{0}")]
    UnsafePod(Unsafe),
    #[error("container name {0:?} is reserved for the gateway")]
    ReservedName(String),
    #[error(
        "spec.selector: the sidecar is never injected into namespace {0}, which is the cluster's or the operator's own"
    )]
    ProtectedNamespace(String),
    /// Only the gateway holds the `airlock`-audience token.
    #[error("{0}")]
    TokenExposed(String),
    #[error("JWKS URL {0}")]
    Url(#[from] UrlError),
    #[error("the gateway configuration is invalid: {0}")]
    FilterConfig(String),
    #[error("rendering {0}: {1}")]
    Shape(&'static str, String),
}

pub const GATEWAY_CONTAINER: &str = "airlock-gateway";
pub const INSTALLER_CONTAINER: &str = "airlock-filter";
/// The volume with the gateway's `airlock`-audience token.
pub const TOKEN_VOLUME: &str = "airlock-gateway-token";
const NO_API_TOKEN_VOLUME: &str = "airlock-no-api-token";
/// Namespaces whose pods the sidecar is never injected into.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// How a pod comes to carry the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// In the pod template of the Deployment the operator owns.
    Template,
    /// Into a pod of the namespace's own, by the injection webhook.
    Injected,
}

/// The gateway's containers and volumes, added to each pod of one server.
#[derive(Debug, Clone)]
pub struct Sidecar {
    server: String,
    init_containers: Vec<Value>,
    volumes: Vec<Value>,
    config_digest: String,
    min_grace_seconds: i64,
}

impl Sidecar {
    /// Adds the gateway to `pod` (a pod or a pod template, as JSON, already
    /// hardened): the filter installer and the gateway first among the init
    /// containers, their volumes, the server's label, and a grace period
    /// long enough to finish the longest hold.
    pub fn gate(&self, pod: &mut Value, gating: Gating) -> Result<(), RenderError> {
        check_names(&pod["spec"])?;
        let pod_spec = &mut pod["spec"];
        prepend(&mut pod_spec["initContainers"], &self.init_containers);
        prepend(&mut pod_spec["volumes"], &self.volumes);
        // The MCP server has no business with the API server: no token
        // unless the template asks. An injected pod is its owners' to decide.
        if gating == Gating::Template && pod_spec.get("automountServiceAccountToken").is_none() {
            pod_spec["automountServiceAccountToken"] = json!(false);
        }
        let grace = pod_spec["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30)
            .max(self.min_grace_seconds);
        pod_spec["terminationGracePeriodSeconds"] = json!(grace);
        let mut labels = json!({SERVER_LABEL: self.server});
        if gating == Gating::Injected {
            labels[INJECTED_LABEL] = json!("true");
        }
        merge_object(&mut pod["metadata"]["labels"], &labels);
        merge_object(
            &mut pod["metadata"]["annotations"],
            &json!({CONFIG_ANNOTATION: self.config_digest}),
        );
        Ok(())
    }

    /// What a pod gated by this sidecar carries, as admission and the
    /// approval service check it.
    pub fn expected(&self) -> Result<SidecarStatus, RenderError> {
        let mut pod = json!({"spec": {"containers": []}});
        self.gate(&mut pod, Gating::Injected)?;
        Ok(super::injection::observed_sidecar(&pod["spec"]).unwrap_or_default())
    }
}

/// Refuses a pod spec that already names a container as the gateway's.
pub(super) fn check_names(pod_spec: &Value) -> Result<(), RenderError> {
    for reserved in [GATEWAY_CONTAINER, INSTALLER_CONTAINER] {
        let taken = |list: &Value| {
            list.as_array()
                .is_some_and(|l| l.iter().any(|c| c["name"] == reserved))
        };
        if taken(&pod_spec["initContainers"]) || taken(&pod_spec["containers"]) {
            return Err(RenderError::ReservedName(reserved.to_string()));
        }
    }
    Ok(())
}

/// Puts `first` before what `list` holds (creating it).
fn prepend(list: &mut Value, first: &[Value]) {
    let mut joined = first.to_vec();
    if let Some(existing) = list.as_array() {
        joined.extend(existing.iter().cloned());
    }
    *list = Value::Array(joined);
}

/// Whether no sidecar is ever injected into `namespace`'s pods: the
/// cluster's own namespaces and the operator's.
pub fn protected_namespace(namespace: &str, settings: &Settings) -> bool {
    SYSTEM_NAMESPACES.contains(&namespace) || namespace == settings.operator_namespace
}

/// The objects for `server`, owned by it.
pub fn render(server: &McpServer, settings: &Settings) -> Result<Workload, RenderError> {
    let name = server
        .metadata
        .name
        .clone()
        .ok_or(RenderError::NoMetadata("name"))?;
    let namespace = server
        .metadata
        .namespace
        .clone()
        .ok_or(RenderError::NoMetadata("namespace"))?;
    let spec = &server.spec;
    if spec.template.is_some() == spec.selector.is_some() {
        return Err(RenderError::NoMode);
    }
    if spec.template.is_none() && protected_namespace(&namespace, settings) {
        return Err(RenderError::ProtectedNamespace(namespace));
    }
    let upstream_port = u16::try_from(spec.upstream_port)
        .ok()
        .filter(|p| *p >= 1024)
        .ok_or(RenderError::PrivilegedPort(spec.upstream_port))?;

    let credential = gateway_credential();
    let bootstrap = bootstrap(
        &format!("{namespace}/{name}"),
        server,
        settings,
        &credential,
        upstream_port,
    )?;
    let bootstrap_text = bootstrap.to_string();
    let sds_text = credential.sds_document().to_string();
    let config_digest =
        airlock_policy::canonical::sha256_hex(format!("{bootstrap_text}\n{sds_text}").as_bytes());
    let owner = owner_reference(server)?;
    let labels = json!({SERVER_LABEL: name, "app.kubernetes.io/managed-by": "airlock-operator"});
    let gateway_name = format!("{name}-airlock-gateway");
    let metadata = |object_name: &str| json!({"name": object_name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]});

    let mut data = json!({CONFIG_FILE: bootstrap_text, CREDENTIAL_SDS_FILE: sds_text});
    // Outside the digest: a CA rotation reaches running sidecars without rolling them.
    if let Some(bundle) = &settings.approvals_ca {
        data[TRUST_FILE] = json!(bundle);
        data[TRUST_SDS_FILE] = json!(approvals_trust().sds_document().to_string());
    }
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(&gateway_name),
        "data": data,
    });
    let sidecar = Sidecar {
        server: name.clone(),
        init_containers: vec![
            installer_container(settings),
            gateway_container(
                spec.gateway
                    .envoy_image
                    .as_deref()
                    .unwrap_or(&settings.envoy_image),
                settings,
                spec,
            ),
        ],
        volumes: vec![
            json!({"name": CONFIG_VOLUME, "configMap": {"name": gateway_name}}),
            json!({"name": "airlock-filter", "emptyDir": {"sizeLimit": "64Mi"}}),
            json!({"name": "airlock-admin", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
            json!({"name": NO_API_TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Ki"}}),
            json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
                "audience": gateway_identity::AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": TOKEN_FILE}}]}}),
        ],
        config_digest,
        min_grace_seconds: i64::from(spec.gateway.max_hold_seconds) + DRAIN_SECONDS,
    };

    let deployment = match &spec.template {
        Some(template) => {
            let mut template = template.clone();
            hardening::harden(template.spec.as_mut().ok_or(RenderError::NoPodSpec)?)?;
            let mut pod = serde_json::to_value(&template)
                .map_err(|e| RenderError::Shape("the pod template", e.to_string()))?;
            sidecar.gate(&mut pod, Gating::Template)?;
            Some(typed(
                "the Deployment",
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": metadata(&name),
                    "spec": {
                        "replicas": spec.replicas,
                        "selector": {"matchLabels": {SERVER_LABEL: name}},
                        "template": pod,
                    },
                }),
            )?)
        }
        None => None,
    };
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(&name),
        "spec": {
            "selector": {SERVER_LABEL: name},
            "ports": [{"name": "mcp", "port": 80, "targetPort": "mcp", "protocol": "TCP"}],
        },
    });
    // In selector mode the policy covers every selected pod, gated or not:
    // one that still runs without the sidecar is reachable on no MCP port.
    let pod_selector = match &spec.selector {
        Some(selector) if spec.template.is_none() => serde_json::to_value(selector)
            .map_err(|e| RenderError::Shape("spec.selector", e.to_string()))?,
        _ => json!({"matchLabels": {SERVER_LABEL: name}}),
    };
    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(&gateway_name),
        "spec": {
            "podSelector": pod_selector,
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [
                {"port": GATEWAY_PORT, "protocol": "TCP"},
                {"port": STATS_PORT, "protocol": "TCP"},
            ]}],
        },
    });
    Ok(Workload {
        config_map: typed("the ConfigMap", config_map)?,
        deployment,
        service: typed("the Service", service)?,
        network_policy: typed("the NetworkPolicy", network_policy)?,
        sidecar,
    })
}

fn typed<T: serde::de::DeserializeOwned>(
    what: &'static str,
    value: Value,
) -> Result<T, RenderError> {
    serde_json::from_value(value).map_err(|e| RenderError::Shape(what, e.to_string()))
}

/// The sidecar's bootstrap: the filter configured for this server, the MCP
/// server on 127.0.0.1, the approval service and each tenant's key server.
fn bootstrap(
    server_name: &str,
    server: &McpServer,
    settings: &Settings,
    credential: &FileCredential,
    upstream_port: u16,
) -> Result<Value, RenderError> {
    let spec = &server.spec;
    let (approvals, _) = Cluster::for_url("approvals", &settings.approvals_url)?;
    // A replica that dies, or an endpoint kube-proxy has not dropped yet,
    // costs a retry, not the call.
    let approvals = approvals.retried().with_credential(credential.clone());
    let approvals = match &settings.approvals_ca {
        Some(_) => approvals.trusting(approvals_trust()),
        None => approvals,
    };
    let mut clusters = vec![approvals.clone()];
    let mut jwks = Vec::new();
    for (index, tenant) in spec.auth.tenants.iter().enumerate() {
        let url = settings.jwks_urls.get(tenant).cloned().unwrap_or_else(|| {
            format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
        });
        let (cluster, path) = Cluster::for_url(&format!("jwks-{index}"), &url)?;
        jwks.push(json!({"tenant": tenant, "cluster": cluster.name, "path": path, "authority": cluster.host}));
        clusters.push(cluster);
    }
    let mut config = json!({
        "server": server_name,
        "mcpPath": spec.path,
        "auth": spec.auth,
        "jwks": jwks,
        "approvals": {"cluster": approvals.name, "holdCluster": approvals.retrying_name(),
            "authority": approvals.host},
        "maxHoldSeconds": spec.gateway.max_hold_seconds,
        "maxBodyBytes": spec.gateway.max_body_bytes,
        "forwardToken": spec.gateway.forward_token,
        "allowedClientApps": spec.gateway.allowed_client_apps,
    });
    if let Some(limit) = spec.gateway.max_holds {
        config["maxHolds"] = json!(limit);
    }
    if let Some(limit) = spec.gateway.max_holds_per_caller {
        config["maxHoldsPerCaller"] = json!(limit);
    }
    if let Some(url) = &spec.gateway.public_url {
        config["publicUrl"] = json!(url);
    }
    FilterConfig::from_json(config.to_string().as_bytes())
        .map_err(|e| RenderError::FilterConfig(e.to_string()))?;
    let bootstrap = Bootstrap {
        listen_port: GATEWAY_PORT,
        in_pod: Some(InPod {
            admin_socket: format!("{ADMIN_DIR}/envoy.sock").into(),
            stats_port: STATS_PORT,
        }),
        upstream: Cluster::loopback("upstream", upstream_port),
        filter: Some(FilterModule {
            path: format!("{FILTER_DIR}/{FILTER_FILE}").into(),
            config,
        }),
        clusters,
        // The gateway container's memory limit: past it, the kernel kills Envoy.
        memory: MemoryPressure::Cgroup,
    };
    Ok(bootstrap.render())
}

/// Where the sidecar reads the CAs it trusts for the approval service: from
/// the server's ConfigMap, re-read when the operator rotates its CA.
fn approvals_trust() -> WatchedTrust {
    WatchedTrust {
        ca_file: format!("{CONFIG_DIR}/{TRUST_FILE}").into(),
        sds_file: format!("{CONFIG_DIR}/{TRUST_SDS_FILE}").into(),
    }
}

/// The pod's `airlock`-audience token, attached by Envoy to every request
/// to the approval service.
fn gateway_credential() -> FileCredential {
    FileCredential {
        header: GATEWAY_CREDENTIAL_HEADER.into(),
        file: format!("{TOKEN_DIR}/{TOKEN_FILE}").into(),
        sds_file: format!("{CONFIG_DIR}/{CREDENTIAL_SDS_FILE}").into(),
    }
}

/// An empty directory where Kubernetes would mount the pod's API token: the
/// gateway's containers have no use for it, and a pod that automounts one
/// gets it added by the API server (even after injection) to every
/// container that has nothing mounted there.
fn no_api_token_mount() -> Value {
    json!({"name": NO_API_TOKEN_VOLUME, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true})
}

/// Copies the filter module out of the operator's image, checking its digest.
fn installer_container(settings: &Settings) -> Value {
    json!({
        "name": INSTALLER_CONTAINER,
        "image": settings.operator_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["airlock-operator", "install-filter",
                    "--from", settings.filter_path,
                    "--to", format!("{FILTER_DIR}/{FILTER_FILE}"),
                    "--sha256", settings.filter_sha256],
        "securityContext": installer_security_context(),
        "volumeMounts": [{"name": "airlock-filter", "mountPath": FILTER_DIR}, no_api_token_mount()],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    })
}

fn gateway_container(image: &str, settings: &Settings, spec: &crate::crd::McpServerSpec) -> Value {
    let probe = |failures: u32| json!({"httpGet": {"path": READY_PATH, "port": "stats"}, "periodSeconds": 1, "failureThreshold": failures});
    let mut container = json!({
        "name": GATEWAY_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": ["-c", format!("{CONFIG_DIR}/{CONFIG_FILE}"), "--concurrency", "2",
                 "--disable-hot-restart", "--log-level", "warn"],
        "ports": [
            {"name": "mcp", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {"name": "stats", "containerPort": STATS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": probe(120),
        "readinessProbe": probe(3),
        "securityContext": gateway_security_context(),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": "airlock-filter", "mountPath": FILTER_DIR, "readOnly": true},
            {"name": "airlock-admin", "mountPath": ADMIN_DIR},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            no_api_token_mount(),
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    });
    if let Some(resources) = &spec.gateway.resources
        && let Ok(resources) = serde_json::to_value(resources)
    {
        container["resources"] = resources;
    }
    container
}

/// Non-root, read-only, no privileges, no capabilities.
fn owner_reference(server: &McpServer) -> Result<Value, RenderError> {
    Ok(json!({
        "apiVersion": "mcp.airlock.dev/v1alpha1",
        "kind": "McpServer",
        "name": server.name_any(),
        "uid": server.metadata.uid.clone().ok_or(RenderError::NoMetadata("uid"))?,
        "controller": true,
        "blockOwnerDeletion": true,
    }))
}

/// Adds `extra`'s keys to the object at `target` (creating it).
fn merge_object(target: &mut Value, extra: &Value) {
    if !target.is_object() {
        *target = json!({});
    }
    if let (Some(target), Some(extra)) = (target.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// Settings as a chart install in `airlock-system` would give them, for unit tests.
#[cfg(test)]
pub fn test_settings() -> Settings {
    Settings {
        envoy_image: "airlock.local/envoy:1.40.0".into(),
        operator_image: "airlock.local/operator:0.1.0".into(),
        image_pull_policy: "IfNotPresent".into(),
        filter_path: "/usr/lib/airlock/airlock_filter.wasm".into(),
        filter_sha256: "ab".repeat(32),
        approvals_url: "https://airlock-gateways.airlock-system.svc:8443".into(),
        approvals_ca: Some("CA PEM".into()),
        jwks_urls: BTreeMap::new(),
        operator_namespace: "airlock-system".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_settings as settings;

    fn server(extra: Value) -> McpServer {
        let mut value = json!({
            "apiVersion": "mcp.airlock.dev/v1alpha1", "kind": "McpServer",
            "metadata": {"name": "models", "namespace": "ml", "uid": "u-1"},
            "spec": {
                "upstreamPort": 8080,
                "auth": {"tenants": ["t1"], "audiences": ["api://models"]},
                "template": {"metadata": {"labels": {"app": "models"}}, "spec": {"containers": [
                    {"name": "mcp", "image": "example/mcp:1", "ports": [{"containerPort": 8080}]}]}},
            },
        });
        merge_object(&mut value["spec"], &extra);
        serde_json::from_value(value).unwrap()
    }

    fn as_json<T: serde::Serialize>(object: &T) -> Value {
        serde_json::to_value(object).unwrap()
    }

    #[test]
    fn the_gateway_is_a_native_sidecar_after_the_filter_installer() {
        let workload = render(&server(json!({})), &settings()).unwrap();
        let pod = &as_json(&workload.deployment.unwrap())["spec"]["template"];
        let init = pod["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], INSTALLER_CONTAINER);
        assert_eq!(init[0]["command"][6], "--sha256");
        assert_eq!(init[0]["command"][7], "ab".repeat(32));
        assert_eq!(init[1]["name"], GATEWAY_CONTAINER);
        assert_eq!(init[1]["restartPolicy"], "Always");
        assert_eq!(init[1]["startupProbe"]["httpGet"]["port"], "stats");
        assert_eq!(pod["spec"]["containers"][0]["name"], "mcp");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(
            pod["spec"]["terminationGracePeriodSeconds"],
            50 + DRAIN_SECONDS
        );
        assert_eq!(pod["metadata"]["labels"][SERVER_LABEL], "models");
        assert_eq!(pod["metadata"]["labels"]["app"], "models");
        assert!(pod["metadata"]["annotations"][CONFIG_ANNOTATION].is_string());
    }

    #[test]
    fn only_the_gateway_is_exposed_and_admitted() {
        let workload = render(&server(json!({})), &settings()).unwrap();
        let service = as_json(&workload.service);
        assert_eq!(service["spec"]["ports"].as_array().unwrap().len(), 1);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "mcp");
        let policy = as_json(&workload.network_policy);
        let ports: Vec<&Value> = policy["spec"]["ingress"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["port"])
            .collect();
        assert_eq!(ports, [&json!(GATEWAY_PORT), &json!(STATS_PORT)]);
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        for object in [
            as_json(&workload.config_map),
            as_json(&workload.deployment.unwrap()),
            service,
            policy,
        ] {
            assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "u-1");
        }
    }

    #[test]
    fn the_bootstrap_configures_the_filter_for_this_server() {
        let mut settings = settings();
        settings
            .jwks_urls
            .insert("t1".into(), "http://10.250.0.1:4000/t1/keys".into());
        let workload = render(
            &server(json!({"gateway": {"maxHoldSeconds": 20, "maxHoldsPerCaller": 5}})),
            &settings,
        )
        .unwrap();
        let text = &workload.config_map.data.unwrap()[CONFIG_FILE];
        let bootstrap: Value = serde_json::from_str(text).unwrap();
        let filter = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"][0]["typed_config"]["config"];
        let config: Value =
            serde_json::from_str(filter["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(config["server"], "ml/models");
        assert_eq!(config["maxHoldSeconds"], 20);
        assert_eq!(config["maxHoldsPerCaller"], 5);
        assert!(config.get("maxHolds").is_none(), "the filter's default");
        assert_eq!(config["jwks"][0]["path"], "/t1/keys");
        assert_eq!(
            config["approvals"]["authority"],
            "airlock-gateways.airlock-system.svc"
        );
        assert_eq!(
            filter["vm_config"]["code"]["local"]["filename"],
            format!("{FILTER_DIR}/{FILTER_FILE}")
        );
        // Near the container's memory limit Envoy refuses, rather than be killed.
        assert_eq!(
            bootstrap["overload_manager"]["resource_monitors"][0]["name"],
            "envoy.resource_monitors.cgroup_memory"
        );
        let clusters = &bootstrap["static_resources"]["clusters"];
        assert_eq!(
            clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["address"],
            "127.0.0.1"
        );
    }

    #[test]
    fn only_the_gateway_holds_the_pods_airlock_token_and_envoy_attaches_it() {
        let workload = render(&server(json!({})), &settings()).unwrap();
        let pod = &as_json(&workload.deployment.unwrap())["spec"]["template"]["spec"];
        let token_volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["projected"].is_object())
            .unwrap();
        let source = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(source["audience"], gateway_identity::AUDIENCE);
        let mounts = |container: &Value| -> Vec<Value> {
            container["volumeMounts"]
                .as_array()
                .map(|m| m.iter().map(|m| m["name"].clone()).collect())
                .unwrap_or_default()
        };
        let containers = pod["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["containers"].as_array().unwrap());
        for container in containers {
            let holds = mounts(container).contains(&token_volume["name"]);
            assert_eq!(holds, container["name"] == GATEWAY_CONTAINER, "{container}");
        }
        let data = workload.config_map.data.unwrap();
        let bootstrap: Value = serde_json::from_str(&data[CONFIG_FILE]).unwrap();
        let config: Value = serde_json::from_str(
            bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"][0]["typed_config"]["config"]["configuration"]
                ["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(config["approvals"].get("credential").is_none());
        let approvals = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == config["approvals"]["cluster"])
            .unwrap();
        // Over TLS to the service, trusting the operator's CA only, for the service's name.
        let validation = &approvals["transport_socket"]["typed_config"]["common_tls_context"]["combined_validation_context"];
        assert_eq!(
            validation["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"]
                ["exact"],
            "airlock-gateways.airlock-system.svc"
        );
        let trust =
            &validation["validation_context_sds_secret_config"]["sds_config"]["path_config_source"];
        assert_eq!(trust["path"], format!("{CONFIG_DIR}/{TRUST_SDS_FILE}"));
        assert_eq!(trust["watched_directory"]["path"], CONFIG_DIR);
        assert_eq!(data[TRUST_FILE], "CA PEM");
        let trust_sds: Value = serde_json::from_str(&data[TRUST_SDS_FILE]).unwrap();
        assert_eq!(
            trust_sds["resources"][0]["validation_context"]["trusted_ca"]["filename"],
            format!("{CONFIG_DIR}/{TRUST_FILE}")
        );
        // A rotated bundle changes the ConfigMap, not the pods.
        let mut rotated = settings();
        rotated.approvals_ca = Some("CA PEM\nNEXT CA PEM".into());
        let after = render(&server(json!({})), &rotated).unwrap();
        assert_eq!(
            as_json(&after.deployment.unwrap()),
            as_json(
                &render(&server(json!({})), &settings())
                    .unwrap()
                    .deployment
                    .unwrap()
            )
        );
        let injector = &approvals["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"][0]["typed_config"];
        assert_eq!(injector["overwrite"], true);
        let generic = &injector["credential"]["typed_config"];
        assert_eq!(generic["header"], GATEWAY_CREDENTIAL_HEADER);
        let source = &generic["credential"]["sds_config"]["path_config_source"];
        assert_eq!(
            source["path"],
            format!("{CONFIG_DIR}/{CREDENTIAL_SDS_FILE}")
        );
        assert_eq!(source["watched_directory"]["path"], TOKEN_DIR);
        let sds: Value = serde_json::from_str(&data[CREDENTIAL_SDS_FILE]).unwrap();
        assert_eq!(
            sds["resources"][0]["generic_secret"]["secret"]["filename"],
            format!("{TOKEN_DIR}/{TOKEN_FILE}")
        );
    }

    #[test]
    fn bad_servers_are_refused_naming_the_field() {
        let port = render(&server(json!({"upstreamPort": GATEWAY_PORT})), &settings());
        assert_eq!(
            port.unwrap_err(),
            RenderError::PrivilegedPort(i32::from(GATEWAY_PORT))
        );
        let root = server(json!({"template": {"spec": {
            "securityContext": {"runAsUser": 0}, "containers": [{"name": "mcp", "image": "x"}]}}}));
        assert_eq!(
            render(&root, &settings()).unwrap_err().to_string(),
            "spec.template.spec.securityContext.runAsUser: an MCP container does not run as root"
        );
        let reserved = server(json!({"template": {"spec": {"containers": [
            {"name": GATEWAY_CONTAINER, "image": "x"}]}}}));
        assert!(matches!(
            render(&reserved, &settings()),
            Err(RenderError::ReservedName(_))
        ));
    }
}
