//! The operator on the real node, installed from the rendered chart: an
//! McpServer and an ApprovalPolicy applied with kubectl become a gated MCP
//! server that the official Python SDK client reaches through its Service by
//! DNS name, with development-issuer tokens. The operator is installed once
//! for the binary; each test gates a server in a namespace of its own.

use airlock_operator::crd::{ApprovalPolicy, ApprovalRequest, McpServer, Phase};
use airlock_operator::dev_issuer::TokenRequest;
use airlock_operator::render::workload::GATEWAY_PORT;
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::issuer::{AUDIENCE, Issuer, PEOPLE_AUDIENCE, TENANT};
use airlock_tests::node::Node;
use airlock_tests::node::host::NODE_IP;
use airlock_tests::node::images::MCP_PYTHON;
use airlock_tests::people::People;
use airlock_tests::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub(crate) const SERVER: &str = "models";

/// The installed operator: where its tokens come from and where people decide.
pub(crate) struct Installed {
    pub(crate) issuer: Issuer,
    pub(crate) people: People,
}

static INSTALLED: OnceCell<Installed> = OnceCell::const_new();

/// The operator from the chart, Ready (installed by the first test that needs it).
pub(crate) async fn operator(node: &Node) -> anyhow::Result<&'static Installed> {
    INSTALLED
        .get_or_try_init(|| async {
            // One tenant's keys sign both the MCP tokens and the kubectl
            // tokens the API server accepts, as in Entra.
            let issuer = Issuer::serve_on(node.cluster().guard().issuer().clone(), NODE_IP).await?;
            let installed =
                chart::install(node, TENANT, AUDIENCE, PEOPLE_AUDIENCE, &issuer.jwks_url).await?;
            // The leads of these tests hold the verb `approve` everywhere;
            // the approvers tests grant (or withhold) it per person.
            node.apply(
                r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: test-approvers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: airlock-approver}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: lea@contoso.com}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: max@contoso.com}
"#,
            )?;
            Ok(Installed {
                issuer,
                people: People::new(&installed.people_url),
            })
        })
        .await
}

/// `user`'s token for calling MCP servers.
pub(crate) fn token(issuer: &Issuer, user: &str, groups: &[&str]) -> anyhow::Result<String> {
    minted(issuer, user, groups, AUDIENCE)
}

/// `user`'s token for the people's API (deciding, asking, answering).
pub(crate) fn people_token(issuer: &Issuer, user: &str, groups: &[&str]) -> anyhow::Result<String> {
    minted(issuer, user, groups, PEOPLE_AUDIENCE)
}

fn minted(issuer: &Issuer, user: &str, groups: &[&str], audience: &str) -> anyhow::Result<String> {
    let mut request = TokenRequest::user(
        &format!("oid-{user}"),
        &format!("{user}@contoso.com"),
        audience,
    );
    request.groups = groups.iter().map(|g| g.to_string()).collect();
    Ok(issuer.issuer.mint(&request)?)
}

/// The policy every test starts from: handshakes and `get_status` pass,
/// production deploys need a lead, anything else is denied.
pub(crate) fn policy(namespace: &str, extra_rules: &str) -> String {
    format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalPolicy
metadata: {{name: models, namespace: {namespace}}}
spec:
  servers: {{matchLabels: {{team: ml}}}}
  defaultAction: Deny
  rules:
  - name: handshake
    match: {{methods: ["initialize", "ping", "notifications/*", "tools/list"]}}
    action: Allow
  - name: read-status
    match: {{tools: ["get_status"]}}
    action: Allow
  - name: deploy-to-prod
    match:
      tools: [deploy_model]
      arguments: [{{pointer: /environment, in: [prod]}}]
    principals: {{groups: [engineers]}}
    action: RequireApproval
    approval: {{approvers: {{groups: [leads]}}, timeout: 10m}}
  - name: deploy-to-canary
    match:
      tools: [deploy_model]
      arguments: [{{pointer: /environment, in: [canary]}}]
    principals: {{groups: [engineers]}}
    action: RequireApproval
    approval: {{approvers: {{groups: [leads]}}, timeout: 3s}}
{extra_rules}"#
    )
}

