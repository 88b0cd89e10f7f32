//! Rotating the operator's CA without refusing a connection. Clients trust
//! a bundle, so the CA changes in three steps, each taken by the leader once
//! the previous one has had `overlap` to reach every client (sidecars read
//! the bundle from their server's ConfigMap, which kubelet updates in place;
//! the API server reads the webhooks' `caBundle`):
//!
//! 1. **Begin**: a new CA is made and trusted next to the signing one.
//! 2. **Promote**: it signs; the old one stays trusted as `previous`, and
//!    every replica issues itself new serving certificates within seconds.
//! 3. **Forget**: the old CA is trusted no more.
//!
//! A rotation begins 90 days before the signing CA expires, or when someone
//! annotates the Secret `mcp.airlock.dev/rotate` (after a suspected key
//! leak, say). The steps are recorded in the Secret's annotations, so a new
//! leader carries on where the last one stopped.

use super::{Authority, CA_SECRET, Error, ServingCertificate, new_ca, publish, secret_field};
use airlock_policy::audit::{parse_rfc3339, rfc3339};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Annotate the CA Secret with this (any value) to rotate now.
pub const ROTATE: &str = "mcp.airlock.dev/rotate";
/// When the signing CA expires (RFC 3339).
pub const EXPIRES: &str = "mcp.airlock.dev/ca-expires";
const NEXT_EXPIRES: &str = "mcp.airlock.dev/next-ca-expires";
const NEXT_SINCE: &str = "mcp.airlock.dev/next-trusted-since";
const PREVIOUS_SINCE: &str = "mcp.airlock.dev/previous-trusted-since";
/// A rotation begins this long before the signing CA expires.
const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often the Secret is looked at.
const TICK: Duration = Duration::from_secs(5);

/// Where a rotation stands, as the Secret records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub requested: bool,
    /// When the signing CA expires.
    pub expires: u64,
    /// Since when the next CA has been trusted, if there is one.
    pub next_since: Option<u64>,
    /// Since when the signing CA has signed while the previous one stayed trusted.
    pub previous_since: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Begin,
    Promote,
    Forget,
}

impl Phase {
    pub fn of(secret: &Secret) -> Phase {
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let time = |key: &str| annotations.get(key).and_then(|t| parse_rfc3339(t));
        let created = secret
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second().max(0) as u64)
            .unwrap_or(0);
        Phase {
            requested: annotations.contains_key(ROTATE),
            // A Secret from before rotations: its CA is taken to be a year old at most.
            expires: time(EXPIRES).unwrap_or(created + super::CA_VALIDITY.as_secs()),
            next_since: secret_field(secret, "next.crt").and(time(NEXT_SINCE).or(Some(0))),
            previous_since: secret_field(secret, "previous.crt")
                .and(time(PREVIOUS_SINCE).or(Some(0))),
        }
    }

    /// What to do at `now`, each step `overlap` after the last.
    pub fn next_step(&self, now: u64, overlap: Duration) -> Option<Step> {
        let overlap = overlap.as_secs();
        if let Some(since) = self.next_since {
            return (now >= since + overlap).then_some(Step::Promote);
        }
        if let Some(since) = self.previous_since {
            return (now >= since + overlap).then_some(Step::Forget);
        }
        (self.requested || now + RENEW_BEFORE.as_secs() >= self.expires).then_some(Step::Begin)
    }
}

/// `secret` after `step` at `now`.
pub fn stepped(secret: &Secret, step: Step, now: u64) -> Result<Secret, Error> {
    let mut next = secret.clone();
    let data = next.data.get_or_insert_with(BTreeMap::new);
    let annotations = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let text = |value: String| ByteString(value.into_bytes());
    match step {
        Step::Begin => {
            let ca = new_ca()?;
            data.insert("next.crt".into(), text(ca.certificate));
            data.insert("next.key".into(), text(ca.key));
            annotations.insert(NEXT_EXPIRES.into(), ca.expires);
            annotations.insert(NEXT_SINCE.into(), rfc3339(now));
            annotations.remove(ROTATE);
        }
        Step::Promote => {
            let missing = |key: &'static str| Error::Incomplete(CA_SECRET.into(), key);
            let certificate = data.remove("next.crt").ok_or_else(|| missing("next.crt"))?;
            let key = data.remove("next.key").ok_or_else(|| missing("next.key"))?;
            if let Some(signing) = data.insert("ca.crt".into(), certificate) {
                data.insert("previous.crt".into(), signing);
            }
            data.insert("ca.key".into(), key);
            if let Some(expires) = annotations.remove(NEXT_EXPIRES) {
                annotations.insert(EXPIRES.into(), expires);
            }
            annotations.remove(NEXT_SINCE);
            annotations.insert(PREVIOUS_SINCE.into(), rfc3339(now));
        }
        Step::Forget => {
            data.remove("previous.crt");
            annotations.remove(PREVIOUS_SINCE);
        }
    }
    Ok(next)
}

