//! Both approval stores keep one contract; the Kubernetes one keeps it in a
//! real API server, where several replicas of the approval service share
//! approvals, wake each other's long-polls and spend a grant exactly once.

use airlock_operator::approvals::kubernetes::{KubeStore, Placement};
use airlock_operator::approvals::store::{SqliteStore, Store};
use airlock_operator::dev_issuer::TokenRequest;
use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER as GATEWAY;
use airlock_policy::gateway::RELEASE_KEY_HEADER;
use airlock_tests::approvals::{Approvals, CREDENTIAL, OpenStore};
use airlock_tests::cluster::{ADMIN, Cluster, OPERATOR, client_from};
use airlock_tests::gateway::{ENGINEERS, LEADS, policies};
use airlock_tests::issuer::{AUDIENCE, Issuer};
use airlock_tests::store_contract;
use airlock_tests::wait_for;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "airlock-approvals";
const SERVER: &str = "test/mcp";
const WATCH: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_sqlite_store_keeps_the_contract_and_survives_reopening() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("approvals.db");
    store_contract::check(&SqliteStore::open(&path)?).await?;
    let reopened = SqliteStore::open(&path)?;
    assert_eq!(reopened.list().await?.len(), 4);
    assert_eq!(
        reopened.get("ar-contract-1").await?.map(|a| a.version),
        Some(2)
    );
    Ok(())
}

/// A cluster with the CRDs, the namespace, and the operator's user granted
/// only what the store needs.
async fn cluster() -> anyhow::Result<Cluster> {
    let cluster = Cluster::start().await?;
    cluster.install_crds().await?;
    cluster.namespace(NS).await?;
    cluster.grant_approval_store(Some(NS)).await?;
    Ok(cluster)
}

/// `kubectl patch` of a request's status, as an administrator editing by
/// hand; the inner error is kubectl's complaint when the API server refused.
fn patch_status(cluster: &Cluster, name: &str, patch: &str) -> anyhow::Result<Result<(), String>> {
    let output = cluster.kubectl(
        ADMIN,
        &[
            "patch",
            "areq",
            "-n",
            NS,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ],
    )?;
    Ok(if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    })
}

