//! The operator at scale: a real API server (and etcd) holding many
//! McpServers (replicas 0, so no pods are needed) and ApprovalRequests in
//! several namespaces; `airlock-operator run` starts against them, and the
//! bench times how long until it serves (`/readyz`) and until every
//! McpServer's status carries its `observedGeneration`, and reads the
//! operator's memory.

use airlock_operator::approvals::kubernetes::{KubeStore, Placement};
use airlock_operator::approvals::model::State;
use airlock_operator::approvals::store::Store;
use airlock_operator::crd::McpServer;
use airlock_tests::cluster::{ADMIN, Cluster, apply};
use airlock_tests::issuer::{AUDIENCE, TENANT};
use airlock_tests::process::Process;
use airlock_tests::{free_port, paths, wait_for};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub servers: usize,
    pub requests: usize,
    pub namespaces: usize,
}

#[derive(Debug)]
pub struct ScaleReport {
    pub scale: Scale,
    /// Creating the requests, then the servers, before the operator starts.
    pub populated_in: Duration,
    /// From the operator's start until `/readyz` answers 200.
    pub ready_after: Duration,
    /// From the operator's start until every McpServer's status carries
    /// its `observedGeneration`.
    pub observed_after: Duration,
    /// Peak resident memory by then, and resident memory 10 s later.
    pub peak_rss_kib: u64,
    pub settled_rss_kib: u64,
}

impl ScaleReport {
    pub fn markdown(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "\n### The operator at scale\n\n{} McpServers (replicas 0) and {} ApprovalRequests (20% pending, the rest decided or expired) in {} namespaces of a real API server (created in {:.1} s), then `airlock-operator run` (release build) started against them:\n\n| ready (`/readyz`) | every status at its `observedGeneration` | peak RSS | RSS 10 s later |\n|---:|---:|---:|---:|\n| {:.1} s | **{:.1} s** | {:.0} MiB | {:.0} MiB |\n",
            self.scale.servers,
            self.scale.requests,
            self.scale.namespaces,
            self.populated_in.as_secs_f64(),
            self.ready_after.as_secs_f64(),
            self.observed_after.as_secs_f64(),
            mib(self.peak_rss_kib),
            mib(self.settled_rss_kib),
        )
    }
}

const WRITERS: usize = 16;

fn namespace(scale: Scale, index: usize) -> String {
    format!("scale-{}", index % scale.namespaces)
}

/// A request in each state the store holds: most decided (as in a cluster
/// that keeps a month of them), some still pending.
fn state(index: usize) -> State {
    match index % 10 {
        0 | 1 => State::Pending,
        2..=5 => State::Executed,
        6 | 7 => State::Denied,
        _ => State::Expired,
    }
}

async fn populate(cluster: &Cluster, scale: Scale) -> anyhow::Result<()> {
    cluster.namespace("airlock-system").await?;
    for index in 0..scale.namespaces {
        cluster.namespace(&namespace(scale, index)).await?;
    }
    let client = cluster.client(ADMIN).await?;
    let store = KubeStore::new(client.clone(), Placement::ServerNamespace);
    let now = airlock_operator::approvals::time::now_seconds();
    futures::stream::iter(0..scale.requests)
        .map(|index| {
            let store = &store;
            async move {
                let mut approval = airlock_tests::store_contract::sample(
                    &format!("ar-scale-{index:05}"),
                    &format!("sha256:{index:064x}"),
                    now,
                );
                approval.binding.server = format!("{}/server-{index}", namespace(scale, index));
                approval.state = state(index);
                store.insert(&approval).await
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await
        .context("creating ApprovalRequests")?;
    futures::stream::iter(0..scale.servers)
        .map(|index| {
            let servers: Api<McpServer> = Api::namespaced(client.clone(), &namespace(scale, index));
            async move {
                let name = format!("server-{index}");
                let server = json!({
                    "apiVersion": "mcp.airlock.dev/v1alpha1",
                    "kind": "McpServer",
                    "metadata": {"name": name, "labels": {"team": format!("team-{}", index % 7)}},
                    "spec": {
                        "replicas": 0,
                        "upstreamPort": 8080,
                        "auth": {"tenants": [TENANT], "audiences": [AUDIENCE]},
                        "template": {"spec": {"containers": [{"name": "mcp", "image": "mcp:1"}]}},
                    },
                });
                servers.patch(&name, &apply(), &Patch::Apply(&server)).await
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<_>>()
        .await
        .context("creating McpServers")?;
    Ok(())
}

pub async fn run(scale: Scale) -> anyhow::Result<ScaleReport> {
    let cluster = Cluster::start().await?;
    cluster.install_crds().await?;
    eprintln!(
        "bench: {} ApprovalRequests and {} McpServers in {} namespaces",
        scale.requests, scale.servers, scale.namespaces
    );
    let started = Instant::now();
    populate(&cluster, scale).await?;
    let populated_in = started.elapsed();

    let operator = std::env::current_exe()?
        .parent()
        .context("the bench's directory")?
        .join("airlock-operator");
    anyhow::ensure!(
        operator.is_file(),
        "{} is missing: run `make bench`, which builds it",
        operator.display()
    );
    let operations = free_port()?;
    let logs = tempfile::tempdir()?;
    let mut command = Command::new(&operator);
    command
        .env("KUBECONFIG", cluster.kubeconfig(ADMIN))
        .args([
            "run",
            "--namespace=airlock-system",
            "--pod-name=scale-bench",
        ])
        .args([
            "--gateways-listen=127.0.0.1:0",
            "--people-listen=127.0.0.1:0",
            &format!("--operations-listen=127.0.0.1:{operations}"),
            "--approvals-url=http://airlock-gateways.airlock-system.svc:8443",
            "--envoy-image=airlock.local/envoy:1.40.0",
            "--operator-image=airlock.local/operator:0.1.0",
            &format!("--filter={}", paths::filter_wasm()?.display()),
            &format!("--tenant={TENANT}"),
            &format!("--audience={AUDIENCE}"),
            "--audit-stdout=false",
            &format!("--audit-file={}", logs.path().join("audit.jsonl").display()),
        ]);
    let started = Instant::now();
    let mut process = Process::spawn("airlock-operator", command, logs.path())?;
    let pid = process.pid();

    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{operations}/readyz");
    wait_for("the operator to be ready", Duration::from_secs(300), || {
        let running = process.check_running();
        let request = http.get(&readyz).send();
        async move {
            running?;
            Ok(request
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ()))
        }
    })
    .await?;
    let ready_after = started.elapsed();

    let servers: Api<McpServer> = Api::all(cluster.client(ADMIN).await?);
    wait_for(
        "every McpServer's observedGeneration",
        Duration::from_secs(900),
        || {
            let servers = servers.clone();
            async move {
                let observed = servers
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|s| {
                        s.status.as_ref().and_then(|s| s.observed_generation)
                            == s.metadata.generation
                    })
                    .count();
                Ok((observed >= scale.servers).then_some(()))
            }
        },
    )
    .await?;
    let observed_after = started.elapsed();
    let (peak_rss_kib, _) = crate::cpu::memory(pid)?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, settled_rss_kib) = crate::cpu::memory(pid)?;
    drop(process);
    Ok(ScaleReport {
        scale,
        populated_in,
        ready_after,
        observed_after,
        peak_rss_kib,
        settled_rss_kib,
    })
}
