//! Policy, long-polled from the approval service once per Envoy.
//!
//! The leader VM keeps one `GET /v1/config/{ns}/{server}?after=V&wait=S` in
//! flight; the service answers as soon as the server's policies change. The
//! leader checks and publishes the document in shared data, and every VM
//! compiles it when its shared-data version changes (on its next tick, or
//! sooner). Until a first document arrives, every call is refused.

use crate::leader::Published;
use crate::service;
use airlock_policy::gateway::config::{FilterConfig, PolicyDocument, compile_all};
use airlock_policy::gateway::revocation::Revocation;
use airlock_policy::model::CompiledPolicy;
use std::rc::Rc;
use std::time::Duration;

const POLICY_KEY: &str = "airlock/policy";
/// How long the service may hold a poll open.
const POLL_WAIT_SECONDS: u64 = 20;
/// Pause after a failed poll.
const RETRY_SECONDS: u64 = 2;

pub struct PolicyState {
    published: Published,
    current: Option<(String, Rc<Vec<CompiledPolicy>>)>,
    /// Who is cut off, from the same document.
    revocations: Rc<Vec<Revocation>>,
    in_flight: Option<u32>,
    failed_at: Option<u64>,
}

impl PolicyState {
    pub fn new() -> PolicyState {
        PolicyState {
            published: Published::new(POLICY_KEY),
            current: None,
            revocations: Rc::default(),
            in_flight: None,
            failed_at: None,
        }
    }

    /// The policies in force, or `None` before the first document arrived.
    /// A VM that has none yet looks at once, rather than at its next tick:
    /// the leader may have published since.
    pub fn in_force(&mut self, config: &FilterConfig) -> Option<Rc<Vec<CompiledPolicy>>> {
        if self.current.is_none() {
            self.sync(config);
        }
        self.current.as_ref().map(|(_, policies)| policies.clone())
    }

    /// Compiles the published document when it changed.
    pub fn sync(&mut self, config: &FilterConfig) {
        let Some(body) = self.published.changed() else {
            return;
        };
        match checked(config, &body) {
            Ok((document, policies)) => self.install(document, policies),
            Err(e) => log::error!("airlock: published policy is unusable: {e}"),
        }
    }

    fn install(&mut self, document: PolicyDocument, policies: Vec<CompiledPolicy>) {
        log::info!(
            "airlock: {} policies in force for {} (version {})",
            policies.len(),
            document.server,
            document.version
        );
        self.current = Some((document.version, Rc::new(policies)));
        self.revocations = Rc::new(document.revocations);
    }

    /// The revocations in force (none before the first document: then every
    /// call is refused anyway).
    pub fn revocations(&self) -> Rc<Vec<Revocation>> {
        self.revocations.clone()
    }

    /// On the leader: keeps one long-poll in flight.
    pub fn lead(&mut self, config: &FilterConfig, now: u64) {
        if self.in_flight.is_some()
            || self
                .failed_at
                .is_some_and(|at| now.saturating_sub(at) < RETRY_SECONDS)
        {
            return;
        }
        let version = self.current.as_ref().map(|(version, _)| version.as_str());
        let path = config.policy_path(version, POLL_WAIT_SECONDS);
        let request = service::Request {
            method: "GET",
            path: &path,
            bearer: None,
            release_key: None,
            body: None,
            timeout: Duration::from_secs(POLL_WAIT_SECONDS + 10),
        };
        match service::call(&config.approvals, &config.approvals.cluster, request) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => {
                log::error!(
                    "airlock: cannot poll policy through cluster {}: {status:?}",
                    config.approvals.cluster
                );
                self.failed_at = Some(now);
            }
        }
    }

    /// A poll finished; false when `token` is not this state's.
    pub fn on_polled(
        &mut self,
        config: &FilterConfig,
        token: u32,
        status: Option<&str>,
        body: Option<&[u8]>,
        now: u64,
    ) -> bool {
        if self.in_flight != Some(token) {
            return false;
        }
        self.in_flight = None;
        let result = match (status, body) {
            (Some("200"), Some(body)) => {
                checked(config, body).and_then(|(document, policies)| {
                    let unchanged = self
                        .current
                        .as_ref()
                        .is_some_and(|(version, _)| *version == document.version);
                    if !unchanged {
                        self.published.publish(body).map_err(|e| format!("{e:?}"))?;
                        // This VM has just checked what it published: mark it
                        // read rather than parse and compile it again.
                        let _ = self.published.changed();
                        self.install(document, policies);
                    }
                    Ok(())
                })
            }
            (status, body) => Err(format!(
                "status {}: {}",
                status.unwrap_or("none: no answer"),
                String::from_utf8_lossy(body.unwrap_or_default())
            )),
        };
        match result {
            Ok(()) => self.failed_at = None,
            Err(e) => {
                log::error!("airlock: polling policy failed: {e}");
                self.failed_at = Some(now);
            }
        }
        true
    }
}

/// A document for this gateway's server whose every policy compiles.
fn checked(
    config: &FilterConfig,
    body: &[u8],
) -> Result<(PolicyDocument, Vec<CompiledPolicy>), String> {
    let document: PolicyDocument = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if document.server != config.server {
        return Err(format!(
            "the policy document is for {}, not {}",
            document.server, config.server
        ));
    }
    let policies = compile_all(&document.policies).map_err(|e| e.to_string())?;
    Ok((document, policies))
}
