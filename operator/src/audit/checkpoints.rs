//! Checkpoints of each replica's chain in the API server: every few seconds
//! a replica whose chain moved writes its head (`seq`, `hash`) to the
//! `AuditCheckpoint` named after the chain. The records themselves travel
//! through log collection; the checkpoints are what a rewritten or cut
//! copy of them no longer matches.

use crate::controllers::MANAGER;
use crate::crd::{AuditCheckpoint, AuditCheckpointSpec};
use airlock_policy::audit::Checkpoint;
use kube::api::{Api, ListParams, Patch, PatchParams};
use prometheus::{IntCounter, IntGauge, Registry};
use std::time::Duration;
use tokio::sync::watch;

/// The chain a replica starts when it has no file to continue: its pod's
/// name and its start time, so a restarted container never continues (and
/// contradicts) the chain of the process before it.
pub fn chain_name(pod: &str, started_seconds: u64) -> String {
    format!("{pod}.{started_seconds}")
}

pub struct CheckpointMetrics {
    written: IntCounter,
    failed: IntCounter,
    sequence: IntGauge,
}

impl CheckpointMetrics {
    pub fn new(registry: &Registry) -> Result<CheckpointMetrics, prometheus::Error> {
        let written = IntCounter::new(
            "airlock_audit_checkpoints_written_total",
            "Heads of this replica's audit chain written to the API server.",
        )?;
        let failed = IntCounter::new(
            "airlock_audit_checkpoint_failures_total",
            "Checkpoint writes that failed (each logged and retried at the next interval).",
        )?;
        let sequence = IntGauge::new(
            "airlock_audit_checkpoint_sequence",
            "The sequence of this replica's last checkpoint in the API server.",
        )?;
        registry.register(Box::new(written.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        registry.register(Box::new(sequence.clone()))?;
        Ok(CheckpointMetrics {
            written,
            failed,
            sequence,
        })
    }
}

/// Writes `head` as its chain's checkpoint.
pub async fn write(
    api: &Api<AuditCheckpoint>,
    head: &Checkpoint,
    metrics: &CheckpointMetrics,
) -> Result<(), kube::Error> {
    let sequence = i64::try_from(head.seq).unwrap_or(i64::MAX);
    let checkpoint = AuditCheckpoint::new(
        &head.chain,
        AuditCheckpointSpec {
            chain: head.chain.clone(),
            sequence,
            hash: head.hash.clone(),
            time: k8s_openapi::jiff::Timestamp::now().to_string(),
        },
    );
    let written = api
        .patch(
            &head.chain,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&checkpoint),
        )
        .await;
    match &written {
        Ok(_) => {
            metrics.written.inc();
            metrics.sequence.set(sequence);
        }
        Err(e) => {
            metrics.failed.inc();
            crate::log::error(
                "audit",
                &format!(
                    "checkpoint of chain {} at seq {}: {e}",
                    head.chain, head.seq
                ),
            );
        }
    }
    written.map(|_| ())
}

/// Every `interval`, writes the chain's head if it moved since the last
/// checkpoint that was written; a failed write is retried at the next.
pub async fn keep(
    api: Api<AuditCheckpoint>,
    mut heads: watch::Receiver<Option<Checkpoint>>,
    interval: Duration,
    metrics: &CheckpointMetrics,
) {
    let mut written: Option<Checkpoint> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let head = heads.borrow_and_update().clone();
        if let Some(head) = head
            && written.as_ref() != Some(&head)
            && write(&api, &head, metrics).await.is_ok()
        {
            written = Some(head);
        }
    }
}

/// Every checkpoint in `namespace`, for `airlock audit verify`.
pub async fn read(client: kube::Client, namespace: &str) -> Result<Vec<Checkpoint>, kube::Error> {
    let api: Api<AuditCheckpoint> = Api::namespaced(client, namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| Checkpoint {
            chain: c.spec.chain,
            seq: u64::try_from(c.spec.sequence).unwrap_or(0),
            hash: c.spec.hash,
        })
        .collect())
}
