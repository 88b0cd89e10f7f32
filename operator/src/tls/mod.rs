//! The operator's own certificate authority and the TLS its APIs are
//! served with. The CA lives in the Secret `airlock-ca` of the operator's
//! namespace, made by the first replica to start; every replica issues
//! itself serving certificates from it (their keys never leave the process)
//! and issues new ones before they expire or when the CA changes. Sidecars
//! and the API server trust the CA's bundle — the signing CA, and during a
//! rotation ([`rotation`]) the next or the previous one — checking the
//! service's name.

pub mod issued;
pub mod rotation;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The Secret holding the CA: `ca.crt` and `ca.key`, PEM (and during a
/// rotation `next.crt`, `next.key` or `previous.crt`).
pub const CA_SECRET: &str = "airlock-ca";
/// How long a serving certificate is valid; a new one is issued after half.
const SERVING_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a CA is valid; [`rotation`] replaces it well before.
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
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

/// The operator's CA: the one that signs, and every one to trust.
pub struct Authority {
    /// The signing CA's certificate (PEM).
    pub ca_pem: String,
    /// What clients trust: the signing CA, and the next or the previous one
    /// while a rotation runs (PEM, concatenated).
    pub trust_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Certificates (PEM) as one bundle, each on lines of its own.
pub fn bundle(pems: &[&str]) -> String {
    pems.iter()
        .map(|pem| format!("{}\n", pem.trim_end()))
        .collect()
}

/// Tells the bundle's watchers of `bundle` when it differs from what they have.
fn publish(trust: &tokio::sync::watch::Sender<String>, bundle: &str) {
    trust.send_if_modified(|current| {
        let modified = current != bundle;
        if modified {
            *current = bundle.to_string();
        }
        modified
    });
}

/// A field of the CA Secret, as text.
fn secret_field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .and_then(|ByteString(bytes)| String::from_utf8(bytes.clone()).ok())
}

impl Authority {
    /// The CA in `namespace`'s Secret, made if no replica has made it yet.
    pub async fn load_or_create(client: kube::Client, namespace: &str) -> Result<Authority, Error> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        loop {
            if let Some(secret) = secrets.get_opt(CA_SECRET).await? {
                return Authority::from_secret(&secret, namespace);
            }
            let ca = new_ca()?;
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": CA_SECRET, "namespace": namespace,
                    "annotations": {rotation::EXPIRES: ca.expires}},
                "stringData": {"ca.crt": ca.certificate, "ca.key": ca.key},
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

    /// The CA a Secret of `namespace` holds.
    pub fn from_secret(secret: &Secret, namespace: &str) -> Result<Authority, Error> {
        let field = |key: &'static str| {
            secret_field(secret, key)
                .ok_or_else(|| Error::Incomplete(format!("{namespace}/{CA_SECRET}"), key))
        };
        let mut authority = Authority::from_pem(field("ca.crt")?, &field("ca.key")?)?;
        let others: Vec<String> = ["next.crt", "previous.crt"]
            .iter()
            .filter_map(|other| secret_field(secret, other))
            .collect();
        let mut trusted = vec![authority.ca_pem.as_str()];
        trusted.extend(others.iter().map(String::as_str));
        authority.trust_pem = bundle(&trusted);
        Ok(authority)
    }

    /// A new CA of its own, kept nowhere (tests, and servers that need no
    /// replica to share it).
    pub fn generate() -> Result<Authority, Error> {
        let ca = new_ca()?;
        Authority::from_pem(ca.certificate, &ca.key)
    }

    fn from_pem(ca_pem: String, key_pem: &str) -> Result<Authority, Error> {
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Authority {
            trust_pem: ca_pem.clone(),
            ca_pem,
            issuer,
        })
    }

    /// A fresh key and a certificate for `names`.
    fn issue(&self, names: &[String]) -> Result<Arc<CertifiedKey>, Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + SERVING_VALIDITY;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![certificate.der().clone()],
            signing,
        )))
    }

    /// A server configuration with a fixed certificate for `names`.
    pub fn serving_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, Error> {
        ServingCertificate::issue(self, names)?.config()
    }
}

/// A replica's certificate for some names, replaced in place: connections
/// made after [`ServingCertificate::renew`] get the new one.
pub struct ServingCertificate {
    names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, Instant)>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("names", &self.names)
            .finish()
    }
}

impl ServingCertificate {
    pub fn issue(
        authority: &Authority,
        names: &[String],
    ) -> Result<Arc<ServingCertificate>, Error> {
        Ok(Arc::new(ServingCertificate {
            names: names.to_vec(),
            current: RwLock::new((authority.issue(names)?, Instant::now())),
        }))
    }