/// A gated server in `namespace` (the Python SDK's server, bound to 0.0.0.0
/// on purpose) and a `client` pod to call it from; returns when both are
/// Ready.
pub(crate) async fn gated_server(
    node: &Node,
    namespace: &str,
    max_hold: u32,
) -> anyhow::Result<()> {
    node.namespace(namespace).await?;
    serve_gated(node, namespace, max_hold, &policy(namespace, "")).await
}

/// The gated server and its client in `namespace` (which exists), with
/// `policy` — manifests, perhaps none — applied alongside.
pub(crate) async fn serve_gated(
    node: &Node,
    namespace: &str,
    max_hold: u32,
    policy: &str,
) -> anyhow::Result<()> {
    node.apply(&format!(
        r#"{policy}
---
apiVersion: mcp.airlock.dev/v1alpha1
kind: McpServer
metadata: {{name: {SERVER}, namespace: {namespace}, labels: {{team: ml}}}}
spec:
  upstreamPort: 8080
  auth: {{tenants: ["{TENANT}"], audiences: ["{AUDIENCE}"]}}
  gateway: {{maxHoldSeconds: {max_hold}}}
  template:
    spec:
      containers:
      - name: mcp
        image: {MCP_PYTHON}
        imagePullPolicy: IfNotPresent
---
{}"#,
        client_pod(namespace)
    ))?;
    chart::ready_server(node, namespace, SERVER).await?;
    node.ready_pod(namespace, "client").await?;
    Ok(())
}

/// ada's production deploy to `namespace`'s server, held and approved by
/// lea through the people's API: the sidecar asks and long-polls the service.
pub(crate) async fn held_call_approved(
    node: &Node,
    namespace: &str,
    model: &str,
) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = people_token(&installed.issuer, "lea", &["leads"])?;
    let held = call(
        node,
        namespace,
        &ada,
        "deploy_model",
        json!({"model": model, "environment": "prod"}),
    );
    let decide = async {
        let id = installed
            .people
            .pending(&lea, &format!("{namespace}/{SERVER}"), "deploy_model")
            .await?;
        let decided = installed.people.decide(&lea, &id, "approve", "ok").await?;
        anyhow::ensure!(decided.status().is_success(), "{}", decided.text().await?);
        Ok(())
    };
    let (answer, decided) = tokio::join!(held, decide);
    decided?;
    let answer = answer?;
    anyhow::ensure!(
        answer["text"] == format!("deployed {model} to prod"),
        "{answer}"
    );
    Ok(())
}

/// The `client` pod [`call`] runs the Python SDK client in.
pub(crate) fn client_pod(namespace: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {namespace}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {MCP_PYTHON}
    imagePullPolicy: IfNotPresent
    command: ["/usr/local/bin/python3", "-c", "import time; time.sleep(10**6)"]
"#
    )
}

/// The Python SDK client in `namespace`'s `client` pod, calling the server
/// through its Service by DNS name.
pub(crate) async fn call(
    node: &Node,
    namespace: &str,
    token: &str,
    tool: &str,
    arguments: Value,
) -> anyhow::Result<Value> {
    call_server(node, namespace, SERVER, token, tool, arguments).await
}

/// [`call`] to the server `server` of `namespace`.
pub(crate) async fn call_server(
    node: &Node,
    namespace: &str,
    server: &str,
    token: &str,
    tool: &str,
    arguments: Value,
) -> anyhow::Result<Value> {
    let url = format!("http://{server}.{namespace}.svc.cluster.local/mcp");
    let arguments = arguments.to_string();
    let out = node
        .exec(
            namespace,
            "client",
            "client",
            &[
                "python3",
                "/app/mcp_client.py",
                "--url",
                &url,
                "--token",
                token,
                "call",
                tool,
                &arguments,
            ],
        )
        .await?;
    Ok(serde_json::from_str(out.trim())?)
}