/// The leader's part: takes each step when it is due. Written with the
/// Secret's resourceVersion, so a step is taken once whoever races.
pub async fn drive(client: kube::Client, namespace: String, overlap: Duration) {
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    loop {
        tokio::time::sleep(TICK).await;
        let secret = match secrets.get(CA_SECRET).await {
            Ok(secret) => secret,
            Err(e) => {
                crate::log::error("ca-rotation", &format!("reading {CA_SECRET}: {e}"));
                continue;
            }
        };
        let now = crate::approvals::time::now_seconds();
        let Some(step) = Phase::of(&secret).next_step(now, overlap) else {
            continue;
        };
        let written = match stepped(&secret, step, now) {
            Ok(next) => secrets
                .replace(CA_SECRET, &PostParams::default(), &next)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(_) => crate::log::info("ca-rotation", &format!("{step:?}: done")),
            Err(e) => crate::log::error("ca-rotation", &format!("{step:?}: {e}")),
        }
    }
}

/// Every replica's part: serves certificates from the signing CA (new ones
/// when it changes or when they age) and publishes the bundle to trust.
pub async fn follow(
    client: kube::Client,
    namespace: String,
    certificates: Vec<Arc<ServingCertificate>>,
    trust: watch::Sender<String>,
) {
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let mut signer: Option<String> = None;
    loop {
        let authority = secrets
            .get(CA_SECRET)
            .await
            .map_err(Error::from)
            .and_then(|secret| Authority::from_secret(&secret, &namespace));
        match authority {
            Ok(authority) => {
                let changed = signer.as_deref() != Some(authority.ca_pem.as_str());
                if changed || certificates.iter().any(|c| c.aging()) {
                    let renewed = certificates.iter().try_for_each(|c| c.renew(&authority));
                    match renewed {
                        Ok(()) => signer = Some(authority.ca_pem.clone()),
                        Err(e) => crate::log::error("tls", &format!("issuing certificates: {e}")),
                    }
                }
                publish(&trust, &authority.trust_pem);
            }
            Err(e) => crate::log::error("tls", &format!("reading {CA_SECRET}: {e}")),
        }
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: u64 = 24 * 3600;
    const OVERLAP: Duration = Duration::from_secs(600);

    fn secret() -> Secret {
        let ca = new_ca().unwrap();
        serde_json::from_value(json!({
            "metadata": {"name": CA_SECRET, "annotations": {EXPIRES: ca.expires}},
            "stringData": {},
        }))
        .map(|mut secret: Secret| {
            secret.data = Some(BTreeMap::from([
                ("ca.crt".into(), ByteString(ca.certificate.into_bytes())),
                ("ca.key".into(), ByteString(ca.key.into_bytes())),
            ]));
            secret
        })
        .unwrap()
    }

    #[test]
    fn a_rotation_trusts_the_new_ca_before_it_signs_and_the_old_one_after() {
        let start = secret();
        let original = Authority::from_secret(&start, "ns").unwrap();
        let now = parse_rfc3339(&rfc3339(crate::approvals::time::now_seconds())).unwrap();
        let phase = Phase::of(&start);
        assert_eq!(phase.next_step(now, OVERLAP), None, "{phase:?}");
        // Ninety days before expiry, unasked.
        assert_eq!(
            phase.next_step(phase.expires - 90 * DAY, OVERLAP),
            Some(Step::Begin)
        );

        let mut requested = start.clone();
        requested
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ROTATE.into(), "now".into());
        assert_eq!(
            Phase::of(&requested).next_step(now, OVERLAP),
            Some(Step::Begin)
        );
        let begun = stepped(&requested, Step::Begin, now).unwrap();
        let trusting_both = Authority::from_secret(&begun, "ns").unwrap();
        assert_eq!(trusting_both.ca_pem, original.ca_pem, "still signing");
        assert!(
            trusting_both
                .trust_pem
                .starts_with(original.ca_pem.trim_end())
        );
        assert_eq!(
            trusting_both.trust_pem.matches("BEGIN CERTIFICATE").count(),
            2
        );
        let phase = Phase::of(&begun);
        assert!(!phase.requested);
        assert_eq!(phase.next_step(now + 599, OVERLAP), None);
        assert_eq!(phase.next_step(now + 600, OVERLAP), Some(Step::Promote));

        let promoted = stepped(&begun, Step::Promote, now + 600).unwrap();
        let signing_new = Authority::from_secret(&promoted, "ns").unwrap();
        assert_ne!(signing_new.ca_pem, original.ca_pem);
        assert!(signing_new.trust_pem.contains(original.ca_pem.trim_end()));
        assert_eq!(
            signing_new.trust_pem.matches("BEGIN CERTIFICATE").count(),
            2
        );
        let phase = Phase::of(&promoted);
        assert!(phase.expires > now + 300 * DAY);
        assert_eq!(phase.next_step(now + 1199, OVERLAP), None);
        assert_eq!(phase.next_step(now + 1200, OVERLAP), Some(Step::Forget));

        let forgotten = stepped(&promoted, Step::Forget, now + 1200).unwrap();
        let alone = Authority::from_secret(&forgotten, "ns").unwrap();
        assert_eq!(alone.trust_pem, alone.ca_pem);
        assert_eq!(alone.ca_pem, signing_new.ca_pem);
        assert_eq!(Phase::of(&forgotten).next_step(now + 1200, OVERLAP), None);
    }

    #[test]
    fn serving_certificates_are_renewed_in_place() {
        let first = Authority::generate().unwrap();
        let certificate = ServingCertificate::issue(&first, &["svc.ns.svc".into()]).unwrap();
        assert!(!certificate.aging());
        let before = certificate.current.read().unwrap().0.clone();
        certificate.renew(&Authority::generate().unwrap()).unwrap();
        let after = certificate.current.read().unwrap().0.clone();
        assert_ne!(before.cert, after.cert);
    }
}
