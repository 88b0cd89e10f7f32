//! Selector mode: the sidecar of [`workload`] injected into pods of the
//! namespace's own that an McpServer's selector names, and the one check of
//! what makes such a pod gated. Admission's policy `airlock-selected-pods`
//! applies the same check in CEL to the final pod, against the server's
//! `status.sidecar` (what [`Sidecar::expected`] gives); the approval service
//! and the controller apply it here.

use super::hardening;
use super::workload::{
    CONFIG_VOLUME, GATEWAY_CONTAINER, Gating, INJECTED_LABEL, INSTALLER_CONTAINER, RenderError,
    SERVER_LABEL, Sidecar, TOKEN_VOLUME, check_names,
};
use crate::approvals::gateway_identity::AUDIENCE;
use crate::crd::SidecarStatus;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use std::collections::BTreeMap;

/// Whether `selector` selects a pod labelled `labels`, as the API server
/// reads a label selector. A selector that names nothing selects nothing:
/// a server cannot take over a whole namespace by accident.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector.match_labels.clone().unwrap_or_default();
    let expressions = selector.match_expressions.clone().unwrap_or_default();
    if by_label.is_empty() && expressions.is_empty() {
        return false;
    }
    by_label
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
        && expressions.iter().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            let held = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => held.is_some_and(|v| values.contains(v)),
                "NotIn" => !held.is_some_and(|v| values.contains(v)),
                "Exists" => held.is_some(),
                "DoesNotExist" => held.is_none(),
                _ => false,
            }
        })
}

/// `pod` (JSON, as admission sees it) with the gateway injected: hardened
/// as a template would be, then gated.
pub fn inject(pod: &Value, sidecar: &Sidecar) -> Result<Value, RenderError> {
    check_names(&pod["spec"])?;
    let mut spec: PodSpec = serde_json::from_value(pod["spec"].clone())
        .map_err(|e| RenderError::Shape("the pod", e.to_string()))?;
    hardening::harden(&mut spec).map_err(RenderError::UnsafePod)?;
    let mut injected = pod.clone();
    injected["spec"] =
        serde_json::to_value(&spec).map_err(|e| RenderError::Shape("the pod", e.to_string()))?;
    sidecar.gate(&mut injected, Gating::Injected)?;
    // A container that names the gateway's token volume would get it once injected.
    confined_token(&injected["spec"]).map_err(RenderError::TokenExposed)?;
    Ok(injected)
}