pub async fn an_applied_policy_allows_and_denies(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "gate-basic";
    gated_server(node, ns, 20).await?;
    let servers: Api<McpServer> = Api::namespaced(node.client(ADMIN).await?, ns);
    let status = servers.get(SERVER).await?.status.unwrap_or_default();
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://{SERVER}.{ns}.svc/mcp").as_str())
    );
    assert_eq!(status.policies.len(), 1, "{status:?}");

    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let allowed = call(node, ns, &ada, "get_status", json!({})).await?;
    assert_eq!(allowed["isError"], false, "{allowed}");
    assert_eq!(allowed["text"], "ok");
    let denied = call(node, ns, &ada, "echo", json!({"message": "hi"})).await?;
    assert_eq!(denied["isError"], true, "{denied}");
    assert_eq!(denied["meta"]["dev.airlock/decision"], "Deny", "{denied}");
    assert_eq!(
        denied["meta"]["dev.airlock/rule"],
        format!("{ns}/models/defaultAction")
    );
    Ok(())
}

/// A held deploy appears as an ApprovalRequest in the server's namespace; a
/// lead approves it through the people's API and the call completes. A
/// second one is denied and refused; a third, nobody decides, expires and is
/// refused (its request `Expired`).
pub async fn a_held_call_completes_once_a_lead_approves(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "gate-hold";
    gated_server(node, ns, 40).await?;
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = people_token(&installed.issuer, "lea", &["leads"])?;

    for (verdict, model) in [("approve", "fraud:v7"), ("deny", "fraud:v8")] {
        // The client blocks while held: the lead decides meanwhile.
        let held = call(
            node,
            ns,
            &ada,
            "deploy_model",
            json!({"model": model, "environment": "prod"}),
        );
        let decide = async {
            let id = installed
                .people
                .pending(&lea, &format!("{ns}/{SERVER}"), "deploy_model")
                .await?;
            // Kept in the server's namespace, where the team's approvers have rights.
            let request = node.kubectl(
                ADMIN,
                &["get", "approvalrequests", "-n", ns, &id, "-o", "json"],
            )?;
            assert!(
                request.status.success(),
                "{}",
                String::from_utf8_lossy(&request.stderr)
            );
            let request: Value = serde_json::from_slice(&request.stdout)?;
            assert_eq!(request["spec"]["server"], format!("{ns}/{SERVER}"));
            assert_eq!(request["status"]["approvalsNeeded"], 1, "{request}");
            let decided = installed
                .people
                .decide(&lea, &id, verdict, "checked")
                .await?;
            anyhow::ensure!(decided.status().is_success(), "{}", decided.text().await?);
            Ok(())
        };
        let (answer, decided) = tokio::join!(held, decide);
        decided?;
        let answer = answer?;
        if verdict == "approve" {
            assert_eq!(answer["isError"], false, "{answer}");
            assert_eq!(answer["text"], format!("deployed {model} to prod"));
        } else {
            assert_eq!(answer["isError"], true, "{answer}");
            assert!(
                answer["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("was denied"),
                "{answer}"
            );
        }
    }

    // Each request's life is told in Events on it.
    let reasons = node.kubectl(
        ADMIN,
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.kind=ApprovalRequest",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    )?;
    let reasons = String::from_utf8_lossy(&reasons.stdout).to_string();
    for reason in ["Pending", "Approved", "Executed", "Denied"] {
        assert!(reasons.contains(reason), "no {reason} event: {reasons}");
    }

    let expired = call(
        node,
        ns,
        &ada,
        "deploy_model",
        json!({"model": "fraud:v9", "environment": "canary"}),
    )
    .await?;
    assert_eq!(expired["isError"], true, "{expired}");
    // Refused because it expired, not because the hold ran out.
    assert!(
        expired["text"]
            .as_str()
            .unwrap_or_default()
            .contains("expired before anyone approved it"),
        "{expired}"
    );
    let phases = node.kubectl(
        ADMIN,
        &[
            "get",
            "approvalrequests",
            "-n",
            ns,
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    )?;
    let phases = String::from_utf8_lossy(&phases.stdout).to_string();
    assert!(phases.contains("Expired"), "{phases}");

    // A decision arriving after the deadline never counts: the service
    // judges it by its own clock, and the request stays Expired.
    let requests: Api<ApprovalRequest> = Api::namespaced(node.client(ADMIN).await?, ns);
    let expired_id = requests
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|r| r.status.as_ref().map(|s| s.phase) == Some(Phase::Expired))
        .and_then(|r| r.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("no Expired request in {ns}"))?;
    let late = installed
        .people
        .decide(&lea, &expired_id, "approve", "too late")
        .await?;
    let status = late.status();
    let body = late.text().await?;
    assert_eq!(status.as_u16(), 409, "{body}");
    assert!(body.contains("expired"), "{body}");
    let still = requests.get(&expired_id).await?;
    assert_eq!(still.status.map(|s| s.phase), Some(Phase::Expired));

    // Nor does anyone but the operator move the record's phase: not even
    // the cluster's admin, past RBAC, gets by the admission policy.
    let forged = node.kubectl(
        ADMIN,
        &[
            "patch",
            "approvalrequest",
            "-n",
            ns,
            &expired_id,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Approved","approvalsNeeded":0}}"#,
        ],
    )?;
    let refusal = String::from_utf8_lossy(&forged.stderr).to_string();
    assert!(!forged.status.success(), "an admin approved by hand");
    assert!(
        refusal.contains("this request is Expired and can no longer change"),
        "{refusal}"
    );
    let still = requests.get(&expired_id).await?;
    assert_eq!(still.status.map(|s| s.phase), Some(Phase::Expired));
    Ok(())
}

/// The MCP server binds 0.0.0.0 on purpose: from another pod its port is
/// closed on the gated pod (the rendered NetworkPolicy admits only the
/// gateway), while the same image in a pod no policy selects answers on it —
/// so the policy, not the server, does the refusing.
pub async fn only_the_gateway_port_is_reachable(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let ns = "gate-netpol";
    gated_server(node, ns, 20).await?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ungated, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: mcp
    image: {MCP_PYTHON}
    imagePullPolicy: IfNotPresent
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    ))?;
    let ungated = node.ready_pod(ns, "ungated").await?;
    let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, ns);
    let gated = pods
        .list(&ListParams::default().labels(&format!("mcp.airlock.dev/server={SERVER}")))
        .await?;
    let gated = gated
        .items
        .first()
        .ok_or_else(|| anyhow::anyhow!("no pod of the server"))?;
    let ip = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    };
    let connects = |address: String, port: u16| async move {
        let probe = format!(
            "import socket; socket.create_connection(('{address}', {port}), timeout=3); print('open')"
        );
        node.exec(ns, "client", "client", &["python3", "-c", &probe])
            .await
            .is_ok()
    };
    assert!(
        connects(ip(&ungated), 8080).await,
        "the ungated server's port is closed: the test proves nothing"
    );
    assert!(
        connects(ip(gated), GATEWAY_PORT).await,
        "the gateway's port is closed"
    );
    assert!(
        !connects(ip(gated), 8080).await,
        "the gated server's own port is reachable from another pod"
    );
    Ok(())
}

