//! The gate against its neighbours: which server's gateway is asking is
//! what the API server vouches for — a pod's token for the `airlock`
//! audience, and that pod's owners — never what the gateway claims. Each
//! test plays the attacker with tokens the API server itself issues.

use crate::operator::{SERVER, gated_server, operator};
use airlock_operator::approvals::gateway_identity::AUDIENCE;
use airlock_operator::crd::ApprovalRequest;
use airlock_operator::render::workload::{GATEWAY_PORT, INJECTED_LABEL, SERVER_LABEL};
use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_tests::chart::{self, SYSTEM_NAMESPACE};
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::images::MCP_PYTHON;
use airlock_tests::node::{Node, processes};
use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
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

/// The operator, a gated server in `namespace`, and the name of its pod.
async fn gated_pod(node: &Node, namespace: &str) -> anyhow::Result<String> {
    operator(node).await?;
    gated_server(node, namespace, 20).await?;
    let pod = gateway_pod(node, namespace).await?;
    pod.metadata.name.context("unnamed pod")
}

/// What a probe printed, as JSON.
fn printed(out: &str) -> anyhow::Result<Value> {
    serde_json::from_str(out.trim()).with_context(|| out.to_string())
}

/// A client acting as `user`, through the admin's right to impersonate.
async fn as_user(node: &Node, user: &str) -> anyhow::Result<kube::Client> {
    airlock_tests::cluster::client_impersonating(&node.kubeconfig(ADMIN), Some(user)).await
}

/// A client acting as `editor`, bound to the `edit` role in `namespace`
/// (what app teams usually hold there).
async fn namespace_editor(node: &Node, namespace: &str) -> anyhow::Result<kube::Client> {
    node.apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: editor, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: editor}}]
"#
    ))?;
    as_user(node, "editor").await
}

/// The gateways' API as the host reaches it: by the service's name (which
/// its certificate names), resolved to its ClusterIP, trusting the
/// operator's CA.
struct Gateways {
    url: String,
    /// The same by address, for a client that checks no certificate.
    by_address: String,
    client: reqwest::Client,
}

async fn gateways(node: &Node) -> anyhow::Result<Gateways> {
    let admin = node.client(ADMIN).await?;
    let service = Api::<Service>::namespaced(admin.clone(), SYSTEM_NAMESPACE)
        .get("airlock-gateways")
        .await?;
    let spec = service.spec.context("no spec")?;
    let port = spec
        .ports
        .and_then(|p| p.first().map(|p| p.port))
        .context("no port")?;
    let ip: std::net::IpAddr = spec.cluster_ip.context("no ClusterIP")?.parse()?;
    let ca = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin, SYSTEM_NAMESPACE)
        .get(airlock_operator::tls::CA_SECRET)
        .await?
        .data
        .and_then(|mut data| data.remove("ca.crt"))
        .context("the operator's CA has no ca.crt")?;
    let host = format!("airlock-gateways.{SYSTEM_NAMESPACE}.svc");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca.0)?)
        .resolve(&host, std::net::SocketAddr::new(ip, port as u16))
        .build()?;
    Ok(Gateways {
        url: format!("https://{host}:{port}"),
        by_address: format!("https://{ip}:{port}"),
        client,
    })
}

