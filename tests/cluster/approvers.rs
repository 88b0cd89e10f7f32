//! Approvers in the cluster: people sign in to the API server with Entra
//! tokens of the cluster's audience (a Guard-shaped webhook, as on AKS) and
//! decide with `kubectl airlock`, installed as a kubectl plugin. The API
//! server's admission policies vouch for who decided; the approval service
//! counts the decision by the same rules as its own API, once.

use crate::operator::{
    Installed, SERVER, as_operator, call, operator, people_token, policy, serve_gated, token,
};
use airlock_operator::crd::{ApprovalRequest, Decision, Phase, Revocation, Via};
use airlock_operator::dev_issuer::TokenRequest;
use airlock_tests::chart::{NOTIFY_CHANNEL, SYSTEM_NAMESPACE};
use airlock_tests::cluster::ADMIN;
use airlock_tests::issuer::{PEOPLE_AUDIENCE, TENANT};
use airlock_tests::node::Node;
use airlock_tests::node::host::NODE_IP;
use airlock_tests::paths::{built_binary, tool};
use airlock_tests::wait_for;
use anyhow::Context as _;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

const NS: &str = "approvers";
/// Ada's account as a B2B guest: another object ID, her home UPN inside.
const ADA_AS_GUEST: &str = "ada_contoso.com#EXT#@fabrikam.onmicrosoft.com";

/// A person: their MCP token's identity and their kubectl token's are the
/// same tenant, object ID and groups.
pub(crate) struct Person {
    kubeconfig: PathBuf,
}

impl Person {
    pub(crate) fn new(node: &Node, name: &str, groups: &[&str]) -> anyhow::Result<Person> {
        Person::signing_in_as(node, name, &format!("{name}@contoso.com"), groups)
    }

    /// Object ID `oid-NAME`, signing in as `upn`.
    fn signing_in_as(
        node: &Node,
        name: &str,
        upn: &str,
        groups: &[&str],
    ) -> anyhow::Result<Person> {
        let cluster = node.cluster();
        let token = cluster.guard().token(&format!("oid-{name}"), upn, groups)?;
        Ok(Person {
            kubeconfig: cluster.kubeconfig_with_token(name, &token)?,
        })
    }

    /// `kubectl ARGS` as this person, with the plugin on the PATH as an
    /// installation puts it there.
    fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let plugin = built_binary("kubectl-airlock")?;
        let plugins = plugin.parent().context("the plugin's directory")?;
        let path = std::env::join_paths(std::iter::once(plugins.to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))?;
        Ok(std::process::Command::new(tool("kubectl")?)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", path)
            .output()?)
    }

    /// `kubectl airlock ARGS -n NAMESPACE`: what it printed, or why it failed.
    pub(crate) fn airlock(
        &self,
        namespace: &str,
        args: &[&str],
    ) -> anyhow::Result<Result<String, String>> {
        let mut all = vec!["airlock"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-n", namespace]);
        Ok(outcome(&self.kubectl(&all)?))
    }

    /// `kubectl airlock get --watch`, read until a line shows `wanted`
    /// (or a generous timeout); the stream so far.
    fn watch_until(&self, wanted: &str) -> anyhow::Result<String> {
        use std::io::BufRead;
        let plugin = built_binary("kubectl-airlock")?;
        let mut child = std::process::Command::new(plugin)
            .args(["get", "--watch", "-n", NS])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (lines, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stream = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match seen.recv_timeout(left) {
                Ok(line) => {
                    stream.push_str(&line);
                    stream.push('\n');
                    if line.contains(wanted) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        anyhow::ensure!(
            stream.contains(wanted),
            "get --watch never showed {wanted}: {stream}"
        );
        Ok(stream)
    }

    /// A raw JSON patch of the request's status, as someone past the
    /// plugin would write it.
    fn patch_status(&self, name: &str, patch: Value) -> anyhow::Result<Result<String, String>> {
        let patch = patch.to_string();
        let out = self.kubectl(&[
            "patch",
            "approvalrequest",
            name,
            "-n",
            NS,
            "--subresource=status",
            "--type=json",
            "-p",
            &patch,
        ])?;
        Ok(outcome(&out))
    }
}

/// What a kubectl command printed, or why it failed.
fn outcome(out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// Fails unless `result` is a refusal saying `says`.
fn refused(what: &str, result: Result<String, String>, says: &str) -> anyhow::Result<()> {
    match result {
        Err(message) if message.contains(says) => Ok(()),
        other => anyhow::bail!("{what}: expected a refusal saying {says:?}, got {other:?}"),
    }
}

/// The request of `namespace` not among `known`, once there is one.
async fn new_request(
    requests: &Api<ApprovalRequest>,
    known: &mut BTreeSet<String>,
) -> anyhow::Result<String> {
    let name = wait_for("a new ApprovalRequest", Duration::from_secs(60), || {
        let requests = requests.clone();
        let known = known.clone();
        async move {
            Ok(requests
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|r| r.metadata.name)
                .find(|name| !known.contains(name)))
        }
    })
    .await?;
    known.insert(name.clone());
    Ok(name)
}

const QUORUM_RULE: &str = r#"
  - name: deploy-to-staging
    match:
      tools: [deploy_model]
      arguments: [{pointer: /environment, in: [staging]}]
    principals: {groups: [engineers]}
    action: RequireApproval
    approval: {approvers: {groups: [leads]}, minApprovals: 2, timeout: 10m}
    audit: {capture: Arguments}
"#;

/// Who may do what here: lea, max and ada (a lead who also deploys) hold
/// the chart's `airlock-approver` role, and so does the group `reviewers`,
/// which no rule names; kim is a lead who may write the status but holds no
/// `approve` verb.
fn rights() -> String {
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: approvers, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: airlock-approver}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: lea@contoso.com}}
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: max@contoso.com}}
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ada@contoso.com}}
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: "{ADA_AS_GUEST}"}}
- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: reviewers}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: status-writer, namespace: {NS}}}
rules:
- {{apiGroups: [mcp.airlock.dev], resources: [approvalrequests], verbs: [get, list]}}
- {{apiGroups: [mcp.airlock.dev], resources: [approvalrequests/status], verbs: [get, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: status-writer, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: status-writer}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: kim@contoso.com}}
"#
    )
}