/// A policy edited with `kubectl apply` changes a live sidecar's decision
/// within seconds; the pod is not restarted.
pub async fn a_policy_edit_reaches_the_live_sidecar(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "gate-edit";
    gated_server(node, ns, 20).await?;
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let denied = call(node, ns, &ada, "echo", json!({"message": "hi"})).await?;
    assert_eq!(denied["isError"], true, "{denied}");
    let pods: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, ns);
    let selector = ListParams::default().labels(&format!("mcp.airlock.dev/server={SERVER}"));
    let before: Vec<_> = pods
        .list(&selector)
        .await?
        .items
        .iter()
        .map(|p| p.metadata.uid.clone())
        .collect();

    let edited = Instant::now();
    node.apply(&policy(
        ns,
        "  - name: echo\n    match: {tools: [echo]}\n    action: Allow\n",
    ))?;
    let allowed = wait_for(
        "the edit to reach the sidecar",
        Duration::from_secs(60),
        || async {
            let answer = call(node, ns, &ada, "echo", json!({"message": "hi"})).await;
            Ok(answer.ok().filter(|a| a["isError"] == false))
        },
    )
    .await?;
    let took = edited.elapsed();
    eprintln!(
        "policy edit → live sidecar decision: {took:.1?} (including one Python client run per try)"
    );
    assert_eq!(allowed["text"], "hi");
    let after: Vec<_> = pods
        .list(&selector)
        .await?
        .items
        .iter()
        .map(|p| p.metadata.uid.clone())
        .collect();
    assert_eq!(before, after, "the pod was replaced");
    for pod in pods.list(&selector).await?.items {
        let restarts: i32 = pod
            .status
            .and_then(|s| s.init_container_statuses)
            .unwrap_or_default()
            .iter()
            .map(|c| c.restart_count)
            .sum();
        assert_eq!(restarts, 0, "the sidecar restarted");
    }
    // The server's status follows the policy through a watch, not a poll
    // (the controllers look again unprompted only every 5 minutes).
    let policies: Api<ApprovalPolicy> = Api::namespaced(node.client(ADMIN).await?, ns);
    let servers: Api<McpServer> = Api::namespaced(node.client(ADMIN).await?, ns);
    let reported = wait_for(
        "the server's status to report the edited policy",
        Duration::from_secs(30),
        || async {
            let compiled = policies
                .get("models")
                .await?
                .status
                .and_then(|s| s.compiled_version);
            let in_force = servers
                .get(SERVER)
                .await?
                .status
                .and_then(|s| s.policies.first().map(|p| p.version.clone()));
            Ok((compiled.is_some() && compiled == in_force).then_some(()))
        },
    );
    reported.await?;
    eprintln!("policy edit → server status: {:.1?}", edited.elapsed());
    Ok(())
}