/// `(status, error code)` of reading `server`'s policy with `credential`.
async fn read_config(
    gateways: &Gateways,
    server: &str,
    credential: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = gateways
        .client
        .get(format!("{}/v1/config/{server}", gateways.url));
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
    let gateways = gateways(node).await?;
    let pod_a = gateway_pod(node, a).await?;
    let token_a = issued_token(node, a, Some(&pod_a), AUDIENCE).await?;
    let (server_a, server_b) = (format!("{a}/{SERVER}"), format!("{b}/{SERVER}"));

    let (status, document) = read_config(&gateways, &server_a, Some(&token_a)).await?;
    assert_eq!(status, 200, "{document}");
    let (status, refusal) = read_config(&gateways, &server_b, Some(&token_a)).await?;
    assert_eq!(
        (status, &refusal["error"]),
        (403, &json!("wrong_server")),
        "{refusal}"
    );

    // Asking for B's tool in B's name, with A's token and a real caller's.
    let caller = crate::operator::token(&installed.issuer, "ada", &["engineers"])?;
    let ask = gateways
        .client
        .post(format!("{}/v1/approvals", gateways.url))
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
        let (status, refusal) = read_config(&gateways, &server_a, credential).await?;
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
    let namespace = "gate-identity-mcp";
    let name = gated_pod(node, namespace).await?;
    let url = gateways(node).await?.by_address;
    let probe = format!(
        r#"
import glob, json, os, ssl, urllib.request, urllib.error
found = [p for p in glob.glob("/var/run/**", recursive=True) if os.path.basename(p) in ("token", "envoy.sock")]
request = urllib.request.Request("{url}/v1/config/{namespace}/{SERVER}")
try:
    # An attacker checks no certificate.
    status = urllib.request.urlopen(request, timeout=5, context=ssl._create_unverified_context()).status
except urllib.error.HTTPError as e:
    status = e.code
print(json.dumps({{"tokens": found, "config": status}}))
"#
    );
    let seen = printed(
        &node
            .exec(namespace, &name, "mcp", &["python3", "-c", &probe])
            .await?,
    )?;
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
    let namespace = "gate-port";
    let name = gated_pod(node, namespace).await?;
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
    let seen = printed(&out?)?;
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
    // The gateway pod meets the `restricted` Pod Security Standard; the
    // test's own client pod (root) shows the check is real.
    let restricted = node.kubectl(
        ADMIN,
        &[
            "label",
            "--dry-run=server",
            "--overwrite",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    )?;
    let warnings = String::from_utf8_lossy(&restricted.stderr).to_string();
    assert!(
        warnings.contains("client"),
        "no warning for the root client pod: {warnings}"
    );
    assert!(
        !warnings.contains(&name),
        "the gateway pod is not restricted: {warnings}"
    );
    // kubelet restarts the gateway, and the server is served again.
    chart::ready_server(node, namespace, SERVER).await?;
    Ok(())
}

/// `result` is the API server refusing, in a message that contains `says`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
    says: &str,
) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.message.contains(says) => Ok(()),
        other => anyhow::bail!("{what}: expected a refusal saying {says:?}, got {other:?}"),
    }
}