    /// Serves what another issuer issued (see [`issued`]).
    pub fn from_issued(issue: &issued::Issued) -> Result<Arc<ServingCertificate>, Error> {
        Ok(Arc::new(ServingCertificate {
            names: Vec::new(),
            current: RwLock::new((issue.certified_key()?, Instant::now())),
        }))
    }

    /// A new certificate from `authority`.
    pub fn renew(&self, authority: &Authority) -> Result<(), Error> {
        self.set(authority.issue(&self.names)?);
        Ok(())
    }

    /// Serves `issue` from now on.
    pub fn replace(&self, issue: &issued::Issued) -> Result<(), Error> {
        self.set(issue.certified_key()?);
        Ok(())
    }

    fn set(&self, certified: Arc<CertifiedKey>) {
        if let Ok(mut current) = self.current.write() {
            *current = (certified, Instant::now());
        }
    }

    /// Whether half of the certificate's life is gone.
    pub fn aging(&self) -> bool {
        self.current
            .read()
            .map(|current| current.1.elapsed() > SERVING_VALIDITY / 2)
            .unwrap_or(true)
    }

    /// A server configuration serving whatever certificate is current.
    pub fn config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, Error> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.0.clone())
    }
}

/// Where a replica's serving certificates come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The operator's own CA, in the Secret [`CA_SECRET`], rotated by the leader.
    OwnCa,
    /// A `kubernetes.io/tls` Secret of this name that another issuer
    /// (cert-manager) keeps: see [`issued`].
    Issued(String),
}

/// What a replica serves its TLS APIs with and what clients are to trust.
pub struct Serving {
    /// The gateways' API's certificate, when it is served over TLS.
    pub gateways: Option<Arc<ServingCertificate>>,
    pub webhook: Arc<ServingCertificate>,
    /// The bundle sidecars and the API server trust, as it changes.
    pub trusted: tokio::sync::watch::Receiver<String>,
}

/// The keeping of [`Serving`] current, every replica's: run it for as long as it serves.
pub type Keeping = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Serving {
    /// Certificates for `gateways_host` (when the gateways' API is served
    /// over TLS) and `webhook_host`, from `source`.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        source: &Source,
        gateways_host: Option<&str>,
        webhook_host: &str,
        overlap: Duration,
    ) -> Result<(Serving, Keeping), Error> {
        match source {
            Source::OwnCa => {
                let authority = Authority::load_or_create(client.clone(), namespace).await?;
                let gateways = gateways_host
                    .map(|host| ServingCertificate::issue(&authority, &[host.to_string()]))
                    .transpose()?;
                let webhook = ServingCertificate::issue(&authority, &[webhook_host.to_string()])?;
                let (trust, trusted) = tokio::sync::watch::channel(authority.trust_pem.clone());
                let keeping = rotation::follow(
                    client,
                    namespace.to_string(),
                    gateways.iter().chain([&webhook]).cloned().collect(),
                    trust,
                );
                let serving = Serving {
                    gateways,
                    webhook,
                    trusted,
                };
                Ok((serving, Box::pin(keeping)))
            }
            Source::Issued(name) => {
                // One certificate names both: the chart's Certificate lists them.
                let secrets: Api<Secret> = Api::namespaced(client, namespace);
                let first = issued::first_issue(&secrets, name).await;
                let certificate = ServingCertificate::from_issued(&first)?;
                let following = issued::Following::new(first);
                let (trust, trusted) = tokio::sync::watch::channel(following.trust_pem());
                let keeping = issued::follow(
                    secrets,
                    name.clone(),
                    following,
                    vec![certificate.clone()],
                    trust,
                    overlap,
                );
                let serving = Serving {
                    gateways: gateways_host.map(|_| certificate.clone()),
                    webhook: certificate,
                    trusted,
                };
                Ok((serving, Box::pin(keeping)))
            }
        }
    }
}

/// The leader's part of keeping certificates: rotating the operator's own
/// CA; nothing while another issuer keeps them.
pub async fn lead(client: kube::Client, namespace: String, source: Source, overlap: Duration) {
    match source {
        Source::OwnCa => rotation::drive(client, namespace, overlap).await,
        Source::Issued(_) => std::future::pending().await,
    }
}

/// A new self-signed CA.
pub(crate) struct NewCa {
    pub certificate: String,
    pub key: String,
    /// When it expires (RFC 3339).
    pub expires: String,
}

pub(crate) fn new_ca() -> Result<NewCa, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let now = time::OffsetDateTime::now_utc();
    // Each CA its own name: while two are trusted, a verifier that looks an
    // issuer up by name must find the one that signed.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("airlock-operator-ca {}", now.unix_timestamp_nanos()),
    );
    params.not_before = now - time::Duration::minutes(5);
    let expires = now + CA_VALIDITY;
    params.not_after = expires;
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok(NewCa {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
        expires: airlock_policy::audit::rfc3339(expires.unix_timestamp().max(0) as u64),
    })
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
