//! High availability of the operator: replicas killed mid-hold, and a
//! leader frozen past its Lease. These tests disturb the replicas every
//! other test relies on, so they run alone, after the rest.

use super::operator::{SERVER, call, gated_server, operator, people_token, token};
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::{Node, processes};
use airlock_tests::wait_for;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// High availability with three replicas: while a deploy is held, the
/// replica holding the Lease and the one serving the sidecar's long-poll
/// (found in the host's conntrack table) are killed. Nothing is lost: the
/// sidecar's next long-poll reaches a survivor, a lead approves through the
/// people's API, the call completes, and another replica takes the Lease.
/// Runs alone: it kills replicas every other test relies on.
pub async fn killing_the_leader_and_the_polled_replica_loses_nothing(
    node: &Node,
) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "gate-ha";
    gated_server(node, ns, 50).await?;
    let admin = node.client(ADMIN).await?;
    chart::scale_operator(node, 3)?;
    chart::operator_ready(node, Some(3)).await?;

    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = people_token(&installed.issuer, "lea", &["leads"])?;
    let started = Instant::now();
    let at = |what: &str| eprintln!("HA: {:>5.1}s {what}", started.elapsed().as_secs_f64());
    let held = call(
        node,
        ns,
        &ada,
        "deploy_model",
        json!({"model": "fraud:v10", "environment": "prod"}),
    );
    let chaos = async {
        let id = installed
            .people
            .pending(&lea, &format!("{ns}/{SERVER}"), "deploy_model")
            .await?;
        at("pending");
        let operators: Api<Pod> = Api::namespaced(admin.clone(), chart::SYSTEM_NAMESPACE);
        let pods = operators
            .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-operator"))
            .await?
            .items;
        let leases: Api<Lease> = Api::namespaced(admin.clone(), chart::SYSTEM_NAMESPACE);
        let leader = leader(&leases).await?;
        let gateway_pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        let gateway_ip = gateway_pods
            .list(&ListParams::default().labels(&format!("mcp.airlock.dev/server={SERVER}")))
            .await?
            .items
            .first()
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
            .ok_or_else(|| anyhow::anyhow!("no gateway pod IP"))?;
        let polled = polled_replica(&gateway_ip, &pods)?;
        let mut victims = vec![leader.clone()];
        if let Some(polled) = &polled
            && polled != &leader
        {
            victims.push(polled.clone());
        }
        at(&format!(
            "leader {leader}, long-poll served by {polled:?}; killing {victims:?}"
        ));
        for victim in &victims {
            let killed = node.kubectl(
                ADMIN,
                &[
                    "delete",
                    "pod",
                    "-n",
                    chart::SYSTEM_NAMESPACE,
                    victim,
                    "--grace-period=0",
                    "--force",
                ],
            )?;
            anyhow::ensure!(
                killed.status.success(),
                "{}",
                String::from_utf8_lossy(&killed.stderr)
            );
        }
        at("killed");
        // The people's Service may still route to a dead replica for a moment.
        wait_for(
            "a surviving replica to take the decision",
            Duration::from_secs(60),
            || async {
                Ok(installed
                    .people
                    .decide(&lea, &id, "approve", "survived")
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            },
        )
        .await?;
        at("approved");
        let new_leader = successor(&leases, &leader).await?;
        anyhow::ensure!(
            !victims.contains(&new_leader),
            "a killed replica holds the Lease"
        );
        Ok(())
    };
    let (answer, chaos) = tokio::join!(held, chaos);
    at("answered");
    chaos?;
    let answer = answer?;
    if answer["isError"] != false {
        let logs = |args: &[&str]| {
            node.kubectl(ADMIN, args)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        anyhow::bail!(
            "{answer}\nsidecar:\n{}\nreplicas:\n{}",
            logs(&[
                "logs",
                "-n",
                ns,
                &format!("deployment/{SERVER}"),
                "-c",
                "airlock-gateway",
                "--tail=200"
            ]),
            logs(&[
                "logs",
                "-n",
                chart::SYSTEM_NAMESPACE,
                "-l",
                "app.kubernetes.io/name=airlock-operator",
                "--prefix",
                "--tail=100"
            ]),
        );
    }
    assert_eq!(answer["text"], "deployed fraud:v10 to prod");
    chart::scale_operator(node, 2)?;
    chart::operator_ready(node, Some(2)).await?;
    Ok(())
}

/// The operator pod the gateway at `gateway_ip` has a connection open to on
/// the gateways' port, from the host's conntrack table (kube-proxy's DNAT
/// shows the pod as the reply's source).
fn polled_replica(gateway_ip: &str, pods: &[Pod]) -> anyhow::Result<Option<String>> {
    let output = std::process::Command::new("conntrack")
        .args([
            "-L",
            "-p",
            "tcp",
            "--orig-src",
            gateway_ip,
            "--state",
            "ESTABLISHED",
        ])
        .output()?;
    let table = String::from_utf8_lossy(&output.stdout);
    Ok(pods.iter().find_map(|pod| {
        let ip = pod.status.as_ref()?.pod_ip.clone()?;
        let needle = format!("src={ip} ");
        table
            .lines()
            .any(|l| l.contains("sport=8443") && l.contains(&needle))
            .then(|| pod.metadata.name.clone())
            .flatten()
    }))
}

/// The Lease's holder.
async fn leader(leases: &Api<Lease>) -> anyhow::Result<String> {
    Ok(leases
        .get("airlock-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

/// Waits until a replica other than `previous` holds the Lease; returns it.
async fn successor(leases: &Api<Lease>, previous: &str) -> anyhow::Result<String> {
    wait_for(
        "another replica to take the Lease",
        Duration::from_secs(90),
        || async move {
            let holder = leader(leases).await?;
            Ok((!holder.is_empty() && holder != previous).then_some(holder))
        },
    )
    .await
}

/// A write as the API server's audit log records it.
struct Write {
    received: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// `namespace/name`.
    object: String,
    /// Verb and answer, for the failure message.
    outcome: String,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Write {
            received,
            resource,
            object,
            outcome,
        } = self;
        write!(f, "{received} {outcome} {resource} {object}")
    }
}

fn listing<'a>(writes: impl IntoIterator<Item = &'a Write>) -> String {
    writes.into_iter().map(|w| format!("\n  {w}")).collect()
}

/// Writes the API server recorded from pod `pod`'s ServiceAccount token.
fn writes_by(node: &Node, pod: &str) -> anyhow::Result<Vec<Write>> {
    let text = |value: &Value| value.as_str().unwrap_or("").to_string();
    let log = std::fs::read_to_string(node.cluster().audit_log())?;
    Ok(log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] == pod)
        .map(|event| {
            let object = &event["objectRef"];
            let mut resource = text(&object["resource"]);
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            Write {
                received: text(&event["requestReceivedTimestamp"]),
                resource,
                object: format!("{}/{}", text(&object["namespace"]), text(&object["name"])),
                outcome: format!(
                    "{} {}",
                    text(&event["verb"]),
                    event["responseStatus"]["code"]
                ),
            }
        })
        .collect())
}

