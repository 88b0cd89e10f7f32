//! Serving with a certificate another issuer keeps, cert-manager's way: a
//! Secret of type `kubernetes.io/tls` holding `tls.crt` (the certificate and
//! its chain), `tls.key` and `ca.crt`, replaced by its issuer before the
//! certificate expires. Every replica serves what the Secret holds and
//! publishes `ca.crt` for sidecars and the API server to trust.
//!
//! A renewal under the same CA is served at once. A certificate from a new
//! CA is not: clients trust the bundle they were last given, so the new CA
//! is first trusted beside the old one, the new certificate served after
//! `overlap`, and the old CA forgotten after another — the steps the
//! operator's own CA takes ([`super::rotation`]), paced by each replica from
//! when it first saw the new CA.

use super::{Error, ServingCertificate, bundle, publish, secret_field};
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the Secret is looked at.
const TICK: Duration = Duration::from_secs(5);

/// One issue of the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// `tls.crt`: the certificate, then its chain (PEM).
    pub chain_pem: String,
    pub key_pem: String,
    /// `ca.crt`: the CA clients are to trust (PEM).
    pub ca_pem: String,
}

impl Issued {
    pub fn from_secret(secret: &Secret, name: &str) -> Result<Issued, Error> {
        let field = |key: &'static str| {
            secret_field(secret, key)
                .filter(|value| !value.trim().is_empty())
                .ok_or_else(|| Error::Incomplete(name.to_string(), key))
        };
        let issued = Issued {
            chain_pem: field("tls.crt")?,
            key_pem: field("tls.key")?,
            ca_pem: field("ca.crt")?,
        };
        // Refused here, not at the first handshake.
        issued.certified_key()?;
        Ok(issued)
    }

    pub(super) fn certified_key(&self) -> Result<Arc<CertifiedKey>, Error> {
        let pem_error = |what: &str, e: rustls::pki_types::pem::Error| {
            Error::Io(std::io::Error::other(format!("{what}: {e}")))
        };
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("tls.crt", e))?;
        if chain.is_empty() {
            return Err(Error::Io(std::io::Error::other(
                "tls.crt holds no certificate",
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| pem_error("tls.key", e))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match()?;
        Ok(Arc::new(certified))
    }
}

/// What one replica serves and trusts as the Secret changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    serving: Issued,
    /// An issue from another CA, trusted since the time given, not served yet.
    next: Option<(Issued, u64)>,
    /// CAs that signed what was served before, trusted until the time given.
    previous: Vec<(String, u64)>,
}

impl Following {
    pub fn new(first: Issued) -> Following {
        Following {
            serving: first,
            next: None,
            previous: Vec::new(),
        }
    }

    pub fn serving(&self) -> &Issued {
        &self.serving
    }

    /// Takes what the Secret holds at `now`; true when what is to be served changed.
    pub fn observe(&mut self, issued: Issued, now: u64, overlap: Duration) -> bool {
        let overlap = overlap.as_secs();
        self.previous.retain(|(_, until)| *until > now);
        if issued == self.serving {
            self.next = None;
            return false;
        }
        if issued.ca_pem == self.serving.ca_pem {
            // A renewal: clients trust its CA already.
            self.serving = issued;
            self.next = None;
            return true;
        }
        let since = match &self.next {
            Some((next, since)) if next.ca_pem == issued.ca_pem => *since,
            _ => now,
        };
        if now.saturating_sub(since) < overlap {
            self.next = Some((issued, since));
            return false;
        }
        let old = std::mem::replace(&mut self.serving, issued);
        self.previous.push((old.ca_pem, now + overlap));
        self.next = None;
        true
    }

    /// The CAs to trust: the serving one, the next one and those still
    /// trusted after they stopped signing.
    pub fn trust_pem(&self) -> String {
        let mut trusted = vec![self.serving.ca_pem.as_str()];
        trusted.extend(self.next.iter().map(|(next, _)| next.ca_pem.as_str()));
        trusted.extend(self.previous.iter().map(|(ca, _)| ca.as_str()));
        trusted.dedup();
        bundle(&trusted)
    }
}