fn status_of(request: &ApprovalRequest) -> (Phase, usize) {
    let status = request.status.clone().unwrap_or_default();
    (status.phase, status.decisions.len())
}

/// A lead approves with `kubectl airlock approve`; the decision names them
/// as the API server knows them and the held call completes. Every way
/// around the rules — through the plugin and by raw `kubectl patch` — is
/// refused with its reason and changes nothing; two leads make a quorum of
/// two, and one person counts once across both paths.
pub async fn a_lead_approves_with_kubectl_airlock(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    node.namespace(NS).await?;
    node.apply(&rights())?;
    serve_gated(node, NS, 40, &policy(NS, QUORUM_RULE)).await?;
    let requests: Api<ApprovalRequest> = Api::namespaced(node.client(ADMIN).await?, NS);
    let mut known = BTreeSet::new();

    let ada_mcp = token(&installed.issuer, "ada", &["engineers"])?;
    let lea_people = people_token(&installed.issuer, "lea", &["leads"])?;
    let ada = Person::new(node, "ada", &["engineers", "leads"])?;
    let lea = Person::new(node, "lea", &["leads"])?;
    let max = Person::new(node, "max", &["leads"])?;
    let rev = Person::new(node, "rev", &["reviewers"])?;
    let kim = Person::new(node, "kim", &["leads"])?;
    let guest = Person::signing_in_as(node, "ada-guest", ADA_AS_GUEST, &["leads"])?;

    // The two audiences do not mix: the API server refuses an MCP token,
    // the gateway a kubectl token.
    let mcp_at_api_server = Person {
        kubeconfig: node.cluster().kubeconfig_with_token("ada-mcp", &ada_mcp)?,
    };
    refused(
        "an MCP token at the API server",
        mcp_at_api_server.airlock(NS, &["get"])?,
        "Unauthorized",
    )?;
    let ada_kubectl_token =
        node.cluster()
            .guard()
            .token("oid-ada", "ada@contoso.com", &["engineers"])?;
    let at_gateway = gateway_answer(node, NS, &ada_kubectl_token).await?;
    anyhow::ensure!(
        at_gateway.starts_with("401") && at_gateway.contains("audience"),
        "the gateway took a kubectl token: {at_gateway}"
    );

    // A two-approver request, held while it is decided (the call may give
    // up waiting first; the request stays, and the call passes once it is
    // approved).
    let staging = json!({"model": "fraud:v6", "environment": "staging"});
    let (first_try, decided) = tokio::join!(
        call(node, NS, &ada_mcp, "deploy_model", staging.clone()),
        decide_a_quorum(
            node,
            &requests,
            &mut known,
            installed,
            &lea_people,
            [&ada, &guest, &lea, &max, &rev, &kim]
        ),
    );
    decided?;
    let first = first_try?;
    let answer = if first["isError"] == false {
        first
    } else {
        call(node, NS, &ada_mcp, "deploy_model", staging).await?
    };
    anyhow::ensure!(
        answer["text"] == "deployed fraud:v6 to staging",
        "the approved call did not run: {answer}"
    );

    // One lead approves a held production call while the client waits.
    let (answer, prod) = held_while(
        node,
        NS,
        &ada_mcp,
        json!({"model": "fraud:v7", "environment": "prod"}),
        &requests,
        &mut known,
        |name| {
            let lea = &lea;
            async move {
                let approved = lea
                    .airlock(NS, &["approve", &name, "--reason", "checked"])?
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(approved.contains("Approved"), "{approved}");
                Ok(name)
            }
        },
    )
    .await?;
    anyhow::ensure!(
        answer["text"] == "deployed fraud:v7 to prod",
        "the held call did not complete: {answer}"
    );
    refused(
        "deciding on a request already decided",
        max.airlock(NS, &["deny", &prod, "--reason", "late"])?,
        "can no longer change",
    )?;

    // A deny through kubectl refuses the held call.
    let (answer, denied) = held_while(
        node,
        NS,
        &ada_mcp,
        json!({"model": "fraud:v8", "environment": "prod"}),
        &requests,
        &mut known,
        |name| {
            let max = &max;
            async move {
                max.airlock(NS, &["deny", &name, "--reason", "not this week"])?
                    .map_err(anyhow::Error::msg)
            }
        },
    )
    .await?;
    anyhow::ensure!(denied.contains("Denied"), "the deny was not counted");
    anyhow::ensure!(
        answer["isError"] == true
            && answer["text"]
                .as_str()
                .unwrap_or_default()
                .contains("was denied"),
        "{answer}"
    );

    // Past its expiry a request takes no decision, even while nothing has
    // marked it Expired: this one the operator cannot read (a negative
    // grant window), so no sweep settles it — as if the sweeper were
    // stopped. CEL has no clock; the operator's webhook says no.
    let stale: ApprovalRequest = serde_yaml::from_str(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: ar-stale, namespace: {NS}}}
