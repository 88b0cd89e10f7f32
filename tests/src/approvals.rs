//! The real approval service on 127.0.0.1, as `airlock up` (SQLite store) or
//! the operator (Kubernetes store) runs it.

use crate::issuer::{AUDIENCE, Issuer, TENANT};
use airlock_operator::approvals::service::{
    Api, ApprovalService, Catalog, GatewayCredentials, ServiceConfig,
};
use airlock_operator::approvals::store::{SqliteStore, Store};
use airlock_operator::audit::trail::AuditLog;
use airlock_policy::entra::TrustConfig;
use airlock_policy::gateway::config::NamedPolicy;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The gateway credential tests configure on both sides.
pub const CREDENTIAL: &str = "test-gateway-credential";

/// Opens the store in the service's directory, on the service's runtime (so
/// a client it holds dies with the service, as in a restarted process).
pub type OpenStore<S> = Arc<dyn Fn(PathBuf) -> BoxFuture<'static, anyhow::Result<S>> + Send + Sync>;

/// The service runs on its own thread and runtime, so stopping it drops every
/// connection it holds, as a crashed process would.
pub struct Approvals<S: Store = SqliteStore> {
    service: Arc<ApprovalService<S>>,
    open_store: OpenStore<S>,
    server: String,
    policies: Vec<NamedPolicy>,
    jwks_url: String,
    pub port: u16,
    pub url: String,
    pub audit_log: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Holds the audit log (and the SQLite store); moved to the new service on restart.
    dir: Option<tempfile::TempDir>,
}

impl Approvals<SqliteStore> {
    /// Serves approvals for `server` (`namespace/name`) under `policies` on a
    /// SQLite store, trusting the test issuer.
    pub async fn start(
        issuer: &Issuer,
        server: &str,
        policies: Vec<NamedPolicy>,
    ) -> anyhow::Result<Approvals> {
        let open: OpenStore<SqliteStore> = Arc::new(|dir: PathBuf| {
            Box::pin(async move { Ok(SqliteStore::open(&dir.join("approvals.db"))?) })
        });
        Approvals::start_on(issuer, server, policies, open).await
    }
}

impl<S: Store> Approvals<S> {
    /// Like [`Approvals::start`], on the store `open_store` opens.
    pub async fn start_on(
        issuer: &Issuer,
        server: &str,
        policies: Vec<NamedPolicy>,
        open_store: OpenStore<S>,
    ) -> anyhow::Result<Approvals<S>> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-approvals-")
            .tempdir()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Approvals::serve(
            issuer.jwks_url.clone(),
            server,
            policies,
            open_store,
            dir,
            listener,
        )
    }

    /// Stops the service and starts a new one on the same port, store and
    /// audit log, as a restarted process would.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let dir = self
            .dir
            .take()
            .ok_or_else(|| anyhow::anyhow!("the service's directory is gone"))?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port))?;
        *self = Approvals::serve(
            self.jwks_url.clone(),
            &self.server.clone(),
            self.policies.clone(),
            self.open_store.clone(),
            dir,
            listener,
        )?;
        Ok(())
    }

    fn serve(
        jwks_url: String,
        server: &str,
        policies: Vec<NamedPolicy>,
        open_store: OpenStore<S>,
        dir: tempfile::TempDir,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<Approvals<S>> {
        let audit_log = dir.path().join("audit.jsonl");
        let config = ServiceConfig {
            trust: TrustConfig::tenant(TENANT, AUDIENCE),
            people: TrustConfig::tenant(TENANT, AUDIENCE),
            approver_access: None,
            notifier: None,
            jwks: vec![(TENANT.into(), jwks_url.clone())],
            gateway_credentials: GatewayCredentials::Shared(CREDENTIAL.into()),
            max_pending_per_principal: 20,
            jwks_min_refresh: Duration::from_secs(1),
        };
        let catalog = catalog(server, policies.clone())?;
        let audit = AuditLog::open(&audit_log)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, service) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let store_dir = dir.path().to_path_buf();
        let opener = open_store.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let built = async {
                    let store = opener(store_dir).await?;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let service = ApprovalService::new(store, config, catalog, audit)
                        .map_err(anyhow::Error::msg)?;
                    anyhow::Ok((service, listener))
                };
                match built.await {
                    Ok((service, listener)) => {
                        let _ = started.send(Ok(service.clone()));
                        tokio::select! {
                            _ = service.serve(vec![(Api::All, listener.into())]) => {}
                            _ = stopped => {}
                        }
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            });
            // Dropping the runtime here cancels every connection task.
        });
        let service = service.recv().map_err(|_| {
            anyhow::anyhow!("the approval service's thread ended before it started")
        })??;
        Ok(Approvals {
            service,
            open_store,
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
    let servers = vec![airlock_policy::gateway::config::Governed {
        name: server.into(),
        ..Default::default()
    }];
    Catalog::new(servers, policies).map_err(anyhow::Error::msg)
}

impl<S: Store> Approvals<S> {
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

impl<S: Store> Drop for Approvals<S> {
    fn drop(&mut self) {
        self.stop();
    }
}