/// A request decided longer ago than the retention (30 days by default) is
/// deleted by the operator; one still waiting is not.
pub async fn decided_requests_are_deleted_after_the_retention(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let ns = "gate-retention";
    node.namespace(ns).await?;
    let as_operator = as_operator(node, ns).await?;
    for (name, expires) in [
        ("ar-old", "2026-01-01T01:00:00Z"),
        ("ar-waiting", "2099-01-01T00:00:00Z"),
    ] {
        seed_request(&as_operator, ns, name, expires).await?;
    }
    // The operator marks ar-old Expired as soon as it sees it (its expiry
    // is long past), and then deletes it: it is older than the retention.
    let requests: Api<airlock_operator::crd::ApprovalRequest> =
        Api::namespaced(node.client(ADMIN).await?, ns);
    wait_for(
        "the old request to be deleted",
        Duration::from_secs(180),
        || {
            let requests = requests.clone();
            async move { Ok(requests.get_opt("ar-old").await?.is_none().then_some(())) }
        },
    )
    .await?;
    assert!(
        requests.get_opt("ar-waiting").await?.is_some(),
        "a waiting request was deleted"
    );
    Ok(())
}

/// ApprovalRequests of `namespace` as the operator writes them: only the
/// operator may (the chart's admission policy), so tests that need one
/// impersonate its ServiceAccount.
pub(crate) async fn as_operator(
    node: &Node,
    namespace: &str,
) -> anyhow::Result<Api<ApprovalRequest>> {
    let identity = format!(
        "system:serviceaccount:{}:airlock-operator",
        chart::SYSTEM_NAMESPACE
    );
    let client =
        airlock_tests::cluster::client_impersonating(&node.kubeconfig(ADMIN), Some(&identity))
            .await?;
    Ok(Api::namespaced(client, namespace))
}

/// A request for `deploy_model` on the test server, waiting until `expires`.
pub(crate) async fn seed_request(
    requests: &Api<ApprovalRequest>,
    namespace: &str,
    name: &str,
    expires: &str,
) -> anyhow::Result<ApprovalRequest> {
    let object: ApprovalRequest = serde_yaml::from_str(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  server: {namespace}/{SERVER}
  requester: {{tid: t, oid: o, name: ada}}
  call: {{method: tools/call, target: deploy_model, argumentsDigest: "sha256:00"}}
  requirements: [{{rule: r, policyVersion: "1", approverGroups: [leads], minApprovals: 1}}]
  summary: ada asks to deploy
  requestedAt: "2026-01-01T00:00:00Z"
  expiresAt: "{expires}"
"#
    ))?;
    Ok(requests
        .create(&kube::api::PostParams::default(), &object)
        .await?)
}