/// Nobody but the chain operator → Deployment controller → ReplicaSet
/// controller makes or edits what puts a pod behind a server's Service —
/// not a namespace editor, not a cluster admin — and even that chain cannot
/// make a pod that would let the MCP container take the gateway's port;
/// nor does anyone else edit the rendered objects or delete the records
/// of held calls.
pub async fn only_the_controllers_make_gateway_pods(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let ns = "gate-chain";
    gated_server(node, ns, 20).await?;
    let editor = namespace_editor(node, ns).await?;
    let controller = as_user(
        node,
        "system:serviceaccount:kube-system:replicaset-controller",
    )
    .await?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let patch_dry_run = kube::api::PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let deployments: Api<Deployment> = Api::namespaced(editor.clone(), ns);

    // `kubectl set image` on the operator's Deployment.
    let set_image = json!({"spec": {"template": {"spec": {"initContainers": [
        {"name": "airlock-gateway", "image": "attacker/envoy:latest"}]}}}});
    refused(
        "the editor setting the gateway's image",
        deployments
            .patch(
                SERVER,
                &patch_dry_run,
                &kube::api::Patch::Strategic(&set_image),
            )
            .await,
        "written by the Airlock operator only, not by editor",
    )?;
    // A Deployment, a ReplicaSet or a pod of one's own with the server's label.
    let template = json!({"metadata": {"labels": {SERVER_LABEL: SERVER}},
        "spec": {"containers": [{"name": "mcp", "image": MCP_PYTHON}]}});
    let selector = json!({"matchLabels": {SERVER_LABEL: SERVER}});
    let copycat: Deployment = serde_json::from_value(json!({"metadata": {"name": "copycat"},
        "spec": {"selector": selector, "template": template}}))?;
    refused(
        "the editor's own Deployment",
        deployments.create(&dry_run, &copycat).await,
        "written by the Airlock operator only",
    )?;
    let replica_set: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "copycat"},
        "spec": {"selector": selector, "template": template}}))?;
    refused(
        "the editor's own ReplicaSet",
        Api::<ReplicaSet>::namespaced(editor.clone(), ns)
            .create(&dry_run, &replica_set)
            .await,
        "come from its Deployment only, not from editor",
    )?;
    let pods_as_editor: Api<Pod> = Api::namespaced(editor.clone(), ns);
    let mut bare = template.clone();
    bare["metadata"]["name"] = json!("copycat");
    refused(
        "the editor's own pod",
        pods_as_editor
            .create(&dry_run, &serde_json::from_value(bare)?)
            .await,
        "come from its Deployment only, not from editor",
    )?;
    let relabel = json!({"metadata": {"labels": {SERVER_LABEL: SERVER}}});
    refused(
        "the editor labelling a pod of their own",
        pods_as_editor
            .patch("client", &patch_dry_run, &kube::api::Patch::Merge(&relabel))
            .await,
        "set when it is created and never changes",
    )?;
    // A debug container in the gateway pod, even from a cluster admin.
    let gateway = gateway_pod(node, ns).await?;
    let gateway_name = gateway.metadata.name.clone().context("unnamed pod")?;
    let debug = json!({"spec": {"ephemeralContainers": [{"name": "debug", "image": MCP_PYTHON,
        "command": ["sleep", "600"]}]}});
    refused(
        "an admin's debug container",
        Api::<Pod>::namespaced(node.client(ADMIN).await?, ns)
            .patch_ephemeral_containers(
                &gateway_name,
                &patch_dry_run,
                &kube::api::Patch::Strategic(&debug),
            )
            .await,
        "no ephemeral (debug) containers",
    )?;

    // The chain itself: a copy of the live gateway pod is accepted, and
    // each change that would free the gateway's port is refused.
    let pods_as_controller: Api<Pod> = Api::namespaced(controller, ns);
    let mut copy = serde_json::to_value(&gateway)?;
    copy["metadata"] = json!({"name": "gateway-copy", "labels": gateway.metadata.labels});
    copy.as_object_mut().map(|o| o.remove("status"));
    // Claiming injection does not make the editor a maker of a
    // template-mode server's pods, even with the operator's sidecar.
    let mut claim = copy.clone();
    claim["metadata"]["labels"][INJECTED_LABEL] = json!("true");
    refused(
        "the editor's copy claiming injection",
        pods_as_editor
            .create(&dry_run, &serde_json::from_value(claim)?)
            .await,
        "is in template mode",
    )?;
    let attempt = |change: Change| {
        let mut pod = copy.clone();
        change(&mut pod);
        let pods = pods_as_controller.clone();
        let dry_run = dry_run.clone();
        async move {
            let pod: Pod = serde_json::from_value(pod)?;
            anyhow::Ok(pods.create(&dry_run, &pod).await)
        }
    };
    attempt(|_| {})
        .await?
        .context("the controller's copy of a live gateway pod")?;
    let cases: [(&str, Change, &str); 5] = [
        (
            "the MCP container as root",
            |pod| mcp_security(pod)["runAsUser"] = json!(0),
            "container mcp must run as a non-root runAsUser",
        ),
        (
            "the MCP container as the gateway's UID",
            |pod| mcp_security(pod)["runAsUser"] = json!(101),
            "other than the gateway's (101)",
        ),
        (
            "the MCP container with NET_BIND_SERVICE",
            |pod| mcp_security(pod)["capabilities"]["add"] = json!(["NET_BIND_SERVICE"]),
            "container mcp must drop ALL capabilities",
        ),
        (
            "unprivileged ports from 0",
            |pod| {
                pod["spec"]["securityContext"]["sysctls"] =
                    json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
            },
            "the gateway's ports must stay privileged",
        ),
        (
            "the node's network",
            |pod| {
                // The API server refuses namespaced sysctls on the node's network anyway.
                pod["spec"]["securityContext"]["sysctls"] = json!([]);
                pod["spec"]["hostNetwork"] = json!(true);
            },
            "shares no namespace with its node",
        ),
    ];
    for (what, change, says) in cases {
        refused(what, attempt(change).await?, says)?;
    }

    // What else the operator renders, and the evidence of held calls.
    let delete_dry_run = kube::api::DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    let rendered = format!("{SERVER}-airlock-gateway");
    let says = "of an McpServer are the Airlock operator's: editor may not";
    refused(
        "the editor editing the gateway's bootstrap",
        Api::<ConfigMap>::namespaced(editor.clone(), ns)
            .patch(
                &rendered,
                &patch_dry_run,
                &kube::api::Patch::Merge(&json!({"data": {"envoy.json": "{}"}})),
            )
            .await,
        says,
    )?;
    refused(
        "the editor pointing the Service at the MCP container",
        Api::<Service>::namespaced(editor.clone(), ns)
            .patch(
                SERVER,
                &patch_dry_run,
                &kube::api::Patch::Merge(&json!({"spec": {"ports": [
                    {"name": "mcp", "port": 80, "targetPort": 8080}]}})),
            )
            .await,
        says,
    )?;
    refused(
        "the editor deleting the NetworkPolicy",
        Api::<NetworkPolicy>::namespaced(editor.clone(), ns)
            .delete(&rendered, &delete_dry_run)
            .await,
        says,
    )?;
    let evidence = crate::operator::as_operator(node, ns).await?;
    crate::operator::seed_request(&evidence, ns, "evidence", "2099-01-01T00:00:00Z").await?;
    refused(
        "an admin deleting an ApprovalRequest",
        Api::<ApprovalRequest>::namespaced(node.client(ADMIN).await?, ns)
            .delete("evidence", &delete_dry_run)
            .await,
        "are evidence: the Airlock operator deletes them after the retention",
    )?;
    Ok(())
}

