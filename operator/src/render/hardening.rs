//! What keeps the MCP container from taking the gateway's place. It shares
//! the pod's network namespace with Envoy, so if Envoy stopped, anything
//! that could bind Envoy's port would receive the Service's traffic
//! ungated. Envoy listens below 1024, which only a process holding
//! `NET_BIND_SERVICE` may bind; the pod sets
//! `net.ipv4.ip_unprivileged_port_start` back to 1024 (containerd 2 starts
//! pods at 0); Envoy alone holds the capability (a file capability on its
//! binary, allowed by its container) and runs as its own UID; every MCP
//! container runs as another non-root UID with no capabilities and no way
//! to gain any. A template that asks for anything else is refused, naming
//! the field.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext, Sysctl,
};
use serde_json::{Value, json};

/// The gateway's UID and GID (the filter installer's too); no other
/// container of the pod may run as it.
pub const GATEWAY_UID: i64 = 101;
/// The UID MCP containers run as when the template names none.
pub const DEFAULT_MCP_UID: i64 = 65532;
const PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
/// The kernel's default: ports below it need `NET_BIND_SERVICE`.
const PRIVILEGED_BELOW: i64 = 1024;

/// A pod spec field that would let the MCP container act as the gateway
/// (relative to the pod spec).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Unsafe {
    pub field: String,
    pub why: &'static str,
}

fn refuse(field: impl Into<String>, why: &'static str) -> Result<(), Unsafe> {
    Err(Unsafe {
        field: field.into(),
        why,
    })
}

/// Checks the template's pod spec (before the gateway's containers are
/// added) and sets what it leaves out: the port sysctl, a non-root UID,
/// and for each container no capabilities and no privilege escalation.
pub fn harden(spec: &mut PodSpec) -> Result<(), Unsafe> {
    for (field, set, why) in [
        (
            "hostNetwork",
            spec.host_network,
            "the pod must have its own network namespace",
        ),
        (
            "hostPID",
            spec.host_pid,
            "the gateway's processes must stay out of reach",
        ),
        (
            "hostIPC",
            spec.host_ipc,
            "the gateway's memory must stay out of reach",
        ),
        (
            "shareProcessNamespace",
            spec.share_process_namespace,
            "the gateway's processes must stay out of reach",
        ),
    ] {
        if set == Some(true) {
            refuse(field, why)?;
        }
    }
    let security = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    check_user(
        "securityContext",
        security.run_as_user,
        security.run_as_group,
        security.run_as_non_root,
    )?;
    security.run_as_non_root.get_or_insert(true);
    security.run_as_user.get_or_insert(DEFAULT_MCP_UID);
    // With the rest, what the `restricted` Pod Security Standard asks.
    security
        .seccomp_profile
        .get_or_insert_with(|| SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        });
    let sysctls = security.sysctls.get_or_insert_with(Vec::new);
    let mut port_set = false;
    for (index, sysctl) in sysctls.iter().enumerate() {
        if sysctl.name == PORT_SYSCTL {
            if sysctl
                .value
                .parse::<i64>()
                .map_or(true, |v| v < PRIVILEGED_BELOW)
            {
                refuse(
                    format!("securityContext.sysctls[{index}]"),
                    "ports below 1024 must stay privileged: the gateway's port is one",
                )?;
            }
            port_set = true;
        }
    }
    if !port_set {
        sysctls.push(Sysctl {
            name: PORT_SYSCTL.into(),
            value: PRIVILEGED_BELOW.to_string(),
        });
    }
    let lists = [
        (
            "initContainers",
            spec.init_containers.get_or_insert_with(Vec::new),
        ),
        ("containers", &mut spec.containers),
    ];
    for (list, containers) in lists {
        for (index, container) in containers.iter_mut().enumerate() {
            harden_container(container, &format!("{list}[{index}]"))?;
        }
    }
    Ok(())
}

fn harden_container(container: &mut Container, at: &str) -> Result<(), Unsafe> {
    let security = container
        .security_context
        .get_or_insert_with(SecurityContext::default);
    let field = |name: &str| format!("{at}.securityContext.{name}");
    check_user(
        &format!("{at}.securityContext"),
        security.run_as_user,
        security.run_as_group,
        security.run_as_non_root,
    )?;
    if security.privileged == Some(true) {
        refuse(field("privileged"), "an MCP container holds no privileges")?;
    }
    if security.allow_privilege_escalation == Some(true) {
        refuse(
            field("allowPrivilegeEscalation"),
            "an MCP container may not gain privileges (a setuid program could become the gateway's UID)",
        )?;
    }
    let capabilities = security
        .capabilities
        .get_or_insert_with(Capabilities::default);
    if capabilities
        .add
        .as_ref()
        .is_some_and(|added| !added.is_empty())
    {
        refuse(
            field("capabilities.add"),
            "an MCP container holds no capabilities",
        )?;
    }
    capabilities.drop = Some(vec!["ALL".into()]);
    security.allow_privilege_escalation = Some(false);
    Ok(())
}

