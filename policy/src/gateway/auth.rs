//! Who is calling: bearer token → verified principal, with a bounded cache so
//! the steady state never repeats the RSA verification.

use super::config::FilterConfig;
use super::reply::{Reply, insufficient_scope, unauthorized};
use crate::entra::{ClaimsError, Principal, TrustConfig, principal, trusted_issuer};
use crate::jwt::{JwkSet, TokenError, decode};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use thiserror::Error;

/// The signing keys known for each trusted tenant.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    sets: BTreeMap<String, JwkSet>,
}

impl KeyRing {
    pub fn set(&mut self, tenant: &str, keys: JwkSet) {
        self.sets.insert(tenant.to_string(), keys);
    }

    pub fn get(&self, tenant: &str) -> Option<&JwkSet> {
        self.sets.get(tenant)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Claims(#[from] ClaimsError),
    #[error("the signing keys of tenant {0} are not loaded yet; retry shortly")]
    KeysNotLoaded(String),
    #[error("the token's signing key {kid:?} is not among tenant {tenant}'s published keys")]
    UnknownKey { tenant: String, kid: String },
    #[error("client application {0:?} is not allowed to call this server")]
    ClientAppNotAllowed(String),
    #[error("the token carries none of the required scopes or app roles")]
    InsufficientScope,
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Token(TokenError::UnsupportedAlgorithm(_)) => "algorithm",
            AuthError::Token(TokenError::BadSignature) => "signature",
            AuthError::Token(_) => "malformed",
            AuthError::Claims(c) => c.reason(),
            AuthError::KeysNotLoaded(_) => "keys_not_loaded",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::ClientAppNotAllowed(_) => "client_app",
            AuthError::InsufficientScope => "insufficient_scope",
        }
    }

    /// The HTTP refusal for this failure.
    pub fn reply(&self, config: &FilterConfig, resource_metadata: &str) -> Reply {
        match self {
            AuthError::InsufficientScope => {
                let mut wanted = config.required_scopes.clone();
                wanted.extend(config.required_roles.iter().cloned());
                insufficient_scope(&self.to_string(), &wanted, resource_metadata)
            }
            AuthError::ClientAppNotAllowed(_) => {
                insufficient_scope(&self.to_string(), &[], resource_metadata)
            }
            AuthError::KeysNotLoaded(_) => Reply::http_error(503, "unavailable", &self.to_string())
                .with_header("retry-after", "1".into()),
            _ => unauthorized(&self.to_string(), resource_metadata),
        }
    }
}

/// Verified principals by token, oldest evicted first.
///
/// Entries are found by the token's last [`TAIL`] bytes — the end of its
/// signature, which no one but the issuer can choose — and then compared in
/// full, so a lookup hashes 32 bytes instead of the whole ~1 KiB token (and
/// never SHA-256: that once cost more than everything else on the allow path
/// together). A different token with the same tail is a miss, and replaces
/// the entry when verified.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<Tail, Verified>,
    order: VecDeque<Tail>,
}

/// How much of a token's end finds its cache entry.
const TAIL: usize = 32;

type Tail = [u8; TAIL];

#[derive(Debug)]
struct Verified {
    token: Box<str>,
    principal: Arc<Principal>,
}