/// What only the leader's controllers write; every replica's approval
/// service writes requests, their Events and its own audit checkpoints, and
/// every elector writes the Lease.
const CONTROLLER_RESOURCES: &[&str] = &[
    "deployments",
    "configmaps",
    "services",
    "networkpolicies",
    "mcpservers/status",
    "approvalpolicies/status",
];

/// The leader is frozen (SIGSTOP) past its Lease: another replica takes the
/// Lease and reconciles an McpServer edited meanwhile. When the frozen one
/// resumes, its controllers still hold the edit they never acted on — yet
/// the API server's audit log shows no write by that pod to anything the
/// controllers own from the moment it resumed (it wrote such things while
/// it led, so the check is not empty by construction).
pub async fn a_frozen_leader_writes_nothing_when_it_resumes(node: &Node) -> anyhow::Result<()> {
    operator(node).await?;
    let ns = "gate-frozen";
    gated_server(node, ns, 20).await?;
    let admin = node.client(ADMIN).await?;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), chart::SYSTEM_NAMESPACE);
    let frozen = leader(&leases).await?;
    let led = writes_by(node, &frozen)?;
    anyhow::ensure!(
        led.iter()
            .any(|w| w.resource == "deployments" && w.object == format!("{ns}/{SERVER}")),
        "the leader {frozen} never wrote the server's Deployment:{}",
        listing(&led)
    );
    let pid = processes::of_pod(&frozen, "/usr/local/bin/airlock-operator")?;
    let started = Instant::now();
    processes::signal(pid, "STOP")?;
    let outcome = async {
        let successor = successor(&leases, &frozen).await?;
        eprintln!(
            "frozen: {frozen} stopped; {successor} holds the Lease after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        // An edit only a leader acts on: the successor reconciles it.
        let servers: Api<airlock_operator::crd::McpServer> = Api::namespaced(admin.clone(), ns);
        servers
            .patch(
                SERVER,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"gateway": {"maxHoldSeconds": 25}}})),
            )
            .await?;
        wait_for(
            "the successor to reconcile the edit",
            Duration::from_secs(60),
            || {
                let servers = servers.clone();
                async move {
                    let server = servers.get(SERVER).await?;
                    let generation = server.metadata.generation;
                    let observed = server.status.and_then(|s| s.observed_generation);
                    Ok((observed.is_some() && observed == generation).then_some(()))
                }
            },
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    let resumed = k8s_openapi::jiff::Timestamp::now();
    processes::signal(pid, "CONT")?;
    outcome?;
    // Give the resumed replica time to act on what it missed, and to find
    // the Lease gone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: Vec<_> = writes_by(node, &frozen)?
        .into_iter()
        .filter(|w| {
            w.received
                .parse::<k8s_openapi::jiff::Timestamp>()
                .is_ok_and(|at| at >= resumed)
        })
        .collect();
    eprintln!(
        "frozen: writes by {frozen} after it resumed:{}",
        listing(&after)
    );
    // What the resumed replica made of it, from its own log (the container
    // before a restart, if it restarted).
    for previous in ["--previous=true", "--previous=false"] {
        let logs = node.kubectl(
            ADMIN,
            &["logs", "-n", chart::SYSTEM_NAMESPACE, &frozen, previous],
        )?;
        let said: Vec<_> = String::from_utf8_lossy(&logs.stdout)
            .lines()
            .filter(|l| l.contains("lease") || l.contains("refusing"))
            .map(String::from)
            .collect();
        eprintln!("frozen: {frozen} ({previous}) said: {said:#?}");
    }
    let controller_writes: Vec<_> = after
        .iter()
        .filter(|w| CONTROLLER_RESOURCES.contains(&w.resource.as_str()))
        .collect();
    assert!(
        controller_writes.is_empty(),
        "the resumed replica wrote as if it still led:{}",
        listing(controller_writes.iter().copied())
    );
    chart::operator_ready(node, None).await?;
    Ok(())
}
