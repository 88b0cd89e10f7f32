//! Audit events: streams enqueue, the root context flushes batches to
//! `POST /v1/audit` on its timer, and the next batch as soon as the service
//! has taken the previous one. The queue is bounded: when the approval
//! service is slow or down and the queue is full, new events are dropped,
//! counted (`airlock.audit.dropped`) and logged — never lost silently.
//!
//! Each event is numbered as it is made (`AuditEvent::id`: this VM's sender
//! name and a count, `airlock.audit.produced`), so the trail can be
//! reconciled: the numbers made are those written plus those dropped, and a
//! batch sent again after a lost answer is written once.

use crate::metrics::{self, Metrics};
use crate::service;
use airlock_policy::audit::AuditEvent;
use airlock_policy::gateway::config::FilterConfig;
use std::collections::VecDeque;
use std::time::Duration;

/// Largest batch body sent at once (the service reads up to 1 MiB).
const BATCH_BYTES: usize = 512 * 1024;
/// Pause after a failed flush.
const RETRY_SECONDS: u64 = 2;

pub struct AuditQueue {
    capacity: usize,
    /// This VM's name in event ids, random; and the last number given.
    sender: String,
    produced: u64,
    /// Events made and events pending as last added to the gauges: they
    /// are reported from the root's flush, off the request path.
    reported: (u64, usize),
    /// Serialized events, oldest first.
    queued: VecDeque<String>,
    /// The batch in flight and its callout token; put back if it fails.
    in_flight: Option<(u32, Vec<String>)>,
    failed_at: Option<u64>,
    dropped: u64,
}

impl AuditQueue {
    /// A queue of `capacity` events, numbering them as `sender`'s.
    pub fn new(capacity: usize, sender: String) -> AuditQueue {
        AuditQueue {
            capacity,
            sender,
            produced: 0,
            reported: (0, 0),
            queued: VecDeque::new(),
            in_flight: None,
            failed_at: None,
            dropped: 0,
        }
    }

    pub fn push(&mut self, mut event: AuditEvent, metrics: &Metrics) {
        self.produced += 1;
        let id = format!("{}-{}", self.sender, self.produced);
        // A full queue drops the event unserialized: under overload the
        // drop is the cheap path.
        if self.pending() >= self.capacity {
            return self.drop_events(&[id], "the queue is full", metrics);
        }
        event.id = Some(id);
        match event.to_line() {
            Ok(line) => self.queued.push_back(line),
            Err(e) => {
                let id = event.id.take().unwrap_or_default();
                self.drop_events(&[id], &format!("it cannot be serialized: {e}"), metrics);
            }
        }
    }

    /// Counts and logs dropped events, `ids` naming them (or, for a batch
    /// refused whole, its lines).
    fn drop_events(&mut self, ids: &[String], why: &str, metrics: &Metrics) {
        let count = ids.len() as u64;
        metrics.add_counter(metrics::AUDIT_DROPPED, count);
        // Log the first drop of a run of them, then every thousandth.
        if self.dropped.is_multiple_of(1000) {
            log::error!(
                "airlock: dropped {count} audit event(s) because {why}, the first {} ({} dropped so far)",
                ids.first().map_or("", String::as_str),
                self.dropped + count
            );
        }
        self.dropped += count;
    }

    /// Adds to `airlock.audit.produced` and `airlock.audit.pending` what
    /// changed since they were last reported.
    fn report(&mut self, metrics: &Metrics) {
        let pending = self.pending();
        let (produced_before, pending_before) =
            std::mem::replace(&mut self.reported, (self.produced, pending));
        metrics.add_counter(metrics::AUDIT_PRODUCED, self.produced - produced_before);
        metrics.audit_pending(metrics::change(pending, pending_before));
    }

    /// Events queued or in flight.
    fn pending(&self) -> usize {
        self.queued.len() + self.in_flight.as_ref().map_or(0, |(_, batch)| batch.len())
    }

    /// Sends the oldest events when nothing is in flight and no failure is
    /// being waited out: on the root's timer and after every callout answer.
    pub fn flush(&mut self, config: &FilterConfig, now: u64, metrics: &Metrics) {
        self.report(metrics);
        if self.in_flight.is_some()
            || self.queued.is_empty()
            || self
                .failed_at
                .is_some_and(|at| now.saturating_sub(at) < RETRY_SECONDS)
        {
            return;
        }
        let mut batch = Vec::new();
        let mut size = 2;
        while let Some(line) = self.queued.front() {
            if !batch.is_empty() && size + line.len() + 1 > BATCH_BYTES {
                break;
            }
            size += line.len() + 1;
            batch.extend(self.queued.pop_front());
        }
        let body = format!("[{}]", batch.join(","));
        let request = service::Request {
            method: "POST",
            path: "/v1/audit",
            bearer: None,
            release_key: None,
            body: Some(body.as_bytes()),
            timeout: Duration::from_secs(10),
        };
        match service::call(&config.approvals, &config.approvals.cluster, request) {
            Ok(token) => self.in_flight = Some((token, batch)),
            Err(status) => {
                log::warn!("airlock: cannot send audit events: {status:?}");
                self.put_back(batch, now);
            }
        }
    }

    /// A flush finished; false when `token` is not this queue's.
    pub fn on_flushed(
        &mut self,
        token: u32,
        status: Option<&str>,
        now: u64,
        metrics: &Metrics,
    ) -> bool {
        match self.in_flight.take() {
            Some((sent, _)) if sent == token && status == Some("202") => {
                self.failed_at = None;
                true
            }
            // Refused as malformed or unauthorized: sending it again cannot help.
            Some((sent, batch))
                if sent == token && status.is_some_and(|s| s.starts_with('4') && s != "429") =>
            {
                let why = format!(
                    "the approval service refused them (status {})",
                    status.unwrap_or_default()
                );
                let ids: Vec<String> = batch
                    .iter()
                    .map(|line| AuditEvent::id_of_line(line).unwrap_or_default().to_string())
                    .collect();
                self.drop_events(&ids, &why, metrics);
                true
            }
            Some((sent, batch)) if sent == token => {
                log::warn!(
                    "airlock: the approval service did not take {} audit events (status {}); retrying",
                    batch.len(),
                    status.unwrap_or("none: no answer")
                );
                self.put_back(batch, now);
                true
            }
            other => {
                self.in_flight = other;
                false
            }
        }
    }

    fn put_back(&mut self, batch: Vec<String>, now: u64) {
        self.failed_at = Some(now);
        for line in batch.into_iter().rev() {
            self.queued.push_front(line);
        }
    }
}