spec:
  server: {NS}/{SERVER}
  requester: {{tid: "{TENANT}", oid: oid-ada, name: ada@contoso.com}}
  call: {{method: tools/call, target: deploy_model, argumentsDigest: "sha256:00"}}
  requirements: [{{rule: {NS}/models/deploy-to-prod, policyVersion: "1", approverGroups: [leads], minApprovals: 1}}]
  summary: ada asks to deploy
  requestedAt: "2026-01-01T00:00:00Z"
  expiresAt: "2026-01-01T00:30:00Z"
  grantWindowSeconds: -1
"#
    ))?;
    as_operator(node, NS)
        .await?
        .create(&kube::api::PostParams::default(), &stale)
        .await?;
    refused(
        "approving a request past its expiry that is not marked Expired",
        lea.airlock(NS, &["approve", "ar-stale", "--reason", "late"])?,
        "this request expired at 2026-01-01T00:30:00Z",
    )?;
    let stale = requests.get("ar-stale").await?;
    anyhow::ensure!(
        stale.status.is_none_or(|s| s.decisions.is_empty()),
        "a decision was written on an expired request"
    );
    Ok(())
}

/// The two-approver request: listed and described for approvers; every way
/// around the rules refused; a first lead counted once across both paths;
/// a second distinct lead makes the quorum.
async fn decide_a_quorum(
    node: &Node,
    requests: &Api<ApprovalRequest>,
    known: &mut BTreeSet<String>,
    installed: &Installed,
    lea_people: &str,
    [ada, guest, lea, max, rev, kim]: [&Person; 6],
) -> anyhow::Result<()> {
    let quorum = new_request(requests, known).await?;

    let listed = lea.airlock(NS, &["get"])?.map_err(anyhow::Error::msg)?;
    eprintln!("kubectl airlock get:\n{listed}");
    for shown in [quorum.as_str(), "deploy_model", "ada@contoso.com", "0/2"] {
        anyhow::ensure!(listed.contains(shown), "get shows no {shown}: {listed}");
    }
    let watched = lea.watch_until(quorum.as_str())?;
    anyhow::ensure!(watched.contains("0/2"), "get --watch: {watched}");
    let described = lea
        .airlock(NS, &["describe", &quorum])?
        .map_err(anyhow::Error::msg)?;
    eprintln!("kubectl airlock describe {quorum}:\n{described}");
    for shown in ["fraud:v6", "deploy-to-staging", "leads", "ada@contoso.com"] {
        anyhow::ensure!(
            described.contains(shown),
            "describe shows no {shown}: {described}"
        );
    }

    // Refused, each with its reason, and nothing changes.
    refused(
        "the requester approving their own request",
        ada.airlock(NS, &["approve", &quorum, "--reason", "mine"])?,
        "you cannot approve your own request",
    )?;
    refused(
        "the requester approving as a guest of another tenant",
        guest.airlock(NS, &["approve", &quorum, "--reason", "mine, as a guest"])?,
        "you cannot approve your own request",
    )?;
    let mut guest_mcp = TokenRequest::user("oid-ada-guest", ADA_AS_GUEST, PEOPLE_AUDIENCE);
    guest_mcp.groups = vec!["leads".into()];
    let as_guest = installed
        .people
        .decide(
            &installed.issuer.issuer.mint(&guest_mcp)?,
            &quorum,
            "approve",
            "mine, as a guest",
        )
        .await?;
    anyhow::ensure!(
        as_guest.status().as_u16() == 403,
        "the requester's guest account approved through the service: {}",
        as_guest.text().await?
    );
    refused(
        "the approve verb without being an approver",
        rev.airlock(NS, &["approve", &quorum, "--reason", "looks fine"])?,
        "not in an approver group",
    )?;
    refused(
        "an approver without the approve verb",
        kim.airlock(NS, &["approve", &quorum, "--reason", "looks fine"])?,
        "not granted the verb approve",
    )?;
    let as_max = approval_by("max", "forged");
    refused(
        "a decision naming someone else",
        lea.patch_status(
            &quorum,
            json!([{"op": "add", "path": "/status/decisions", "value": [as_max]}]),
        )?,
        "must name its writer",
    )?;
    let as_lea = approval_by("lea", "and done");
    refused(
        "a decision that also moves the phase",
        lea.patch_status(
            &quorum,
            json!([
                {"op": "add", "path": "/status/decisions", "value": [as_lea]},
                {"op": "replace", "path": "/status/phase", "value": "Approved"},
            ]),
        )?,
        "only the Airlock operator moves",
    )?;
    let mut own_time = approval_by("lea", "stamped");
    own_time["time"] = "2026-01-01T00:00:00Z".into();
    refused(
        "a decision with its own time",
        lea.patch_status(
            &quorum,
            json!([{"op": "add", "path": "/status/decisions", "value": [own_time]}]),
        )?,
        "without a tenant or a time",
    )?;
    anyhow::ensure!(
        status_of(&requests.get(&quorum).await?) == (Phase::Pending, 0),
        "a refused decision changed the request"
    );

    // The first lead: counted, as the API server knows her; one more needed.
    let approved = lea
        .airlock(NS, &["approve", &quorum, "--reason", "staging is fine"])?
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(approved.contains("1 more approval"), "{approved}");
    let recorded = requests.get(&quorum).await?;
    let decision = recorded
        .status
        .as_ref()
        .and_then(|s| s.decisions.first())
        .cloned()
        .context("no decision recorded")?;
    anyhow::ensure!(
        decision.by.user == "lea@contoso.com"
            && decision.by.uid == "oid-lea"
            && decision.by.tenant == TENANT
            && decision.via == Via::Kubectl
            && decision.time.is_some(),
        "the decision does not name lea as the API server knows her: {decision:?}"
    );
    refused(
        "a second decision by the same person",
        lea.airlock(NS, &["deny", &quorum, "--reason", "changed my mind"])?,
        "you have already decided",
    )?;
    // The people's API takes its own audience only, and people only.
    let lea_for_mcp = token(&installed.issuer, "lea", &["leads"])?;
    let mut app = TokenRequest::user("oid-deployer-app", "", PEOPLE_AUDIENCE);
    app.app_only = true;
    for (what, wrong) in [
        ("an MCP server's token", lea_for_mcp),
        ("an app-only token", installed.issuer.issuer.mint(&app)?),
    ] {
        let refused = installed
            .people
            .decide(&wrong, &quorum, "approve", "not through here")
            .await?;
        anyhow::ensure!(
            refused.status().as_u16() == 401,
            "the people's API took {what}: {}",
            refused.text().await?
        );
    }
    let twice = installed
        .people
        .decide(lea_people, &quorum, "approve", "again, through the service")
        .await?;
    anyhow::ensure!(
        twice.status().as_u16() == 409,
        "the same person counted twice across the two paths: {}",
        twice.text().await?
    );
    let edited = rewritten(&decision);
    let max_entry = approval_by("max", "ok");
    refused(
        "editing an existing decision",
        max.patch_status(
            &quorum,
            json!([
                {"op": "replace", "path": "/status/decisions/0", "value": edited},
                {"op": "add", "path": "/status/decisions/-", "value": max_entry},
            ]),
        )?,
        "cannot be edited or removed",
    )?;
    anyhow::ensure!(
        status_of(&requests.get(&quorum).await?) == (Phase::Pending, 1),
        "a refused edit changed the request"
    );

    // Nor does anyone but the operator write the request itself, not even
    // an admin past RBAC: its spec never changes (the CRD's rule), and the
    // rest is the operator's (the admission policy).
    let spec_edit = node.kubectl(
        ADMIN,
        &[
            "patch",
            "approvalrequest",
            &quorum,
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"summary":"nothing to see"}}"#,
        ],
    )?;
    refused(
        "editing the request's spec",
        outcome(&spec_edit),
        "spec is immutable",
    )?;
    let relabel = node.kubectl(
        ADMIN,
        &[
            "label",
            "approvalrequest",
            &quorum,
            "-n",
            NS,
            "mcp.airlock.dev/requester=someone",
            "--overwrite",
        ],
    )?;
    refused(
        "relabelling the request",
        outcome(&relabel),
        "written only by the Airlock operator",
    )?;

    let forged = node.apply(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: ar-forged, namespace: {NS}}}
