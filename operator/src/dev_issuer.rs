//! A development token issuer shaped like Entra ID.
//!
//! Entra cannot be reached from a test machine or a laptop demo, so this
//! issuer mints access tokens with Entra's exact v1 and v2 claim sets from its
//! own RSA keys and serves them as a JWKS. The gateway verifies them with the
//! production code path; only the key set's URL differs. Nothing trusts this
//! issuer unless configured to.

use airlock_policy::entra::{TokenVersion, v1_issuer, v2_issuer};
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IssuerError {
    #[error("RSA key generation failed: {0}")]
    KeyGeneration(#[from] rsa::Error),
    #[error("RSA key encoding failed: {0}")]
    KeyEncoding(#[from] rsa::pkcs1::Error),
    #[error("signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
    #[error("the issuer's key list is unavailable (a thread panicked holding it)")]
    Poisoned,
    #[error("serving the key set failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error("signing key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: String) -> Result<SigningKey, IssuerError> {
        SigningKey::from_private(
            kid,
            &rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?,
        )
    }

    fn from_private(kid: String, private: &rsa::RsaPrivateKey) -> Result<SigningKey, IssuerError> {
        let der = private.to_pkcs1_der()?;
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        })
    }
}

/// Who a token is for and what it carries. Defaults give a v2 user token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub version: TokenVersion,
    /// User object id (or the service principal's, for app-only tokens).
    pub oid: String,
    /// `upn` (v1) / `preferred_username` (v2); empty for app-only tokens.
    pub username: String,
    pub name: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// The client application (`appid` / `azp`).
    pub app_id: String,
    pub audience: String,
    /// A token an application obtained for itself: no `scp`, `idtyp: app`.
    pub app_only: bool,
    pub lifetime_seconds: u64,
    /// Claims to add or replace after the standard ones (attack tests use this).
    pub overrides: Map<String, Value>,
}

impl TokenRequest {
    /// A user token with the default audience, scope and app of the issuer.
    pub fn user(oid: &str, username: &str, audience: &str) -> TokenRequest {
        TokenRequest {
            version: TokenVersion::V2,
            oid: oid.to_string(),
            username: username.to_string(),
            name: username.split('@').next().unwrap_or(username).to_string(),
            groups: Vec::new(),
            roles: Vec::new(),
            scopes: vec!["mcp.call".into()],
            app_id: DEFAULT_CLIENT_APP.into(),
            audience: audience.to_string(),
            app_only: false,
            lifetime_seconds: 3600,
            overrides: Map::new(),
        }
    }
}

/// The client id the development issuer puts in tokens unless told otherwise.
pub const DEFAULT_CLIENT_APP: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