/// A change to a pod, as JSON.
type Change = fn(&mut Value);

/// The security context of a pod's `mcp` container (the pod's own if it
/// has no such container, so that a change still lands somewhere visible).
fn mcp_security(pod: &mut Value) -> &mut Value {
    let index = pod["spec"]["containers"]
        .as_array()
        .and_then(|containers| containers.iter().position(|c| c["name"] == "mcp"));
    match index {
        Some(i) => &mut pod["spec"]["containers"][i]["securityContext"],
        None => &mut pod["spec"]["securityContext"],
    }
}

/// A platform team's baseline, kept in the operator's namespace, governs
/// every server of the namespaces it selects by label: a server with no
/// policy of its own holds `deploy_*`, and its namespace's editor can
/// neither delete the baseline, nor relabel the server or the namespace
/// out of it.
pub async fn a_baseline_governs_what_its_namespaces_cannot_escape(
    node: &Node,
) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "gate-baseline";
    node.namespace(ns).await?;
    let labelled = node.kubectl(ADMIN, &["label", "namespace", ns, "tier=prod"])?;
    anyhow::ensure!(labelled.status.success(), "{labelled:?}");
    node.apply(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalPolicy
metadata: {{name: prod-deploys, namespace: {SYSTEM_NAMESPACE}}}
spec:
  namespaces: {{matchLabels: {{tier: prod}}}}
  defaultAction: Allow
  rules:
  - name: deploys-need-a-lead
    match: {{tools: ["deploy_*"]}}
    action: RequireApproval
    approval: {{approvers: {{groups: [leads]}}, timeout: 10m}}
"#
    ))?;
    // No policy of the namespace's own.
    crate::operator::serve_gated(node, ns, 20, "").await?;
    let server = format!("{ns}/{SERVER}");
    let editor = namespace_editor(node, ns).await?;

    // The editor relabels the server, and tries the namespace and the baseline.
    let servers: Api<airlock_operator::crd::McpServer> = Api::namespaced(editor.clone(), ns);
    servers
        .patch(
            SERVER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                &json!({"metadata": {"labels": {"team": "elsewhere", "tier": null}}}),
            ),
        )
        .await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(editor.clone());
    let relabel = namespaces
        .patch(
            ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"metadata": {"labels": {"tier": null}}})),
        )
        .await;
    assert!(
        matches!(&relabel, Err(kube::Error::Api(s)) if s.code == 403),
        "the editor relabelled the namespace: {relabel:?}"
    );
    // The baseline's status counts the server, wherever it is.
    let baselines: Api<airlock_operator::crd::ApprovalPolicy> =
        Api::namespaced(node.client(ADMIN).await?, SYSTEM_NAMESPACE);
    airlock_tests::wait_for(
        "the baseline to list the server",
        Duration::from_secs(30),
        || {
            let baselines = baselines.clone();
            let server = server.clone();
            async move {
                let status = baselines
                    .get("prod-deploys")
                    .await?
                    .status
                    .unwrap_or_default();
                Ok(status.matched_servers.contains(&server).then_some(()))
            }
        },
    )
    .await?;
    let policies: Api<airlock_operator::crd::ApprovalPolicy> =
        Api::namespaced(editor, SYSTEM_NAMESPACE);
    let deleted = policies
        .delete("prod-deploys", &kube::api::DeleteParams::default())
        .await;
    assert!(
        matches!(&deleted, Err(kube::Error::Api(s)) if s.code == 403),
        "the editor deleted the baseline: {deleted:?}"
    );

    // Still governed: the gateway is served the baseline, reading status
    // passes, a deploy is held until a lead decides.
    let pod = gateway_pod(node, ns).await?;
    let token = issued_token(node, ns, Some(&pod), AUDIENCE).await?;
    let (status, document) = read_config(&gateways(node).await?, &server, Some(&token)).await?;
    assert_eq!(status, 200, "{document}");
    assert_eq!(
        document["policies"][0]["name"],
        format!("{SYSTEM_NAMESPACE}/prod-deploys"),
        "{document}"
    );
    let ada = crate::operator::token(&installed.issuer, "ada", &["engineers"])?;
    let lea = crate::operator::people_token(&installed.issuer, "lea", &["leads"])?;
    let status = crate::operator::call(node, ns, &ada, "get_status", json!({})).await?;
    assert_eq!(status["isError"], false, "{status}");
    let held = crate::operator::call(
        node,
        ns,
        &ada,
        "deploy_model",
        json!({"model": "fraud:v9", "environment": "prod"}),
    );
    let deny = async {
        let id = installed
            .people
            .pending(&lea, &server, "deploy_model")
            .await?;
        let decided = installed
            .people
            .decide(&lea, &id, "deny", "not today")
            .await?;
        anyhow::ensure!(decided.status().is_success(), "{}", decided.text().await?);
        Ok(())
    };
    let (answer, denied) = tokio::join!(held, deny);
    denied?;
    let answer = answer?;
    assert_eq!(answer["isError"], true, "{answer}");
    Ok(())
}