spec:
  server: {NS}/{SERVER}
  requester: {{tid: t, oid: o}}
  call: {{method: tools/call, argumentsDigest: "sha256:00"}}
  requirements: [{{rule: {NS}/models/r, policyVersion: "1", approverGroups: [leads], minApprovals: 1}}]
  summary: forged
  requestedAt: "2026-01-01T00:00:00Z"
  expiresAt: "2099-01-01T00:00:00Z"
"#
    ));
    refused(
        "creating an ApprovalRequest",
        forged.map(|()| String::new()).map_err(|e| format!("{e:#}")),
        "written only by the Airlock operator",
    )?;

    // The second lead asks first; the requester answers through the
    // people's API.
    let asked = max
        .airlock(NS, &["ask", &quorum, "--message", "which traffic share?"])?
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(asked.contains("InfoRequested"), "{asked}");
    let ada_people = people_token(&installed.issuer, "ada", &["engineers"])?;
    let answered = installed
        .people
        .answer(&ada_people, &quorum, "10% for a day")
        .await?;
    anyhow::ensure!(answered.status().is_success(), "{}", answered.text().await?);

    // The second, distinct lead makes the quorum.
    let approved = max
        .airlock(NS, &["approve", &quorum, "--reason", "agreed"])?
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(approved.contains("Approved"), "{approved}");
    Ok(())
}

