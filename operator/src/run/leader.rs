//! One replica at a time runs the controllers: it holds a
//! `coordination.k8s.io` Lease, taken and renewed by compare-and-set on the
//! Lease's `resourceVersion`, so two replicas can never both believe they
//! took it. A replica that cannot renew in time stops leading (the process
//! exits, and the kubelet restarts it as a follower).

use super::guard::Leadership;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long before the lease could lapse this replica stops writing.
const MARGIN: Duration = Duration::from_secs(3);

pub struct Elector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    /// How long a lease lasts without renewal.
    duration: Duration,
    /// Told of every renewal, so writes stop the moment the lease may lapse.
    leadership: Arc<Leadership>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("lost the lease {0}: {1}")]
    Lost(String, String),
}

impl Elector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        leadership: Arc<Leadership>,
    ) -> Elector {
        Elector {
            leases: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
            leadership,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            if self.try_take().await? {
                crate::log::info(
                    "leader",
                    &format!("{} holds lease {}", self.identity, self.name),
                );
                return Ok(());
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews the lease until renewing fails for longer than the lease
    /// lasts, or another replica holds it; then returns why.
    pub async fn hold(&self) -> LeaderError {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 5).await;
            match self.try_take().await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    return LeaderError::Lost(self.name.clone(), "another replica holds it".into());
                }
                Err(e) if renewed.elapsed() >= self.duration => {
                    return LeaderError::Lost(self.name.clone(), format!("could not renew: {e}"));
                }
                Err(e) => {
                    crate::log::error("leader", &format!("renewing lease {}: {e}", self.name))
                }
            }
        }
    }

    /// Gives the lease up, if this replica holds it, so the next replica
    /// takes it at its next try instead of when it lapses: a stopping
    /// leader's last act. Writes stop first.
    pub async fn release(&self) -> Result<(), LeaderError> {
        self.leadership.lost();
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                crate::log::info(
                    "leader",
                    &format!("{} released lease {}", self.identity, self.name),
                );
                Ok(())
            }
            // Someone else moved first: it is not ours to release any more.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes or renews the lease if it is free, expired or already ours, and
    /// tells [`Leadership`] how long that holds.
    async fn try_take(&self) -> Result<bool, LeaderError> {
        let sent = Instant::now();
        let taken = self.take_or_renew().await;
        match &taken {
            // Other replicas may take over `duration` after our renewTime;
            // stop writing a little before.
            Ok(true) => self
                .leadership
                .renewed(sent, self.duration.saturating_sub(MARGIN)),
            Ok(false) => self.leadership.lost(),
            Err(_) => {}
        }
        taken
    }

    async fn take_or_renew(&self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": seconds,
                         "acquireTime": MicroTime(now), "renewTime": MicroTime(now), "leaseTransitions": 0},
            }))
            .map_err(|e| LeaderError::Lost(self.name.clone(), e.to_string()))?;
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let lasts = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(seconds),
            ));
            renewed.0 + lasts < now
        });
        let released = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !ours && !expired && !released {
            return Ok(false);
        }
        let mut next = spec;
        if !ours {
            next.holder_identity = Some(self.identity.clone());
            next.acquire_time = Some(MicroTime(now));
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.renew_time = Some(MicroTime(now));
        next.lease_duration_seconds = Some(seconds);
        lease.spec = Some(next);
        // Replace carries the resourceVersion read above: a conflict means someone else moved first.
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
