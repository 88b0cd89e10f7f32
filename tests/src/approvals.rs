//! The real approval service (SQLite store) on 127.0.0.1, as `airlock up` runs it.

use crate::issuer::{AUDIENCE, Issuer, TENANT};
use airlock_operator::approvals::audit_log::AuditLog;
use airlock_operator::approvals::service::{ApprovalService, Catalog, ServerEntry, ServiceConfig};
use airlock_operator::approvals::store::SqliteStore;
use airlock_policy::entra::TrustConfig;
use airlock_policy::gateway::config::NamedPolicy;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The gateway credential tests configure on both sides.
pub const CREDENTIAL: &str = "test-gateway-credential";

/// The service runs on its own thread and runtime, so stopping it drops every
/// connection it holds, as a crashed process would.
pub struct Approvals {
    service: Arc<ApprovalService<SqliteStore>>,
    server: String,
    policies: Vec<NamedPolicy>,
    jwks_url: String,
    pub port: u16,
    pub url: String,
    pub audit_log: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Holds the store and audit log; moved to the new service on restart.
    dir: Option<tempfile::TempDir>,
}

impl Approvals {
    /// Serves approvals for `server` (`namespace/name`) under `policies`,
    /// trusting the test issuer.
    pub async fn start(
        issuer: &Issuer,
        server: &str,
        policies: Vec<NamedPolicy>,
    ) -> anyhow::Result<Approvals> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-approvals-")
            .tempdir()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Approvals::serve(issuer.jwks_url.clone(), server, policies, dir, listener)
    }

    /// Stops the service and starts a new one on the same port, store and
    /// audit log, as a restarted process would.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let catalog = self.policies.clone();
        let dir = self
            .dir
            .take()
            .ok_or_else(|| anyhow::anyhow!("the service's directory is gone"))?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port))?;
        *self = Approvals::serve(
            self.jwks_url.clone(),
            &self.server.clone(),
            catalog,
            dir,
            listener,
        )?;
        Ok(())
    }

    fn serve(
        jwks_url: String,
        server: &str,
        policies: Vec<NamedPolicy>,
        dir: tempfile::TempDir,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<Approvals> {
        let store = SqliteStore::open(&dir.path().join("approvals.db"))?;
        let audit_log = dir.path().join("audit.jsonl");
        let config = ServiceConfig {
            trust: TrustConfig::tenant(TENANT, AUDIENCE),
            jwks: vec![(TENANT.into(), jwks_url.clone())],
            gateway_credential: CREDENTIAL.into(),
            max_pending_per_principal: 20,
            jwks_min_refresh: Duration::from_secs(1),
        };
        let catalog = catalog(server, policies.clone())?;
        let service = ApprovalService::new(store, config, catalog, AuditLog::open(&audit_log)?)
            .map_err(anyhow::Error::msg)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let router = service.router();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    _ = axum::serve(listener, router) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here cancels every connection task.
        });
        Ok(Approvals {
            service,
            server: server.into(),
            policies,
            jwks_url,
            port,
            url: format!("http://127.0.0.1:{port}"),
            audit_log,
            shutdown: Some(shutdown),
            thread: Some(thread),
            dir: Some(dir),
        })
    }
}

fn catalog(server: &str, policies: Vec<NamedPolicy>) -> anyhow::Result<Catalog> {
    let servers = vec![ServerEntry {
        name: server.into(),
        labels: Default::default(),
    }];
    Catalog::new(servers, policies).map_err(anyhow::Error::msg)
}

impl Approvals {
    /// Puts `policies` in force; gateways learn of them through their config long-poll.
    pub fn set_policies(&mut self, policies: Vec<NamedPolicy>) -> anyhow::Result<()> {
        self.service
            .set_catalog(catalog(&self.server, policies.clone())?);
        self.policies = policies;
        Ok(())
    }

    /// Stops serving and closes every connection, as an outage would.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Approvals {
    fn drop(&mut self) {
        self.stop();
    }
}