/// A lead's approval as an entry of the status, written by hand: it names
/// `lead` as the API server knows them (the admission policy checks that
/// against whoever writes it).
fn approval_by(lead: &str, reason: &str) -> Value {
    json!({"user": format!("{lead}@contoso.com"), "uid": format!("oid-{lead}"),
        "groups": ["leads"], "verdict": "Approve", "reason": reason, "via": "kubectl"})
}

/// Ada's `deploy_model` with `arguments` through `namespace`'s gateway,
/// held while `decide` acts on the request it makes (the first not among
/// `known`): the call's answer, and what `decide` returned.
async fn held_while<T, Decided>(
    node: &Node,
    namespace: &str,
    token: &str,
    arguments: Value,
    requests: &Api<ApprovalRequest>,
    known: &mut BTreeSet<String>,
    decide: impl FnOnce(String) -> Decided,
) -> anyhow::Result<(Value, T)>
where
    Decided: std::future::Future<Output = anyhow::Result<T>>,
{
    let held = call(node, namespace, token, "deploy_model", arguments);
    let deciding = async { decide(new_request(requests, known).await?).await };
    let (answer, decided) = tokio::join!(held, deciding);
    Ok((answer?, decided?))
}

/// `decision` with another reason: what an edit of the record would write.
fn rewritten(decision: &Decision) -> Value {
    let mut edited = decision.clone();
    edited.reason = "rewritten".into();
    serde_json::to_value(edited).unwrap_or_default()
}