/// NetworkPolicies add up, so in a namespace the platform marks
/// `mcp.airlock.dev/network-guard`, a namespace editor's own NetworkPolicy
/// that could select gateway pods admits the gateway's ports only — or
/// keeps gateway pods out of its selector; the server's `NetworkGuarded`
/// condition says whether its namespace is marked.
pub async fn a_namespace_editor_cannot_open_the_mcp_port_with_a_network_policy(
    node: &Node,
) -> anyhow::Result<()> {
    operator(node).await?;
    let ns = "gate-netguard";
    gated_server(node, ns, 20).await?;
    let servers: Api<airlock_operator::crd::McpServer> =
        Api::namespaced(node.client(ADMIN).await?, ns);
    let guarded = |want: &'static str| {
        let servers = servers.clone();
        async move {
            let what = format!("NetworkGuarded={want}");
            airlock_tests::wait_for(&what, Duration::from_secs(60), move || {
                let servers = servers.clone();
                async move {
                    let status = servers.get(SERVER).await?.status.unwrap_or_default();
                    Ok(status
                        .conditions
                        .into_iter()
                        .find(|c| c.type_ == "NetworkGuarded" && c.status == want)
                        .map(|c| c.message))
                }
            })
            .await
        }
    };
    let unmarked = guarded("False").await?;
    anyhow::ensure!(unmarked.contains("network-guard=true"), "{unmarked}");
    let marked = node.kubectl(
        ADMIN,
        &[
            "label",
            "namespace",
            ns,
            "mcp.airlock.dev/network-guard=true",
        ],
    )?;
    anyhow::ensure!(marked.status.success(), "{marked:?}");
    guarded("True").await?;

    let editor = namespace_editor(node, ns).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(editor, ns);
    let policy = |name: &str, selector: Value, ports: Value| -> anyhow::Result<NetworkPolicy> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": ports}]},
        }))?)
    };
    let mcp_port = json!([{"port": 8080, "protocol": "TCP"}]);
    let create = PostParams::default();
    refused(
        "opening the MCP port of every pod",
        policies
            .create(&create, &policy("open-all", json!({}), mcp_port.clone())?)
            .await,
        "may select MCP gateway pods",
    )?;
    refused(
        "opening every port of every pod",
        policies
            .create(&create, &policy("open-every-port", json!({}), json!([]))?)
            .await,
        "may select MCP gateway pods",
    )?;
    // Allowed: gateway pods left out, or the gateway's ports only.
    let others = json!({"matchExpressions": [
        {"key": SERVER_LABEL, "operator": "DoesNotExist"}]});
    policies
        .create(&create, &policy("others", others, mcp_port)?)
        .await?;
    policies
        .create(
            &create,
            &policy(
                "gateway-only",
                json!({}),
                json!([{"port": GATEWAY_PORT, "protocol": "TCP"}]),
            )?,
        )
        .await?;
    Ok(())
}