/// The sidecar `spec` (a pod spec as JSON) carries, if any: both of its
/// containers and its bootstrap volume.
pub fn observed_sidecar(spec: &Value) -> Option<SidecarStatus> {
    let init = spec["initContainers"].as_array()?;
    let named = |name: &str| init.iter().find(|c| c["name"] == name);
    let (gateway, installer) = (named(GATEWAY_CONTAINER)?, named(INSTALLER_CONTAINER)?);
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let config_map = spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == CONFIG_VOLUME)?["configMap"]["name"]
        .as_str()?
        .to_string();
    Some(SidecarStatus {
        gateway_image: gateway["image"].as_str()?.to_string(),
        gateway_command: strings(&gateway["command"]),
        gateway_args: strings(&gateway["args"]),
        gateway_mounts: gateway["volumeMounts"]
            .as_array()
            .map(|mounts| {
                mounts
                    .iter()
                    .map(|m| {
                        format!(
                            "{}={}",
                            m["name"].as_str().unwrap_or_default(),
                            m["mountPath"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        installer_image: installer["image"].as_str()?.to_string(),
        installer_command: strings(&installer["command"]),
        config_map,
    })
}

/// Why a pod of server `server` is not gated by the sidecar `expected`, if
/// it is not: it must carry the server's labels, the sidecar exactly, and
/// the gateway's token confined to the gateway's container.
pub fn check_gated(pod: &Value, server: &str, expected: &SidecarStatus) -> Result<(), String> {
    let labels = &pod["metadata"]["labels"];
    if labels[SERVER_LABEL] != server || labels[INJECTED_LABEL] != "true" {
        return Err(format!(
            "the pod does not carry the labels {SERVER_LABEL}={server} and {INJECTED_LABEL}=true that injection sets"
        ));
    }
    let spec = &pod["spec"];
    match observed_sidecar(spec) {
        None => return Err("the pod runs without the gateway sidecar".into()),
        Some(observed) if &observed != expected => {
            return Err(format!(
                "the pod's gateway sidecar is not the operator's: {}",
                difference(&observed, expected)
            ));
        }
        Some(_) => {}
    }
    confined_token(spec)
}

/// The first field where `observed` departs from `expected`.
fn difference(observed: &SidecarStatus, expected: &SidecarStatus) -> &'static str {
    [
        (
            observed.gateway_image == expected.gateway_image,
            "its image",
        ),
        (
            observed.gateway_command == expected.gateway_command
                && observed.gateway_args == expected.gateway_args,
            "its command or arguments",
        ),
        (
            observed.gateway_mounts == expected.gateway_mounts,
            "its mounts",
        ),
        (
            observed.installer_image == expected.installer_image
                && observed.installer_command == expected.installer_command,
            "the filter module it installs",
        ),
        (observed.config_map == expected.config_map, "its bootstrap"),
    ]
    .into_iter()
    .find(|(same, _)| !same)
    .map_or("nothing", |(_, what)| what)
}

/// The `airlock`-audience token is the gateway's volume, mounted by the
/// gateway alone: no other volume projects one, no other container mounts it.
fn confined_token(spec: &Value) -> Result<(), String> {
    let empty = Vec::new();
    let volumes = spec["volumes"].as_array().unwrap_or(&empty);
    let projects_airlock = |volume: &Value| {
        volume["projected"]["sources"]
            .as_array()
            .is_some_and(|sources| {
                sources
                    .iter()
                    .any(|s| s["serviceAccountToken"]["audience"] == AUDIENCE)
            })
    };
    if let Some(other) = volumes
        .iter()
        .find(|v| v["name"] != TOKEN_VOLUME && projects_airlock(v))
    {
        return Err(format!(
            "volume {} projects a token for the gateways' audience `{AUDIENCE}`",
            other["name"]
        ));
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().unwrap_or(&empty));
    for container in containers {
        let mounts_token = container["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == TOKEN_VOLUME));
        if mounts_token && container["name"] != GATEWAY_CONTAINER {
            return Err(format!(
                "container {} mounts the gateway's token",
                container["name"]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::McpServer;
    use crate::render::workload::{render, test_settings as settings};
    use serde_json::json;

    fn selector(value: Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_read_as_the_api_server_reads_them() {
        let tools = labels(&[("app", "tools"), ("tier", "mcp")]);
        assert!(selects(
            &selector(json!({"matchLabels": {"app": "tools"}})),
            &tools
        ));
        assert!(!selects(
            &selector(json!({"matchLabels": {"app": "web"}})),
            &tools
        ));
        let expressions = |op: &str, values: Value| {
            selector(
                json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}),
            )
        };
        assert!(selects(&expressions("In", json!(["mcp", "x"])), &tools));
        assert!(!selects(&expressions("NotIn", json!(["mcp"])), &tools));
        assert!(selects(&expressions("Exists", json!(null)), &tools));
        assert!(!selects(&expressions("DoesNotExist", json!(null)), &tools));
        assert!(!selects(&expressions("Gt", json!(["1"])), &tools));
        // Empty selects nothing (the API server's empty selector selects everything).
        assert!(!selects(&selector(json!({})), &tools));
    }

    fn server() -> McpServer {
        serde_json::from_value(json!({
            "apiVersion": "mcp.airlock.dev/v1alpha1", "kind": "McpServer",
            "metadata": {"name": "tools", "namespace": "apps", "uid": "u-1"},
            "spec": {
                "upstreamPort": 8080,
                "auth": {"tenants": ["t1"], "audiences": ["api://tools"]},
                "selector": {"matchLabels": {"app": "tools"}},
            },
        }))
        .unwrap()
    }

    fn app_pod() -> Value {
        json!({
            "metadata": {"generateName": "tools-", "namespace": "apps", "labels": {"app": "tools"}},
            "spec": {"containers": [{"name": "mcp", "image": "example/tools:1",
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets"}]}],
                "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]},
        })
    }

    #[test]
    fn an_injected_pod_is_gated_and_a_tampered_one_is_not() {
        let workload = render(&server(), &settings()).unwrap();
        assert!(workload.deployment.is_none());
        let expected = workload.sidecar.expected().unwrap();
        assert_eq!(expected.config_map, "tools-airlock-gateway");
        assert!(expected.installer_command.contains(&"ab".repeat(32)));
        let pod = inject(&app_pod(), &workload.sidecar).unwrap();
        assert_eq!(check_gated(&pod, "tools", &expected), Ok(()));
        // The pod keeps its own token; it is hardened like a template.
        assert_eq!(pod["spec"].get("automountServiceAccountToken"), None);
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(pod["metadata"]["labels"]["app"], "tools");

        assert!(check_gated(&app_pod(), "tools", &expected).is_err());
        assert!(check_gated(&pod, "other", &expected).is_err());
        let mut stripped = pod.clone();
        stripped["spec"]["initContainers"] = json!([]);
        assert_eq!(
            check_gated(&stripped, "tools", &expected),
            Err("the pod runs without the gateway sidecar".into())
        );
        let tamper = |edit: &dyn Fn(&mut Value)| {
            let mut tampered = pod.clone();
            edit(&mut tampered);
            check_gated(&tampered, "tools", &expected).unwrap_err()
        };
        assert!(
            tamper(&|p| p["spec"]["initContainers"][1]["image"] = json!("evil/envoy"))
                .contains("its image")
        );
        assert!(
            tamper(&|p| p["spec"]["initContainers"][1]["args"] = json!(["--config-yaml", "{}"]))
                .contains("arguments")
        );
        assert!(
            tamper(&|p| p["spec"]["initContainers"][0]["command"][7] = json!("00"))
                .contains("filter module")
        );
        assert!(
            tamper(&|p| p["spec"]["volumes"][0]["configMap"]["name"] = json!("mine"))
                .contains("bootstrap")
        );
        let stolen = tamper(&|p| {
            p["spec"]["containers"][0]["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": TOKEN_VOLUME, "mountPath": "/stolen"}))
        });
        assert!(stolen.contains("mounts the gateway's token"), "{stolen}");
        let own = tamper(&|p| {
            p["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": "mine",
                "projected": {"sources": [{"serviceAccountToken": {"audience": AUDIENCE, "path": "t"}}]}}))
        });
        assert!(own.contains("gateways' audience"), "{own}");
    }

    #[test]
    fn pods_that_cannot_be_gated_are_refused_naming_the_field() {
        let sidecar = render(&server(), &settings()).unwrap().sidecar;
        let mut root = app_pod();
        root["spec"]["securityContext"] = json!({"runAsUser": 0});
        assert_eq!(
            inject(&root, &sidecar).unwrap_err().to_string(),
            "spec.securityContext.runAsUser: an MCP container does not run as root"
        );
        let mut greedy = app_pod();
        greedy["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": TOKEN_VOLUME, "mountPath": "/stolen"}]);
        assert_eq!(
            inject(&greedy, &sidecar).unwrap_err().to_string(),
            "container \"mcp\" mounts the gateway's token"
        );
        let mut again = inject(&app_pod(), &sidecar).unwrap();
        again["metadata"]["labels"] = json!({"app": "tools"});
        assert!(matches!(
            inject(&again, &sidecar),
            Err(RenderError::ReservedName(_))
        ));
    }

    #[test]
    fn nothing_is_injected_in_the_clusters_or_the_operators_namespaces() {
        for namespace in ["kube-system", "airlock-system"] {
            let mut server = server();
            server.metadata.namespace = Some(namespace.into());
            assert_eq!(
                render(&server, &settings()).unwrap_err(),
                RenderError::ProtectedNamespace(namespace.into())
            );
        }
    }
}
