//! The development token issuer, serving its key set over HTTP on 127.0.0.1
//! (or the node's address).

use airlock_operator::dev_issuer::DevIssuer;
use std::sync::Arc;

/// A test tenant id; only the development issuer uses it.
pub const TENANT: &str = "5e1d0c0a-7e57-4e57-a11c-000000000001";
/// The audience the test gateway accepts.
pub const AUDIENCE: &str = "api://airlock-test";
/// The audience of the approval service's people's API: never an MCP server's.
pub const PEOPLE_AUDIENCE: &str = "api://airlock-test-approvals";

pub struct Issuer {
    pub issuer: Arc<DevIssuer>,
    /// Entra's JWKS path for the tenant, on this issuer.
    pub jwks_url: String,
    /// Path of that URL, and the port the issuer listens on.
    pub jwks_path: String,
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    pub async fn start() -> anyhow::Result<Issuer> {
        Issuer::start_on(std::net::Ipv4Addr::LOCALHOST).await
    }

    /// The issuer on `address` (the node's, so that pods fetch its keys).
    pub async fn start_on(address: std::net::Ipv4Addr) -> anyhow::Result<Issuer> {
        Issuer::serve_on(Arc::new(DevIssuer::new(TENANT)?), address).await
    }

    /// `issuer`'s key set served on `address`: the tenant whose keys also
    /// sign the cluster's kubectl tokens ([`crate::guard::Guard::issuer`]),
    /// as one Entra tenant signs every audience's tokens.
    pub async fn serve_on(
        issuer: Arc<DevIssuer>,
        address: std::net::Ipv4Addr,
    ) -> anyhow::Result<Issuer> {
        let listener = tokio::net::TcpListener::bind((address, 0)).await?;
        let (addr, task) = issuer.serve(listener)?;
        let jwks_path = jwks_path();
        Ok(Issuer {
            issuer,
            jwks_url: format!("http://{addr}{jwks_path}"),
            jwks_path,
            port: addr.port(),
            task,
        })
    }
}

impl Issuer {
    /// Stops serving the key set: the endpoint refuses connections.
    pub fn stop_serving(&self) {
        self.task.abort();
    }
}

/// Where Entra publishes the test tenant's key set, as a path.
pub fn jwks_path() -> String {
    format!("/{TENANT}/discovery/v2.0/keys")
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
