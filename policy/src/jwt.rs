//! Compact JWS decoding and RS256 verification against a JSON Web Key Set.
//!
//! Only what Entra ID issues is accepted: RS256 with a `kid`. The header's
//! `alg` is checked against that one algorithm before any key is touched, so
//! `alg: none`, HS256 keyed with the RSA public key, and algorithm-confusion
//! tricks never reach a verifier. Header and claims are parsed with the strict
//! JSON parser, so a token cannot carry two `aud` claims that two readers
//! resolve differently.

use crate::json::{self, Limits};
use crate::rs256::PublicKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use thiserror::Error;

/// Tokens larger than this are refused unread (Entra tokens with many groups run to a few KiB).
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token is over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("token header or claims are not valid JSON: {0}")]
    InvalidJson(String),
    #[error("token algorithm {0:?} is not accepted; only RS256 is")]
    UnsupportedAlgorithm(String),
    #[error("token header has no key id (kid)")]
    MissingKeyId,
    #[error("token header carries a nonce (a Microsoft Graph token); it cannot be verified here")]
    GraphToken,
    #[error("token header lists critical extensions, none of which are supported")]
    CriticalHeader,
    #[error("no signing key with kid {0:?} in the issuer's key set")]
    UnknownKeyId(String),
    #[error("token signature does not verify")]
    BadSignature,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwksError {
    #[error("key set is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("key set has no \"keys\" array")]
    NoKeys,
    #[error("key {0:?} appears twice in the key set")]
    DuplicateKeyId(String),
    #[error("key {kid:?}: {reason}")]
    BadKey { kid: String, reason: String },
}

/// The protected header of an accepted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kid: String,
    pub typ: Option<String>,
}

/// A decoded but not yet verified token.
#[derive(Debug, Clone)]
pub struct Token<'a> {
    pub header: Header,
    pub claims: Value,
    signing_input: &'a str,
    signature: &'a str,
}

fn decode_segment(segment: &str, what: &'static str) -> Result<Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed(what))?;
    json::parse(
        &bytes,
        Limits {
            max_bytes: MAX_TOKEN_BYTES,
            max_depth: 8,
        },
    )
    .map_err(|e| TokenError::InvalidJson(e.to_string()))
}

/// Splits and decodes a compact JWS, refusing anything but RS256 with a `kid`.
pub fn decode(token: &str) -> Result<Token<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    if signature.is_empty() {
        return Err(TokenError::Malformed("empty signature"));
    }
    let header = decode_segment(header_b64, "header is not base64url")?;
    let Value::Object(header) = header else {
        return Err(TokenError::Malformed("header is not a JSON object"));
    };
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(Value::String(alg)) => return Err(TokenError::UnsupportedAlgorithm(alg.clone())),
        _ => return Err(TokenError::UnsupportedAlgorithm(String::new())),
    }
    if header.contains_key("nonce") {
        return Err(TokenError::GraphToken);
    }
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
        _ => return Err(TokenError::MissingKeyId),
    };
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .map(str::to_string);
    let claims = decode_segment(claims_b64, "claims are not base64url")?;
    if !claims.is_object() {
        return Err(TokenError::Malformed("claims are not a JSON object"));
    }
    let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
    Ok(Token {
        header: Header { kid, typ },
        claims,
        signing_input,
        signature,
    })
}

