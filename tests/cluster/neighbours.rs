//! The gate against its neighbours: which server's gateway is asking is
//! what the API server vouches for — a pod's token for the `airlock`
//! audience, and that pod's owners — never what the gateway claims. Each
//! test plays the attacker with tokens the API server itself issues.

use crate::operator::{SERVER, gated_server, operator};
use airlock_operator::approvals::gateway_identity::AUDIENCE;
use airlock_operator::render::workload::{GATEWAY_PORT, SERVER_LABEL};
use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_tests::chart::{self, SYSTEM_NAMESPACE};
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::{Node, processes};
use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;

/// A token the API server issues for `namespace`'s default ServiceAccount,
/// bound to `pod` when given, for `audience`.
async fn issued_token(
    node: &Node,
    namespace: &str,
    pod: Option<&Pod>,
    audience: &str,
) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(node.client(ADMIN).await?, namespace);
    let mut spec = json!({"audiences": [audience], "expirationSeconds": 600});
    if let Some(pod) = pod {
        spec["boundObjectRef"] = json!({"apiVersion": "v1", "kind": "Pod",
            "name": pod.metadata.name, "uid": pod.metadata.uid});
    }
    let request: TokenRequest = serde_json::from_value(json!({"spec": spec}))?;
    let issued = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await?;
    issued
        .status
        .and_then(|s| s.token)
        .context("no token issued")
}

/// The one running pod of `namespace`'s gated server.
async fn gateway_pod(node: &Node, namespace: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{SERVER_LABEL}={SERVER}")))
        .await?;
    list.items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .context("no pod of the server")
}

/// The gateways' API, as the host reaches its ClusterIP.
async fn gateways_url(node: &Node) -> anyhow::Result<String> {
    let service = Api::<Service>::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE)
        .get("airlock-gateways")
        .await?;
    let spec = service.spec.context("no spec")?;
    let port = spec
        .ports
        .and_then(|p| p.first().map(|p| p.port))
        .context("no port")?;
    Ok(format!(
        "http://{}:{port}",
        spec.cluster_ip.context("no ClusterIP")?
    ))
}