fn check_user(
    at: &str,
    user: Option<i64>,
    group: Option<i64>,
    non_root: Option<bool>,
) -> Result<(), Unsafe> {
    match user {
        Some(0) => refuse(
            format!("{at}.runAsUser"),
            "an MCP container does not run as root",
        )?,
        Some(GATEWAY_UID) => refuse(
            format!("{at}.runAsUser"),
            "UID 101 is the gateway's; an MCP container runs as another",
        )?,
        _ => {}
    }
    if group == Some(GATEWAY_UID) {
        refuse(
            format!("{at}.runAsGroup"),
            "GID 101 is the gateway's; an MCP container runs as another",
        )?;
    }
    if non_root == Some(false) {
        refuse(
            format!("{at}.runAsNonRoot"),
            "an MCP container does not run as root",
        )?;
    }
    Ok(())
}

/// The gateway container's own: its UID, and `NET_BIND_SERVICE` alone so
/// that its binary's file capability takes effect.
pub fn gateway_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": GATEWAY_UID,
        "runAsGroup": GATEWAY_UID,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The filter installer's: the gateway's UID, nothing else.
pub fn installer_security_context() -> Value {
    let mut context = gateway_security_context();
    context["capabilities"] = json!({"drop": ["ALL"]});
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> PodSpec {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "mcp", "image": "x"}]);
        }
        serde_json::from_value(spec).unwrap()
    }

    fn hardened(spec: Value) -> Value {
        let mut spec = pod(spec);
        harden(&mut spec).unwrap();
        serde_json::to_value(spec).unwrap()
    }

    #[test]
    fn a_plain_template_gets_a_non_root_uid_no_capabilities_and_privileged_ports() {
        let spec = hardened(json!({}));
        assert_eq!(spec["securityContext"]["runAsUser"], DEFAULT_MCP_UID);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(
            spec["securityContext"]["sysctls"],
            json!([{"name": PORT_SYSCTL, "value": "1024"}])
        );
        let container = &spec["containers"][0]["securityContext"];
        assert_eq!(container["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(container["allowPrivilegeEscalation"], false);
    }

    #[test]
    fn what_the_template_sets_safely_is_kept() {
        let spec = hardened(json!({
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000,
                "sysctls": [{"name": PORT_SYSCTL, "value": "2048"}]},
            "containers": [{"name": "mcp", "securityContext": {"runAsUser": 1001, "readOnlyRootFilesystem": true}}],
        }));
        assert_eq!(spec["securityContext"]["runAsUser"], 1000);
        assert_eq!(spec["securityContext"]["fsGroup"], 2000);
        assert_eq!(
            spec["securityContext"]["sysctls"].as_array().unwrap().len(),
            1
        );
        let container = &spec["containers"][0]["securityContext"];
        assert_eq!(container["runAsUser"], 1001);
        assert_eq!(container["readOnlyRootFilesystem"], true);
    }

    #[test]
    fn each_way_to_act_as_the_gateway_is_refused_naming_the_field() {
        let cases = [
            (json!({"hostNetwork": true}), "hostNetwork"),
            (
                json!({"shareProcessNamespace": true}),
                "shareProcessNamespace",
            ),
            (
                json!({"securityContext": {"runAsUser": 0}}),
                "securityContext.runAsUser",
            ),
            (
                json!({"securityContext": {"runAsNonRoot": false}}),
                "securityContext.runAsNonRoot",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": PORT_SYSCTL, "value": "0"}]}}),
                "securityContext.sysctls[0]",
            ),
            (
                json!({"containers": [{"name": "mcp", "securityContext": {"runAsUser": GATEWAY_UID}}]}),
                "containers[0].securityContext.runAsUser",
            ),
            (
                json!({"containers": [{"name": "mcp", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}]}),
                "containers[0].securityContext.capabilities.add",
            ),
            (
                json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"privileged": true}}]}),
                "containers[1].securityContext.privileged",
            ),
            (
                json!({"initContainers": [{"name": "setup", "securityContext": {"allowPrivilegeEscalation": true}}]}),
                "initContainers[0].securityContext.allowPrivilegeEscalation",
            ),
            (
                json!({"containers": [{"name": "mcp", "securityContext": {"runAsGroup": GATEWAY_UID}}]}),
                "containers[0].securityContext.runAsGroup",
            ),
        ];
        for (spec, field) in cases {
            let refused = harden(&mut pod(spec.clone())).unwrap_err();
            assert_eq!(refused.field, field, "{spec}");
        }
    }
}