impl Token<'_> {
    /// Verifies the RS256 signature with the key the header's `kid` selects.
    pub fn verify(&self, keys: &JwkSet) -> Result<(), TokenError> {
        let key = keys
            .get(&self.header.kid)
            .ok_or_else(|| TokenError::UnknownKeyId(self.header.kid.clone()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(self.signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        if key.public.verify(self.signing_input.as_bytes(), &signature) {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

/// One RSA signing key.
#[derive(Clone)]
pub struct Jwk {
    pub kid: String,
    public: PublicKey,
}

impl Jwk {
    /// The modulus's length in bits.
    pub fn bits(&self) -> usize {
        self.public.bits()
    }
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("bits", &self.bits())
            .finish()
    }
}

/// The RSA signing keys of an issuer, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

impl JwkSet {
    /// Reads a JWKS document. Keys that are not RSA signature keys are skipped
    /// (an issuer may publish others); an RSA key that is unusable is an error.
    pub fn from_json(document: &[u8]) -> Result<JwkSet, JwksError> {
        let value = json::parse(document, Limits::default())
            .map_err(|e| JwksError::InvalidJson(e.to_string()))?;
        let Some(Value::Array(entries)) = value.get("keys") else {
            return Err(JwksError::NoKeys);
        };
        let mut keys: Vec<Jwk> = Vec::new();
        for entry in entries {
            let field = |name: &str| entry.get(name).and_then(Value::as_str);
            let Some(kid) = field("kid") else { continue };
            if field("kty") != Some("RSA") || field("use").is_some_and(|u| u != "sig") {
                continue;
            }
            if field("alg").is_some_and(|alg| alg != "RS256") {
                continue;
            }
            let bad = |reason: &str| JwksError::BadKey {
                kid: kid.to_string(),
                reason: reason.to_string(),
            };
            let (Some(n), Some(e)) = (field("n"), field("e")) else {
                return Err(bad("missing modulus or exponent"));
            };
            let modulus = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| bad("modulus is not base64url"))?;
            let exponent = URL_SAFE_NO_PAD
                .decode(e)
                .map_err(|_| bad("exponent is not base64url"))?;
            let public =
                PublicKey::from_components(&modulus, &exponent).map_err(|e| bad(&e.to_string()))?;
            if keys.iter().any(|k| k.kid == kid) {
                return Err(JwksError::DuplicateKeyId(kid.to_string()));
            }
            keys.push(Jwk {
                kid: kid.to_string(),
                public,
            });
        }
        Ok(JwkSet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use serde_json::json;
    use std::sync::OnceLock;

    pub(crate) struct TestKey {
        pub kid: &'static str,
        pub private: rsa::RsaPrivateKey,
    }

    pub(crate) fn test_key(kid: &'static str) -> &'static TestKey {
        static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            ["k1", "k2"]
                .into_iter()
                .map(|kid| TestKey {
                    kid,
                    private: rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap(),
                })
                .collect()
        });
        keys.iter().find(|k| k.kid == kid).unwrap()
    }

    impl TestKey {
        pub fn jwk(&self) -> Value {
            let public = self.private.to_public_key();
            json!({
                "kty": "RSA", "use": "sig", "kid": self.kid,
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            })
        }

        pub fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let der = self.private.to_pkcs1_der().unwrap();
            let key = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::RS256).unwrap();
            format!("{input}.{sig}")
        }

        pub fn token(&self, claims: &Value) -> String {
            self.sign(
                &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
                claims,
            )
        }
    }

    pub(crate) fn key_set(keys: &[&TestKey]) -> JwkSet {
        let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        JwkSet::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn claims() -> Value {
        json!({"sub": "x", "aud": "api://airlock"})
    }

    #[test]
    fn verifies_a_good_token() {
        let k1 = test_key("k1");
        let token = k1.token(&claims());
        let decoded = decode(&token).unwrap();
        assert_eq!(decoded.header.kid, "k1");
        assert_eq!(decoded.claims, claims());
        decoded.verify(&key_set(&[k1, test_key("k2")])).unwrap();
    }

    #[test]
    fn refuses_forged_and_confused_tokens() {
        let k1 = test_key("k1");
        let k2 = test_key("k2");
        let keys = key_set(&[k1]);

        // Signed by another key under k1's kid.
        let forged = k2.sign(&json!({"alg":"RS256","kid":"k1"}), &claims());
        assert_eq!(
            decode(&forged).unwrap().verify(&keys),
            Err(TokenError::BadSignature)
        );

        // Claims swapped after signing.
        let good = k1.token(&claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let other =
            URL_SAFE_NO_PAD.encode(json!({"sub":"admin","aud":"api://airlock"}).to_string());
        parts[1] = &other;
        let tampered = parts.join(".");
        assert_eq!(
            decode(&tampered).unwrap().verify(&keys),
            Err(TokenError::BadSignature)
        );

        // Unknown kid.
        let unknown = k2.token(&claims());
        assert_eq!(
            decode(&unknown).unwrap().verify(&keys),
            Err(TokenError::UnknownKeyId("k2".into()))
        );

        // alg: none, with and without a signature.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        assert_eq!(
            decode(&format!("{none_header}.{body}.")).unwrap_err(),
            TokenError::Malformed("empty signature")
        );
        assert_eq!(
            decode(&format!("{none_header}.{body}.c2ln")).unwrap_err(),
            TokenError::UnsupportedAlgorithm("none".into())
        );

        // HS256 keyed with the RSA public key (the classic confusion attack).
        let public_pem = {
            use rsa::pkcs1::EncodeRsaPublicKey;
            k1.private.to_public_key().to_pkcs1_der().unwrap()
        };
        let hs_header = json!({"alg":"HS256","kid":"k1"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(hs_header.to_string()),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        let hs_sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            decode(&format!("{input}.{hs_sig}")).unwrap_err(),
            TokenError::UnsupportedAlgorithm("HS256".into())
        );

        // Lowercase / missing alg, missing kid, Graph nonce, crit.
        for (header, err) in [
            (
                json!({"alg":"rs256","kid":"k1"}),
                TokenError::UnsupportedAlgorithm("rs256".into()),
            ),
            (
                json!({"kid":"k1"}),
                TokenError::UnsupportedAlgorithm(String::new()),
            ),
            (json!({"alg":"RS256"}), TokenError::MissingKeyId),
            (
                json!({"alg":"RS256","kid":"k1","nonce":"abc"}),
                TokenError::GraphToken,
            ),
            (
                json!({"alg":"RS256","kid":"k1","crit":["exp"]}),
                TokenError::CriticalHeader,
            ),
        ] {
            assert_eq!(decode(&k1.sign(&header, &claims())).unwrap_err(), err);
        }
    }

    #[test]
    fn refuses_malformed_tokens() {
        let k1 = test_key("k1");
        let good = k1.token(&claims());
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.e30.c2ln",
            &format!("{good}="),
            &format!("{good}.x"),
        ] {
            assert!(
                decode(bad).is_err() || decode(bad).unwrap().verify(&key_set(&[k1])).is_err(),
                "{bad}"
            );
        }
        // Duplicate claim keys: two readers could pick different audiences.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k1"}"#);
        let dup = URL_SAFE_NO_PAD.encode(r#"{"aud":"a","aud":"b"}"#);
        assert!(matches!(
            decode(&format!("{header}.{dup}.c2ln")),
            Err(TokenError::InvalidJson(_))
        ));
        assert_eq!(
            decode(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
            TokenError::TooLarge
        );
    }

    #[test]
    fn reads_key_sets_strictly() {
        let k1 = test_key("k1");
        let mut jwk = k1.jwk();
        let ec = json!({"kty":"EC","kid":"ec1","crv":"P-256","x":"a","y":"b"});
        let enc = json!({"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"});
        let set = JwkSet::from_json(
            json!({"keys":[jwk.clone(), ec, enc]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(set.key_ids().collect::<Vec<_>>(), vec!["k1"]);
        assert_eq!(set.get("k1").unwrap().bits(), 2048);

        assert_eq!(
            JwkSet::from_json(
                json!({"keys":[jwk.clone(), jwk.clone()]})
                    .to_string()
                    .as_bytes()
            )
            .unwrap_err(),
            JwksError::DuplicateKeyId("k1".into())
        );
        assert_eq!(JwkSet::from_json(b"{}").unwrap_err(), JwksError::NoKeys);
        assert!(matches!(
            JwkSet::from_json(b"{").unwrap_err(),
            JwksError::InvalidJson(_)
        ));
        jwk["n"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 128]));
        assert!(matches!(
            JwkSet::from_json(json!({"keys":[jwk]}).to_string().as_bytes()).unwrap_err(),
            JwksError::BadKey { .. }
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(token in "[A-Za-z0-9_.=-]{0,200}") {
            let _ = decode(&token);
        }
    }
}