/// `(status, error code)` of reading `server`'s policy with `credential`.
async fn read_config(
    url: &str,
    server: &str,
    credential: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = reqwest::Client::new().get(format!("{url}/v1/config/{server}"));
    if let Some(credential) = credential {
        request = request.header(GATEWAY_CREDENTIAL_HEADER, credential);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Gateway A's own token opens A's policy and nothing of B's; the pod's
/// token of another audience, a pod no McpServer runs, or no token at all
/// are refused, each saying why.
pub async fn a_gateway_speaks_only_for_its_own_server(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let (a, b) = ("gate-identity-a", "gate-identity-b");
    gated_server(node, a, 20).await?;
    gated_server(node, b, 20).await?;
    let url = gateways_url(node).await?;
    let pod_a = gateway_pod(node, a).await?;
    let token_a = issued_token(node, a, Some(&pod_a), AUDIENCE).await?;
    let (server_a, server_b) = (format!("{a}/{SERVER}"), format!("{b}/{SERVER}"));

    let (status, document) = read_config(&url, &server_a, Some(&token_a)).await?;
    assert_eq!(status, 200, "{document}");
    let (status, refusal) = read_config(&url, &server_b, Some(&token_a)).await?;
    assert_eq!(
        (status, &refusal["error"]),
        (403, &json!("wrong_server")),
        "{refusal}"
    );

    // Asking for B's tool in B's name, with A's token and a real caller's.
    let caller = crate::operator::token(&installed.issuer, "ada", &["engineers"])?;
    let ask = reqwest::Client::new()
        .post(format!("{url}/v1/approvals"))
        .header(GATEWAY_CREDENTIAL_HEADER, &token_a)
        .bearer_auth(&caller)
        .json(&json!({"server": server_b, "method": "tools/call",
            "params": {"name": "deploy_model", "arguments": {"environment": "prod"}}}))
        .send()
        .await?;
    assert_eq!(ask.status().as_u16(), 403);

    let default_audience = issued_token(
        node,
        a,
        Some(&pod_a),
        "https://kubernetes.default.svc.cluster.local",
    )
    .await?;
    let unbound = issued_token(node, a, None, AUDIENCE).await?;
    let client_pod = node.ready_pod(a, "client").await?;
    let not_a_gateway = issued_token(node, a, Some(&client_pod), AUDIENCE).await?;
    for (what, credential, says) in [
        (
            "the pod's token for the API server",
            Some(default_audience.as_str()),
            "not accepted",
        ),
        (
            "a token bound to no pod",
            Some(unbound.as_str()),
            "not a ServiceAccount token bound to a pod",
        ),
        (
            "a pod no McpServer runs",
            Some(not_a_gateway.as_str()),
            "not run by a ReplicaSet",
        ),
        ("no credential", None, "no gateway credential"),
    ] {
        let (status, refusal) = read_config(&url, &server_a, credential).await?;
        assert_eq!(status, 401, "{what}: {refusal}");
        let message = refusal["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    Ok(())
}

/// From inside the MCP container: no `airlock`-audience token, no API
/// server token, no Envoy admin socket, and the approval service refuses
/// what it can send.
pub async fn the_mcp_container_holds_no_gateway_credential(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let namespace = "gate-identity-mcp";
    gated_server(node, namespace, 20).await?;
    let pod = gateway_pod(node, namespace).await?;
    let name = pod.metadata.name.clone().context("unnamed pod")?;
    let url = gateways_url(node).await?;
    let probe = format!(
        r#"
import glob, json, os, urllib.request, urllib.error
found = [p for p in glob.glob("/var/run/**", recursive=True) if os.path.basename(p) in ("token", "envoy.sock")]
request = urllib.request.Request("{url}/v1/config/{namespace}/{SERVER}")
try:
    status = urllib.request.urlopen(request, timeout=5).status
except urllib.error.HTTPError as e:
    status = e.code
print(json.dumps({{"tokens": found, "config": status}}))
"#
    );
    let out = node
        .exec(namespace, &name, "mcp", &["python3", "-c", &probe])
        .await?;
    let seen: Value = serde_json::from_str(out.trim()).with_context(|| out.clone())?;
    assert_eq!(
        seen["tokens"],
        json!([]),
        "the MCP container sees a token: {seen}"
    );
    assert_eq!(seen["config"], 401, "{seen}");
    Ok(())
}

/// The MCP container shares Envoy's network namespace but cannot bind
/// Envoy's port — not while Envoy listens, and not in the moments after
/// Envoy is killed, before kubelet restarts it.
pub async fn the_mcp_container_cannot_take_the_gateways_port(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let namespace = "gate-port";
    gated_server(node, namespace, 20).await?;
    let pod = gateway_pod(node, namespace).await?;
    let name = pod.metadata.name.clone().context("unnamed pod")?;
    // For a few seconds: try to bind the gateway's port, and note whether
    // anything was listening on it at that moment.
    let attempts = format!(
        r#"
import errno, json, socket, time
seen = {{"refused_binds": 0, "bound": 0, "port_free": 0, "errors": []}}
end = time.time() + 8
while time.time() < end:
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", {GATEWAY_PORT}))
        seen["bound"] += 1
    except OSError as e:
        if e.errno == errno.EACCES:
            seen["refused_binds"] += 1
        elif e.strerror not in seen["errors"]:
            seen["errors"].append(e.strerror)
    finally:
        s.close()
    try:
        socket.create_connection(("127.0.0.1", {GATEWAY_PORT}), timeout=0.2).close()
    except OSError:
        seen["port_free"] += 1
    time.sleep(0.01)
with open("/proc/self/status") as status:
    seen["capabilities"] = [l.split()[1] for l in status if l.startswith(("CapEff", "CapPrm"))]
print(json.dumps(seen))
"#
    );
    let envoy = processes::of_pod(&name, "/usr/local/bin/envoy")?;
    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        processes::signal(envoy, "KILL")
    };
    let command = ["python3", "-c", &attempts];
    let (out, killed) = tokio::join!(node.exec(namespace, &name, "mcp", &command), killer);
    killed?;
    let out = out?;
    let seen: Value = serde_json::from_str(out.trim()).with_context(|| out.clone())?;
    assert_eq!(
        seen["bound"], 0,
        "the MCP container bound the gateway's port: {seen}"
    );
    assert_eq!(seen["errors"], json!([]), "{seen}");
    assert!(
        seen["port_free"].as_u64() > Some(0),
        "Envoy never stopped listening while the MCP container tried: the test proves nothing ({seen})"
    );
    assert_eq!(
        seen["capabilities"],
        json!(["0000000000000000", "0000000000000000"]),
        "{seen}"
    );
    // Without the pod's sysctl, containerd would have let any UID bind it.
    let sysctl = [
        "python3",
        "-c",
        "print(open('/proc/sys/net/ipv4/ip_unprivileged_port_start').read())",
    ];
    let ungated = node.exec(namespace, "client", "client", &sysctl).await?;
    let gated = node.exec(namespace, &name, "mcp", &sysctl).await?;
    assert_eq!((ungated.trim(), gated.trim()), ("0", "1024"));
    println!("gateway port: {seen}");
    // kubelet restarts the gateway, and the server is served again.
    chart::ready_server(node, namespace, SERVER).await?;
    Ok(())
}