/// What the gateway answers a `ping` with `token`, from the client pod:
/// the status code, then the body.
async fn gateway_answer(node: &Node, namespace: &str, token: &str) -> anyhow::Result<String> {
    let url = format!("http://{SERVER}.{namespace}.svc.cluster.local/mcp");
    let script = r#"
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], method="POST",
    data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
    headers={"Authorization": "Bearer " + sys.argv[2], "Content-Type": "application/json",
             "Accept": "application/json, text/event-stream"})
try:
    answer = urllib.request.urlopen(request, timeout=10)
    print(answer.status, answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"#;
    node.exec(
        namespace,
        "client",
        "client",
        &["python3", "-c", script, &url, token],
    )
    .await
}

/// `revoke` of a person mid-session: their next call is refused within
/// seconds (the time it took is printed), a call of theirs already held is
/// refused, not released, though a lead approves it afterwards; `lift`
/// gives them back.
pub async fn a_revoked_person_is_cut_off_held_calls_included(node: &Node) -> anyhow::Result<()> {
    const REVOKED: &str = "revoked";
    let installed = operator(node).await?;
    node.namespace(REVOKED).await?;
    serve_gated(node, REVOKED, 40, &policy(REVOKED, "")).await?;
    let requests: Api<ApprovalRequest> = Api::namespaced(node.client(ADMIN).await?, REVOKED);
    let revocations: Api<Revocation> = Api::namespaced(node.client(ADMIN).await?, REVOKED);
    let ada_mcp = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = Person::new(node, "lea", &["leads"])?;
    let before = call(node, REVOKED, &ada_mcp, "get_status", json!({})).await?;
    anyhow::ensure!(before["isError"] == false, "before: {before}");

    let (answer, revocation) = held_while(
        node,
        REVOKED,
        &ada_mcp,
        json!({"model": "fraud:v9", "environment": "prod"}),
        &requests,
        &mut BTreeSet::new(),
        |name| {
            let (lea, ada_mcp, revocations) = (&lea, &ada_mcp, &revocations);
            async move {
                lea.airlock(
                    REVOKED,
                    &["revoke", "--user", "oid-ada", "--reason", "laptop stolen"],
                )?
                .map_err(anyhow::Error::msg)?;
                // The resource the plugin made, as anyone lists it.
                let revocation = revocations
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|r| r.spec.user.as_ref().is_some_and(|u| u.oid == "oid-ada"))
                    .and_then(|r| r.metadata.name)
                    .context("no Revocation of ada listed")?;
                let since = std::time::Instant::now();
                let refused = wait_for("ada to be refused", Duration::from_secs(60), || async {
                    let answer = gateway_answer(node, REVOKED, ada_mcp).await?;
                    Ok(answer.starts_with("403").then_some(answer))
                })
                .await?;
                eprintln!(
                    "revoked: ada's next call refused {:.1?} after revoke",
                    since.elapsed()
                );
                anyhow::ensure!(
                    refused.contains("revoked") && refused.contains("laptop stolen"),
                    "{refused}"
                );
                // Approved afterwards, and still not released.
                lea.airlock(REVOKED, &["approve", &name, "--reason", "before I heard"])?
                    .map_err(anyhow::Error::msg)?;
                Ok(revocation)
            }
        },
    )
    .await?;
    anyhow::ensure!(
        answer["isError"] == true
            && answer["text"]
                .as_str()
                .unwrap_or_default()
                .contains("cannot release this call: access revoked"),
        "a held call of a revoked person was released: {answer}"
    );
    eprintln!("revoked: the held call answered {answer}");

    lea.airlock(REVOKED, &["lift", &revocation])?
        .map_err(anyhow::Error::msg)?;
    wait_for(
        "ada to be let through again",
        Duration::from_secs(60),
        || async {
            let answer = gateway_answer(node, REVOKED, &ada_mcp).await?;
            Ok((!answer.starts_with("403")).then_some(()))
        },
    )
    .await?;
    let after = call(node, REVOKED, &ada_mcp, "get_status", json!({})).await?;
    anyhow::ensure!(after["isError"] == false, "after the lift: {after}");
    Ok(())
}

