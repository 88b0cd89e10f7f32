//! The harness's API server authenticates people the way AKS with Entra ID
//! does: a webhook token authenticator (Guard on AKS) answers its
//! `TokenReview`s for Entra tokens of the cluster's own audience, and hands
//! the API server the user as `username` = the UPN (the object ID for a
//! service principal), `extra["oid"]` = the object ID, `groups` = the group
//! object IDs, and no `uid`.
//!
//! The tokens come from a development issuer whose key is kept in the
//! control plane's directory ([`Guard::issuer`]), so a test mints a kubectl
//! token for the same person (tenant, object ID, groups) it mints MCP tokens
//! for with the gateway's issuer. It serves HTTPS on 127.0.0.1 from a thread
//! of its own, for as long as the control plane lives.

use airlock_operator::dev_issuer::{DevIssuer, TokenRequest};
use airlock_operator::tls::{Authority, TlsListener};
use airlock_policy::entra::{self, TrustConfig};
use airlock_policy::jwt::{self, JwkSet};
use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The audience of a kubectl token on AKS: the AKS server application.
pub const CLUSTER_AUDIENCE: &str = "6dae42f8-4368-4678-94ff-3960e28e3630";

const KEY_FILE: &str = "guard-issuer.key";
const WEBHOOK_CONFIG: &str = "guard-webhook.kubeconfig";

pub struct Guard {
    issuer: Arc<DevIssuer>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    config: PathBuf,
}

struct Reviewer {
    issuer: Arc<DevIssuer>,
    trust: TrustConfig,
}

impl Guard {
    /// Serves TokenReviews for `tenant`'s people, signing with the key kept
    /// in `dir` (made the first time), and writes the API server's webhook
    /// configuration there.
    pub fn start(tenant: &str, dir: &Path) -> anyhow::Result<Guard> {
        let issuer = Arc::new(DevIssuer::persistent(tenant, &dir.join(KEY_FILE))?);
        let mut trust = TrustConfig::tenant(tenant, CLUSTER_AUDIENCE);
        // AKS authenticates service principals too.
        trust.allow_app_only = true;
        let reviewer = Arc::new(Reviewer {
            issuer: issuer.clone(),
            trust,
        });

        let authority = Authority::generate()?;
        let tls = authority.serving_config(&["127.0.0.1".to_string()])?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("guard".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => return eprintln!("guard: no runtime: {e}"),
                };
                runtime.block_on(async move {
                    let served = async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        let router = axum::Router::new()
                            .route("/authenticate", post(review))
                            .with_state(reviewer);
                        axum::serve(TlsListener::new(listener, tls)?, router).await
                    };
                    tokio::select! {
                        served = served => if let Err(e) = served { eprintln!("guard: {e}") },
                        _ = stop => {}
                    }
                });
            })?;

        let config = dir.join(WEBHOOK_CONFIG);
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "guard", "cluster": {
                "server": format!("https://{address}/authenticate"),
                "certificate-authority-data": base64_of(authority.ca_pem.as_bytes()),
            }}],
            "users": [{"name": "kube-apiserver", "user": {}}],
            "contexts": [{"name": "guard", "context": {"cluster": "guard", "user": "kube-apiserver"}}],
            "current-context": "guard",
        });
        std::fs::write(&config, serde_yaml::to_string(&kubeconfig)?)
            .with_context(|| format!("writing {}", config.display()))?;
        Ok(Guard {
            issuer,
            shutdown: Some(shutdown),
            thread: Some(thread),
            config,
        })
    }

    /// The API server's `--authentication-token-webhook-config-file`.
    pub fn webhook_config(&self) -> &Path {
        &self.config
    }

    /// The tenant's issuer, whose kubectl tokens the API server accepts;
    /// its keys (also rotated ones) are what the reviews check.
    pub fn issuer(&self) -> &Arc<DevIssuer> {
        &self.issuer
    }

    /// A kubectl token for a person: `oid`, signing in as `upn`, in `groups`.
    pub fn token(&self, oid: &str, upn: &str, groups: &[&str]) -> anyhow::Result<String> {
        let mut request = TokenRequest::user(oid, upn, CLUSTER_AUDIENCE);
        request.groups = groups.iter().map(|g| g.to_string()).collect();
        Ok(self.issuer.mint(&request)?)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One TokenReview, answered as Guard answers it.
async fn review(State(reviewer): State<Arc<Reviewer>>, Json(review): Json<Value>) -> Json<Value> {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let status = match reviewer.authenticate(token) {
        Ok(user) => json!({"authenticated": true, "user": user}),
        Err(reason) => json!({"authenticated": false, "error": reason}),
    };
    Json(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "status": status,
    }))
}

impl Reviewer {
    fn authenticate(&self, token: &str) -> Result<Value, String> {
        let decoded = jwt::decode(token).map_err(|e| e.to_string())?;
        let published = self.issuer.jwks().map_err(|e| e.to_string())?;
        let keys = serde_json::to_vec(&published)
            .map_err(|e| e.to_string())
            .and_then(|json| JwkSet::from_json(&json).map_err(|e| e.to_string()))?;
        decoded.verify(&keys).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let principal =
            entra::principal(&decoded.claims, &self.trust, now).map_err(|e| e.to_string())?;
        let username = if principal.app_only {
            principal.object_id.clone()
        } else {
            principal.display_name.clone()
        };
        Ok(json!({
            "username": username,
            "groups": principal.groups,
            "extra": {"oid": [principal.object_id]},
        }))
    }
}
