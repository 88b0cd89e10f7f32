//! The operator's own certificate authority and the TLS its gateways' API
//! is served with. The CA lives in a Secret of the operator's namespace,
//! made by the first replica to start; every replica issues itself a
//! serving certificate from it at start (its key never leaves the
//! process), and sidecars trust that CA only, checking the service's name.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The Secret holding the CA: `ca.crt` and `ca.key`, PEM.
pub const CA_SECRET: &str = "airlock-ca";
/// How long a serving certificate is valid; a replica restarted within it
/// issues itself a new one anyway.
const SERVING_DAYS: i64 = 365;
/// How long the CA is valid.
const CA_DAYS: i64 = 10 * 365;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("secret {0} has no {1}")]
    Incomplete(String, &'static str),
    #[error("certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The operator's CA.
pub struct Authority {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// The CA in `namespace`'s Secret, made if no replica has made it yet.
    pub async fn load_or_create(client: kube::Client, namespace: &str) -> Result<Authority, Error> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        loop {
            if let Some(secret) = secrets.get_opt(CA_SECRET).await? {
                let field = |key: &'static str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|data| data.get(key))
                        .and_then(|ByteString(bytes)| String::from_utf8(bytes.clone()).ok())
                        .ok_or_else(|| Error::Incomplete(format!("{namespace}/{CA_SECRET}"), key))
                };
                return Authority::from_pem(field("ca.crt")?, &field("ca.key")?);
            }
            let (ca_pem, key_pem) = new_ca()?;
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": CA_SECRET, "namespace": namespace},
                "stringData": {"ca.crt": ca_pem, "ca.key": key_pem},
            }))
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                // Another replica made it first: use theirs.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A new CA of its own, kept nowhere (tests, and servers that need no
    /// replica to share it).
    pub fn generate() -> Result<Authority, Error> {
        let (ca_pem, key_pem) = new_ca()?;
        Authority::from_pem(ca_pem, &key_pem)
    }

    fn from_pem(ca_pem: String, key_pem: &str) -> Result<Authority, Error> {
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Authority { ca_pem, issuer })
    }

    /// A fresh key and a certificate for `names`, as a server configuration.
    pub fn serving_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(SERVING_DAYS);
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.der().clone()], key_der)?;
        Ok(Arc::new(config))
    }
}

/// A new self-signed CA: (certificate, key), PEM.
fn new_ca() -> Result<(String, String), Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "airlock-operator-ca");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(CA_DAYS);
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// Connections on a TCP listener, handed out once their TLS handshake is
/// done. Handshakes run on their own tasks, so a client that stalls in one
/// holds up nobody else.
pub struct TlsListener {
    local: SocketAddr,
    handshaken: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (sender, handshaken) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause, as axum does.
                        crate::log::error("tls", &format!("accepting a connection: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            crate::log::error("tls", &format!("handshake with {peer}: {e}"))
                        }
                        Err(_) => {
                            crate::log::error("tls", &format!("handshake with {peer} timed out"))
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            handshaken,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accepting task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