/// A development issuer for one tenant, with rotatable signing keys.
pub struct DevIssuer {
    tenant: String,
    keys: RwLock<Vec<SigningKey>>,
    next_key: std::sync::atomic::AtomicU32,
    /// Key sets served by [`DevIssuer::serve`]: how often gateways fetched.
    served: std::sync::atomic::AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DevIssuer {
    /// A new issuer for `tenant` with one fresh signing key.
    pub fn new(tenant: &str) -> Result<DevIssuer, IssuerError> {
        let issuer = DevIssuer {
            tenant: tenant.to_string(),
            keys: RwLock::new(Vec::new()),
            next_key: std::sync::atomic::AtomicU32::new(1),
            served: std::sync::atomic::AtomicU64::new(0),
        };
        issuer.rotate()?;
        Ok(issuer)
    }

    /// An issuer for `tenant` signing with the key kept in `path` (PKCS#1
    /// PEM, owner-only), created on first use, so that tokens stay valid
    /// across restarts and every local command signs with the same key.
    pub fn persistent(tenant: &str, path: &Path) -> Result<DevIssuer, IssuerError> {
        let file_error = |reason: String| IssuerError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let private = match std::fs::read_to_string(path) {
            Ok(pem) => rsa::RsaPrivateKey::from_pkcs1_pem(&pem)
                .map_err(|e| file_error(format!("not an RSA private key: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
                let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| file_error(e.to_string()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| file_error(e.to_string()))?;
                file.write_all(pem.as_bytes())
                    .map_err(|e| file_error(e.to_string()))?;
                private
            }
            Err(e) => return Err(file_error(e.to_string())),
        };
        // The key id names the key, so it stays the same across restarts.
        let modulus = private.to_public_key().n().to_bytes_be();
        let kid = format!(
            "local-{}",
            &airlock_policy::canonical::sha256_hex(&modulus)["sha256:".len()..][..16]
        );
        Ok(DevIssuer {
            tenant: tenant.to_string(),
            keys: RwLock::new(vec![SigningKey::from_private(kid, &private)?]),
            next_key: std::sync::atomic::AtomicU32::new(1),
            served: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Adds a new signing key and signs with it from now on; older keys stay
    /// published (as Entra does during a roll) until [`retire`](Self::retire)d.
    pub fn rotate(&self) -> Result<String, IssuerError> {
        let n = self
            .next_key
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = SigningKey::generate(format!("dev-key-{n}"))?;
        let kid = key.kid.clone();
        self.keys
            .write()
            .map_err(|_| IssuerError::Poisoned)?
            .push(key);
        Ok(kid)
    }

    /// Stops publishing a key.
    pub fn retire(&self, kid: &str) -> Result<(), IssuerError> {
        self.keys
            .write()
            .map_err(|_| IssuerError::Poisoned)?
            .retain(|k| k.kid != kid);
        Ok(())
    }

    /// How many key sets [`DevIssuer::serve`] has served.
    pub fn key_sets_served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The published key set.
    pub fn jwks(&self) -> Result<Value, IssuerError> {
        let keys = self.keys.read().map_err(|_| IssuerError::Poisoned)?;
        Ok(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}))
    }

    /// The claims Entra would put in such a token.
    pub fn claims(&self, request: &TokenRequest) -> Map<String, Value> {
        let now = now();
        let mut claims = Map::new();
        let mut put = |k: &str, v: Value| {
            claims.insert(k.to_string(), v);
        };
        put("aud", json!(request.audience));
        put(
            "iss",
            json!(match request.version {
                TokenVersion::V1 => v1_issuer(&self.tenant),
                TokenVersion::V2 => v2_issuer(&self.tenant),
            }),
        );
        put("iat", json!(now));
        put("nbf", json!(now));
        put("exp", json!(now + request.lifetime_seconds));
        put("aio", json!("dev-issuer"));
        match request.version {
            TokenVersion::V1 => {
                put("appid", json!(request.app_id));
                put("appidacr", json!("0"));
            }
            TokenVersion::V2 => {
                put("azp", json!(request.app_id));
                put("azpacr", json!("0"));
            }
        }
        if !request.groups.is_empty() {
            put("groups", json!(request.groups));
        }
        if !request.roles.is_empty() {
            put("roles", json!(request.roles));
        }
        put("oid", json!(request.oid));
        put("sub", json!(format!("{}-{}", request.oid, request.app_id)));
        put("tid", json!(self.tenant));
        put("uti", json!(format!("uti-{now}")));
        put("rh", json!("0.dev."));
        if request.app_only {
            put("idtyp", json!("app"));
        } else {
            put("idtyp", json!("user"));
            put("name", json!(request.name));
            put("scp", json!(request.scopes.join(" ")));
            match request.version {
                TokenVersion::V1 => {
                    put("upn", json!(request.username));
                    put("unique_name", json!(request.username));
                }
                TokenVersion::V2 => put("preferred_username", json!(request.username)),
            }
        }
        put(
            "ver",
            json!(match request.version {
                TokenVersion::V1 => "1.0",
                TokenVersion::V2 => "2.0",
            }),
        );
        for (k, v) in &request.overrides {
            claims.insert(k.clone(), v.clone());
        }
        claims
    }

    /// Mints a signed token for `request` with the current key.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, IssuerError> {
        self.sign(&Value::Object(self.claims(request)))
    }

    /// Signs arbitrary claims with the current key (RS256, with `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, IssuerError> {
        let keys = self.keys.read().map_err(|_| IssuerError::Poisoned)?;
        let key = keys.last().ok_or(IssuerError::Poisoned)?;
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": key.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::RS256)?;
        Ok(format!("{input}.{signature}"))
    }

    /// Serves the key set at Entra's path (`/{tenant}/discovery/v2.0/keys`) and
    /// at `/keys` on `listener` until the returned task is aborted.
    pub fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), IssuerError> {
        let addr = listener.local_addr()?;
        let jwks_path = format!("/{}/discovery/v2.0/keys", self.tenant);
        let keys = |issuer: Arc<DevIssuer>| {
            move || async move {
                issuer
                    .served
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match issuer.jwks() {
                    Ok(jwks) => (axum::http::StatusCode::OK, axum::Json(jwks)),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!({"error": e.to_string()})),
                    ),
                }
            }
        };
        let app = Router::new()
            .route(&jwks_path, get(keys(self.clone())))
            .route("/keys", get(keys(self.clone())));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("development issuer stopped: {e}");
            }
        });
        Ok((addr, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_policy::entra::{TrustConfig, principal};
    use airlock_policy::jwt::{JwkSet, decode};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn verify(issuer: &DevIssuer, token: &str) -> airlock_policy::entra::Principal {
        let keys = JwkSet::from_json(issuer.jwks().unwrap().to_string().as_bytes()).unwrap();
        let decoded = decode(token).unwrap();
        decoded.verify(&keys).unwrap();
        let config = TrustConfig {
            allow_app_only: true,
            ..TrustConfig::tenant(TENANT, "api://airlock")
        };
        principal(&decoded.claims, &config, now()).unwrap()
    }

    #[test]
    fn minted_tokens_verify_with_the_production_code() {
        let issuer = DevIssuer::new(TENANT).unwrap();
        let mut request = TokenRequest::user("oid-ada", "ada@contoso.com", "api://airlock");
        request.groups = vec!["engineers".into()];
        for version in [TokenVersion::V1, TokenVersion::V2] {
            request.version = version;
            let p = verify(&issuer, &issuer.mint(&request).unwrap());
            assert_eq!(p.object_id, "oid-ada");
            assert_eq!(p.display_name, "ada@contoso.com");
            assert_eq!(p.groups, vec!["engineers"]);
            assert_eq!(p.app_id, DEFAULT_CLIENT_APP);
            assert_eq!(p.version, version);
        }
        request.app_only = true;
        assert!(verify(&issuer, &issuer.mint(&request).unwrap()).app_only);
    }

    #[test]
    fn a_persistent_issuer_signs_with_the_same_key_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer/key.pem");
        let first = DevIssuer::persistent(TENANT, &path).unwrap();
        let token = first
            .mint(&TokenRequest::user("oid", "u@contoso.com", "api://airlock"))
            .unwrap();
        let again = DevIssuer::persistent(TENANT, &path).unwrap();
        assert_eq!(first.jwks().unwrap(), again.jwks().unwrap());
        verify(&again, &token);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            DevIssuer::persistent(TENANT, &path),
            Err(IssuerError::KeyFile { .. })
        ));
    }

    #[test]
    fn rotation_keeps_old_keys_until_retired() {
        let issuer = DevIssuer::new(TENANT).unwrap();
        let request = TokenRequest::user("oid", "u@contoso.com", "api://airlock");
        let old = issuer.mint(&request).unwrap();
        let new_kid = issuer.rotate().unwrap();
        let new = issuer.mint(&request).unwrap();
        assert_eq!(decode(&new).unwrap().header.kid, new_kid);
        verify(&issuer, &old);
        issuer.retire("dev-key-1").unwrap();
        let keys = JwkSet::from_json(issuer.jwks().unwrap().to_string().as_bytes()).unwrap();
        assert!(decode(&old).unwrap().verify(&keys).is_err());
        verify(&issuer, &new);
    }
}