/// Fields of an ApprovalRequest as `kubectl get -o jsonpath=TEMPLATE` prints them.
fn request_fields(cluster: &Cluster, name: &str, template: &str) -> anyhow::Result<String> {
    let jsonpath = format!("jsonpath={template}");
    let args = ["get", "areq", "-n", NS, name, "-o", &jsonpath];
    let output = cluster.kubectl(ADMIN, &args)?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Placed beside their servers (as the operator keeps them), requests keep
/// the same contract, each in its server's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_requests_in_their_servers_namespaces_keep_the_contract() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.install_crds().await?;
    let server_namespace = "team-a";
    cluster.namespace(server_namespace).await?;
    cluster.grant_approval_store(None).await?;
    let store = KubeStore::new(cluster.client(OPERATOR).await?, Placement::ServerNamespace);
    store_contract::check(&store).await?;
    let output = cluster.kubectl(
        ADMIN,
        &[
            "get",
            "areq",
            "-n",
            server_namespace,
            "ar-contract-1",
            "-o",
            "name",
        ],
    )?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Ids that are not object names never reach a URL, here a field selector.
    assert!(store.get("ar-1,metadata.namespace!=x").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_requests_keep_the_contract_and_announce_other_writers() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let store = KubeStore::new(
        cluster.client(OPERATOR).await?,
        Placement::Namespace(NS.into()),
    );
    store_contract::check(&store).await?;

    // People see the same approvals with kubectl, in the CRD's own words.
    let phase = |name: &str| request_fields(&cluster, name, "{.status.phase}");
    assert_eq!(phase("ar-contract-1")?, "Approved");
    assert_eq!(phase("ar-contract-2")?, "Pending");
    let decided_by = request_fields(
        &cluster,
        "ar-contract-1",
        "{.status.decisions[0].uid} {.status.decisions[0].verdict}",
    )?;
    assert_eq!(decided_by, "lea Approve");

    // A watch first lists what exists, then reports each change by another
    // writer: here an administrator cancelling a request by hand.
    let changes = store.changes();
    futures::pin_mut!(changes);
    let mut listed = BTreeSet::new();
    while listed.len() < 4 {
        let name = tokio::time::timeout(WATCH, changes.next()).await?;
        listed.insert(name.unwrap_or_default());
    }
    assert_eq!(
        listed,
        BTreeSet::from(
            [
                "ar-contract-1",
                "ar-contract-2",
                "ar-contract-3",
                "ar-contract-4"
            ]
            .map(String::from)
        )
    );
    patch_status(
        &cluster,
        "ar-contract-2",
        r#"{"status": {"phase": "Cancelled", "revision": 1}}"#,
    )?
    .map_err(anyhow::Error::msg)?;
    let announced = tokio::time::timeout(WATCH, changes.next()).await?;
    assert_eq!(announced.as_deref(), Some("ar-contract-2"));
    assert_eq!(
        store.get("ar-contract-2").await?.map(|a| a.state),
        Some(airlock_operator::approvals::model::State::Cancelled)
    );

    // What the store cannot read is an error naming the request, not a guess;
    // times the CRD schema cannot parse never get that far.
    let refused = patch_status(
        &cluster,
        "ar-contract-3",
        r#"{"status": {"approvedAt": "yesterday"}}"#,
    )?;
    assert!(
        matches!(&refused, Err(e) if e.contains("status.approvedAt")),
        "{refused:?}"
    );
    patch_status(&cluster, "ar-contract-3", r#"{"status": {"revision": -1}}"#)?
        .map_err(anyhow::Error::msg)?;
    let unreadable = store.get("ar-contract-3").await.unwrap_err().to_string();
    assert!(
        unreadable.contains("ar-contract-3") && unreadable.contains("revision"),
        "{unreadable}"
    );
    Ok(())
}

fn token(issuer: &Issuer, oid: &str, groups: &[&str]) -> anyhow::Result<String> {
    let mut request = TokenRequest::user(oid, &format!("{oid}@contoso.com"), AUDIENCE);
    request.groups = groups.iter().map(|g| g.to_string()).collect();
    Ok(issuer.issuer.mint(&request)?)
}

/// A POST as the gateway makes it: its credential and the caller's token.
fn from_gateway(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    http.post(url)
        .bearer_auth(token)
        .header(GATEWAY, CREDENTIAL)
        .json(body)
}

/// Asks for approval of `call` as the gateway would; the new request's id.
async fn ask(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    call: &Value,
) -> anyhow::Result<String> {
    let (status, asked) = send(from_gateway(
        http,
        format!("{url}/v1/approvals"),
        token,
        call,
    ))
    .await?;
    anyhow::ensure!(status == 201, "ask answered {status}: {asked}");
    Ok(asked["id"].as_str().unwrap_or_default().to_string())
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_the_api_server_share_approvals_and_spend_a_grant_once() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let issuer = Issuer::start().await?;
    let kubeconfig = cluster.kubeconfig(OPERATOR);
    let open: OpenStore<KubeStore> = Arc::new(move |_| {
        let kubeconfig = kubeconfig.clone();
        Box::pin(async move {
            Ok(KubeStore::new(
                client_from(&kubeconfig).await?,
                Placement::Namespace(NS.into()),
            ))
        })
    });
    let served = serde_json::from_value(policies())?;
    let mut first = Approvals::start_on(&issuer, SERVER, served, open.clone()).await?;
    let mut second =
        Approvals::start_on(&issuer, SERVER, serde_json::from_value(policies())?, open).await?;
    let http = reqwest::Client::new();
    let ada = token(&issuer, "oid-ada", &[ENGINEERS])?;
    let lea = token(&issuer, "oid-lea", &[LEADS])?;
    let call = json!({"server": SERVER, "method": "tools/call",
        "params": {"name": "deploy_model", "arguments": {"model": "m-7", "environment": "prod"}}});

    let id = ask(&http, &first.url, &ada, &call).await?;

    // The same ask through the other replica finds the same request.
    let (status, again) = send(from_gateway(
        &http,
        format!("{}/v1/approvals", second.url),
        &ada,
        &call,
    ))
    .await?;
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));

    // A long-poll on the first replica wakes when a lead approves on the second.
    let poll = tokio::spawn(send(
        http.get(format!("{}/v1/approvals/{id}?wait=40", first.url))
            .bearer_auth(&ada),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, approved) = send(
        http.post(format!("{}/v1/approvals/{id}/decision", second.url))
            .bearer_auth(&lea)
            .json(&json!({"verdict": "approve", "reason": "canary was clean"})),
    )
    .await?;
    assert_eq!(status, 200, "{approved}");
    let approved_at = Instant::now();
    let (status, woken) = tokio::time::timeout(Duration::from_secs(60), poll).await???;
    let wake = approved_at.elapsed();
    assert_eq!(
        (status, woken["state"].as_str()),
        (200, Some("approved")),
        "{woken}"
    );
    assert!(
        wake < Duration::from_secs(30),
        "the long-poll ran to its deadline"
    );
    eprintln!("long-poll on one replica woke {wake:?} after an approval on another");

    // Two gateways' calls race to release through both replicas: exactly
    // one may. Each names its release.
    let release = |url: &str, key: &'static str| {
        send(
            from_gateway(
                &http,
                format!("{url}/v1/approvals/{id}/consume"),
                &ada,
                &call,
            )
            .header(RELEASE_KEY_HEADER, key),
        )
    };
    let (one, two) = tokio::join!(
        release(&first.url, "release-one"),
        release(&second.url, "release-two")
    );
    let (one, two) = (one?.0, two?.0);
    let mut statuses = [one, two];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    // The winner lost its answer and asks again, through the other replica:
    // answered as before, nothing spent twice. The loser's second try still fails.
    let (winner, loser) = match one {
        200 => ("release-one", "release-two"),
        _ => ("release-two", "release-one"),
    };
    for url in [&first.url, &second.url] {
        let (status, again) = release(url, winner).await?;
        assert_eq!(
            (status, again["state"].as_str()),
            (200, Some("executed")),
            "{again}"
        );
        assert_eq!(release(url, loser).await?.0, 409);
    }
    let (status, garbage) = release(&first.url, "not a key!").await?;
    assert_eq!(
        (status, garbage["error"].as_str()),
        (400, Some("invalid_release_key")),
        "{garbage}"
    );

    // A restarted replica reads the outcome back from the API server.
    first.restart()?;
    let (status, shown) = send(
        http.get(format!("{}/v1/approvals/{id}", first.url))
            .bearer_auth(&lea),
    )
    .await?;
    assert_eq!(
        (status, shown["state"].as_str()),
        (200, Some("executed")),
        "{shown}"
    );
    assert_eq!(shown["releases"], 1);
    assert_eq!(
        request_fields(
            &cluster,
            &id,
            "{.status.phase} {.status.decisions[0].uid} {.spec.requester.oid}"
        )?,
        "Executed oid-lea oid-ada"
    );

    // A request nobody decides expires on time, and says so in the API
    // server and the trail without anyone looking at it.
    let mut short = policies();
    short[0]["spec"]["rules"][2]["approval"]["timeout"] = json!("2s");
    second.set_policies(serde_json::from_value(short)?)?;
    let mut unattended = call.clone();
    unattended["params"]["arguments"]["model"] = json!("m-8");
    let unattended_id = ask(&http, &second.url, &ada, &unattended).await?;
    wait_for("the unattended request to expire", WATCH, || {
        let phase = request_fields(&cluster, &unattended_id, "{.status.phase}");
        async move { Ok((phase? == "Expired").then_some(())) }
    })
    .await?;

    // Each replica's trail verifies; together they hold both asks, the
    // approval, one release and the expiry.
    let mut kinds = Vec::new();
    for log in [&first.audit_log, &second.audit_log] {
        let text = std::fs::read_to_string(log)?;
        airlock_policy::audit::verify(&text)?;
        for line in text.lines() {
            let event: Value = serde_json::from_str(line)?;
            kinds.push(event["kind"].as_str().unwrap_or_default().to_string());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "approval.asked",
            "approval.asked",
            "approval.decided",
            "approval.executed",
            "approval.expired"
        ]
    );
    Ok(())
}