/// The Secret `name` once it holds a complete issue; until then, says so
/// every few seconds (its issuer may not have issued it yet).
pub async fn first_issue(secrets: &kube::Api<Secret>, name: &str) -> Issued {
    loop {
        match secrets.get_opt(name).await {
            Ok(Some(secret)) => match Issued::from_secret(&secret, name) {
                Ok(issued) => return issued,
                Err(e) => crate::log::error("tls", &format!("secret {name}: {e}")),
            },
            Ok(None) => crate::log::info(
                "tls",
                &format!("waiting for secret {name} (its Certificate's issuer has not written it)"),
            ),
            Err(e) => crate::log::error("tls", &format!("reading secret {name}: {e}")),
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Every replica's part: serves each new issue, paced as [`Following`]
/// says, and publishes the bundle to trust.
pub async fn follow(
    secrets: kube::Api<Secret>,
    name: String,
    mut following: Following,
    certificates: Vec<Arc<ServingCertificate>>,
    trust: watch::Sender<String>,
    overlap: Duration,
) {
    loop {
        tokio::time::sleep(TICK).await;
        let issued = secrets
            .get(&name)
            .await
            .map_err(Error::from)
            .and_then(|secret| Issued::from_secret(&secret, &name));
        let issued = match issued {
            Ok(issued) => issued,
            Err(e) => {
                crate::log::error("tls", &format!("reading secret {name}: {e}"));
                continue;
            }
        };
        let now = crate::approvals::time::now_seconds();
        if following.observe(issued, now, overlap) {
            let replaced = certificates
                .iter()
                .try_for_each(|certificate| certificate.replace(following.serving()));
            match replaced {
                Ok(()) => crate::log::info("tls", &format!("serving the new issue of {name}")),
                Err(e) => crate::log::error("tls", &format!("serving {name}: {e}")),
            }
        }
        publish(&trust, &following.trust_pem());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, Issuer, KeyPair};

    const OVERLAP: Duration = Duration::from_secs(600);

    /// An issue of a fresh certificate for `name` from `ca` (PEM certificate and key).
    fn issue(ca: &(String, String), name: &str) -> Issued {
        let issuer = Issuer::from_ca_cert_pem(&ca.0, KeyPair::from_pem(&ca.1).unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let certificate = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Issued {
            chain_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: ca.0.clone(),
        }
    }

    fn ca() -> (String, String) {
        let ca = crate::tls::new_ca().unwrap();
        (ca.certificate, ca.key)
    }

    #[test]
    fn a_renewal_is_served_at_once_and_a_new_ca_only_once_trusted() {
        let (old_ca, new_ca) = (ca(), ca());
        let first = issue(&old_ca, "svc.ns.svc");
        let mut following = Following::new(first.clone());
        assert_eq!(following.trust_pem(), bundle(&[&old_ca.0]));
        assert!(!following.observe(first.clone(), 0, OVERLAP), "unchanged");

        let renewed = issue(&old_ca, "svc.ns.svc");
        assert!(following.observe(renewed.clone(), 10, OVERLAP));
        assert_eq!(following.serving(), &renewed);

        // A new CA: trusted beside the old one, served after the overlap.
        let rotated = issue(&new_ca, "svc.ns.svc");
        assert!(!following.observe(rotated.clone(), 100, OVERLAP));
        assert_eq!(following.serving(), &renewed);
        assert_eq!(following.trust_pem(), bundle(&[&old_ca.0, &new_ca.0]));
        assert!(!following.observe(rotated.clone(), 699, OVERLAP));
        assert!(following.observe(rotated.clone(), 700, OVERLAP));
        assert_eq!(following.serving(), &rotated);
        assert_eq!(following.trust_pem(), bundle(&[&new_ca.0, &old_ca.0]));
        // The old CA is forgotten an overlap later.
        assert!(!following.observe(rotated.clone(), 1299, OVERLAP));
        assert_eq!(following.trust_pem(), bundle(&[&new_ca.0, &old_ca.0]));
        assert!(!following.observe(rotated, 1300, OVERLAP));
        assert_eq!(following.trust_pem(), bundle(&[&new_ca.0]));
    }

    #[test]
    fn a_second_new_ca_starts_its_own_overlap() {
        let (old_ca, first_new, second_new) = (ca(), ca(), ca());
        let mut following = Following::new(issue(&old_ca, "a"));
        assert!(!following.observe(issue(&first_new, "a"), 0, OVERLAP));
        assert!(!following.observe(issue(&second_new, "a"), 500, OVERLAP));
        assert!(!following.observe(issue(&second_new, "a"), 1000, OVERLAP));
        assert_eq!(following.trust_pem(), bundle(&[&old_ca.0, &second_new.0]));
        assert!(following.observe(issue(&second_new, "a"), 1100, OVERLAP));
    }

    #[test]
    fn an_incomplete_or_mismatched_secret_is_refused_with_its_field() {
        let issued = issue(&ca(), "a");
        let secret = |fields: &[(&str, &str)]| -> Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s"},
                "data": fields.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(base64(v)))).collect::<serde_json::Map<_, _>>(),
            }))
            .unwrap()
        };
        let complete = [
            ("tls.crt", issued.chain_pem.as_str()),
            ("tls.key", issued.key_pem.as_str()),
            ("ca.crt", issued.ca_pem.as_str()),
        ];
        assert_eq!(
            Issued::from_secret(&secret(&complete), "s").unwrap(),
            issued
        );
        let without_ca = Issued::from_secret(&secret(&complete[..2]), "s").unwrap_err();
        assert_eq!(without_ca.to_string(), "secret s has no ca.crt");
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        let mismatched = [complete[0], ("tls.key", other_key.as_str()), complete[2]];
        assert!(Issued::from_secret(&secret(&mismatched), "s").is_err());
    }

    fn base64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }
}