fn tail(token: &str) -> Tail {
    let bytes = token.as_bytes();
    let mut tail = [0; TAIL];
    let end = &bytes[bytes.len().saturating_sub(TAIL)..];
    tail[TAIL - end.len()..].copy_from_slice(end);
    tail
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An expired entry is not served; it stays until evicted in turn, so
    /// entries and eviction order never drift apart.
    fn get(&self, token: &str, now: u64, skew: u64) -> Option<Arc<Principal>> {
        self.entries
            .get(&tail(token))
            .filter(|v| *v.token == *token && now <= v.principal.expires_at.saturating_add(skew))
            .map(|v| v.principal.clone())
    }

    fn insert(&mut self, token: &str, principal: Arc<Principal>) {
        let key = tail(token);
        let verified = Verified {
            token: token.into(),
            principal,
        };
        if let Some(replaced) = self.entries.get_mut(&key) {
            *replaced = verified;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(key, verified);
        self.order.push_back(key);
    }
}

/// Verifies `token` (or finds it verified in `cache`) against `trust`.
pub fn verify_token(
    trust: &TrustConfig,
    keys: &KeyRing,
    cache: &mut TokenCache,
    token: &str,
    now: u64,
) -> Result<Arc<Principal>, AuthError> {
    if let Some(principal) = cache.get(token, now, trust.clock_skew_seconds) {
        return Ok(principal);
    }
    let decoded = decode(token)?;
    let issuer = decoded
        .claims
        .get("iss")
        .and_then(|v| v.as_str())
        .ok_or(ClaimsError::Missing("iss"))?;
    let (tenant, _) = trusted_issuer(trust, issuer)
        .ok_or_else(|| ClaimsError::UntrustedIssuer(issuer.to_string()))?;
    let key_set = keys
        .get(tenant)
        .ok_or_else(|| AuthError::KeysNotLoaded(tenant.to_string()))?;
    match decoded.verify(key_set) {
        Err(TokenError::UnknownKeyId(kid)) => {
            return Err(AuthError::UnknownKey {
                tenant: tenant.to_string(),
                kid,
            });
        }
        other => other?,
    }
    let principal = Arc::new(principal(&decoded.claims, trust, now)?);
    cache.insert(token, principal.clone());
    Ok(principal)
}

/// Verifies `token` and applies the gateway's caller requirements.
pub fn authenticate(
    config: &FilterConfig,
    keys: &KeyRing,
    cache: &mut TokenCache,
    token: &str,
    now: u64,
) -> Result<Arc<Principal>, AuthError> {
    let principal = verify_token(&config.auth, keys, cache, token, now)?;
    if !config.allowed_client_apps.is_empty()
        && !config.allowed_client_apps.contains(&principal.app_id)
    {
        return Err(AuthError::ClientAppNotAllowed(principal.app_id.clone()));
    }
    let needs_grant = !config.required_scopes.is_empty() || !config.required_roles.is_empty();
    let granted = principal
        .scopes
        .iter()
        .any(|s| config.required_scopes.contains(s))
        || principal
            .roles
            .iter()
            .any(|r| config.required_roles.contains(r));
    if needs_grant && !granted {
        return Err(AuthError::InsufficientScope);
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entra::v2_issuer;
    use crate::jwt::tests::{key_set, test_key};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn config(extra: serde_json::Value) -> FilterConfig {
        let mut extra = extra;
        extra["auth"] = json!({"tenants": ["t1"], "audiences": ["api://a"]});
        crate::gateway::config::test_config(extra)
    }

    fn claims() -> serde_json::Value {
        json!({"iss": v2_issuer("t1"), "tid": "t1", "aud": "api://a", "exp": NOW + 600,
               "oid": "o1", "azp": "app-1", "scp": "mcp.call", "ver": "2.0"})
    }

    fn keys() -> KeyRing {
        let mut ring = KeyRing::default();
        ring.set("t1", key_set(&[test_key("k1")]));
        ring
    }

    #[test]
    fn verifies_once_then_serves_from_the_cache() {
        let c = config(json!({}));
        let mut cache = TokenCache::new(2);
        let token = test_key("k1").token(&claims());
        assert_eq!(
            authenticate(&c, &keys(), &mut cache, &token, NOW)
                .unwrap()
                .object_id,
            "o1"
        );
        assert_eq!(cache.len(), 1);
        // Served from the cache: no key set is needed any more.
        assert!(authenticate(&c, &KeyRing::default(), &mut cache, &token, NOW).is_ok());
        // Until it expires.
        let later = NOW + 600 + 61;
        assert!(matches!(
            authenticate(&c, &keys(), &mut cache, &token, later),
            Err(AuthError::Claims(ClaimsError::Expired))
        ));
        // An expired entry is never served: without keys, the token is not accepted.
        assert!(matches!(
            authenticate(&c, &KeyRing::default(), &mut cache, &token, later),
            Err(AuthError::KeysNotLoaded(_))
        ));
    }

    #[test]
    fn a_token_ending_like_a_cached_one_is_verified_not_served() {
        let c = config(json!({}));
        let mut cache = TokenCache::new(4);
        let token = test_key("k1").token(&claims());
        authenticate(&c, &keys(), &mut cache, &token, NOW).unwrap();
        // The cached token's signature under another payload: its tail finds
        // the entry, the full comparison does not, and the signature fails.
        let (_, signature) = token.rsplit_once('.').unwrap();
        let mut forged_claims = claims();
        forged_claims["oid"] = json!("o2");
        let forged = test_key("k1").token(&forged_claims);
        let (signed, _) = forged.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{signature}");
        assert_eq!(tail(&forged), tail(&token));
        assert!(matches!(
            authenticate(&c, &keys(), &mut cache, &forged, NOW),
            Err(AuthError::Token(_))
        ));
        // And the genuine one is still served, from the cache.
        let served = authenticate(&c, &KeyRing::default(), &mut cache, &token, NOW).unwrap();
        assert_eq!(served.object_id, "o1");
        // A short token (shorter than the tail) is looked up without panicking.
        assert!(authenticate(&c, &keys(), &mut cache, "a.b", NOW).is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = config(json!({}));
        let mut cache = TokenCache::new(2);
        for oid in ["a", "b", "c"] {
            let mut claims = claims();
            claims["oid"] = json!(oid);
            authenticate(&c, &keys(), &mut cache, &test_key("k1").token(&claims), NOW).unwrap();
        }
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn refusals_say_why() {
        let c = config(json!({}));
        let mut cache = TokenCache::new(8);
        let unknown = test_key("k2").token(&claims());
        assert_eq!(
            authenticate(&c, &keys(), &mut cache, &unknown, NOW),
            Err(AuthError::UnknownKey {
                tenant: "t1".into(),
                kid: "k2".into()
            })
        );
        assert_eq!(
            authenticate(&c, &KeyRing::default(), &mut cache, &unknown, NOW),
            Err(AuthError::KeysNotLoaded("t1".into()))
        );
        let mut other = claims();
        other["iss"] = json!(v2_issuer("t2"));
        other["tid"] = json!("t2");
        let err =
            authenticate(&c, &keys(), &mut cache, &test_key("k1").token(&other), NOW).unwrap_err();
        assert_eq!(err.reason(), "untrusted_issuer");
        let reply = err.reply(&c, "m");
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("not a trusted Entra ID tenant")
        );
        assert_eq!(
            authenticate(&c, &keys(), &mut cache, "garbage", NOW)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn client_apps_and_scopes_are_enforced() {
        let token = test_key("k1").token(&claims());
        let mut cache = TokenCache::new(8);
        let apps = config(json!({"allowedClientApps": ["app-2"]}));
        let err = authenticate(&apps, &keys(), &mut cache, &token, NOW).unwrap_err();
        assert_eq!(err, AuthError::ClientAppNotAllowed("app-1".into()));
        assert_eq!(err.reply(&apps, "m").status, 403);
        let scopes =
            config(json!({"requiredScopes": ["mcp.admin"], "requiredRoles": ["Mcp.Caller"]}));
        let err = authenticate(&scopes, &keys(), &mut cache, &token, NOW).unwrap_err();
        assert_eq!(err, AuthError::InsufficientScope);
        let reply = err.reply(&scopes, "m");
        assert_eq!(reply.status, 403);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("scope=\"mcp.admin Mcp.Caller\"")
        );
        let ok = config(json!({"requiredScopes": ["mcp.call"]}));
        assert!(authenticate(&ok, &keys(), &mut cache, &token, NOW).is_ok());
    }
}