/// A policy's channel hears of its requests: asked, then decided (with who
/// and why), as one JSON body a generic receiver and Teams' and Slack's
/// incoming webhooks read; a receiver that fails first gets the notice
/// again. The URL is in the platform's Secret, not in the policy.
pub async fn a_policy_tells_its_channel_of_its_requests(node: &Node) -> anyhow::Result<()> {
    const NOTIFIED: &str = "notified";
    let installed = operator(node).await?;
    let (url, received) = receiver().await?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: airlock-notify-{NOTIFY_CHANNEL}, namespace: {SYSTEM_NAMESPACE}}}
stringData: {{url: "{url}"}}
"#
    ))?;
    node.namespace(NOTIFIED).await?;
    let notify = format!("\n  notify: {{channel: {NOTIFY_CHANNEL}}}\n");
    serve_gated(node, NOTIFIED, 40, &policy(NOTIFIED, &notify)).await?;
    let requests: Api<ApprovalRequest> = Api::namespaced(node.client(ADMIN).await?, NOTIFIED);
    let ada_mcp = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = Person::new(node, "lea", &["leads"])?;

    let (answer, name) = held_while(
        node,
        NOTIFIED,
        &ada_mcp,
        json!({"model": "fraud:v10", "environment": "prod"}),
        &requests,
        &mut BTreeSet::new(),
        |name| {
            let lea = &lea;
            async move {
                lea.airlock(NOTIFIED, &["approve", &name, "--reason", "ship it"])?
                    .map_err(anyhow::Error::msg)?;
                Ok(name)
            }
        },
    )
    .await?;
    anyhow::ensure!(answer["isError"] == false, "{answer}");

    let bodies = wait_for("both notices", Duration::from_secs(60), || {
        let received = received.clone();
        async move {
            let bodies = received.lock().map(|b| b.clone()).unwrap_or_default();
            let delivered = |event: &str| bodies.iter().filter(|b| b["event"] == event).count();
            Ok(
                (delivered("approval.asked") >= 2 && delivered("approval.decided") >= 1)
                    .then_some(bodies),
            )
        }
    })
    .await?;
    let text = |event: &str| {
        bodies
            .iter()
            .rfind(|b| b["event"] == event)
            .and_then(|b| b["text"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    eprintln!(
        "notified: {}\nnotified: {}",
        text("approval.asked"),
        text("approval.decided")
    );
    anyhow::ensure!(
        text("approval.asked").contains(&format!("kubectl airlock describe {name}")),
        "{bodies:?}"
    );
    anyhow::ensure!(
        text("approval.decided").contains("lea@contoso.com decided")
            && text("approval.decided").contains("ship it"),
        "{bodies:?}"
    );
    anyhow::ensure!(
        bodies.iter().all(|b| b["approval"]["id"] == name.as_str()),
        "{bodies:?}"
    );
    Ok(())
}

type Received = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// A webhook receiver on the node's address (pods reach it there) that
/// refuses its first notice, then takes them all; what it got.
async fn receiver() -> anyhow::Result<(String, Received)> {
    let received: Received = Default::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                let mut kept = kept
                    .lock()
                    .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
                kept.push(body);
                if kept.len() == 1 {
                    Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                } else {
                    Ok(axum::http::StatusCode::OK)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((NODE_IP, 0)).await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}
