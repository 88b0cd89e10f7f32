//! Approve, deny, ask: one entry appended to the request's status, naming
//! the caller as the API server knows them; then the approval service's
//! verdict on it.

use super::identity::{self, Caller};
use super::{Target, refusal};
use crate::crd::{self, Actor, ApprovalRequest, Phase};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;

/// How long to wait for the approval service to count an entry.
const COUNTED_WITHIN: Duration = Duration::from_secs(20);

pub enum Act {
    Decide {
        verdict: crd::Verdict,
        reason: String,
    },
    Ask {
        message: String,
    },
}

impl Act {
    pub fn approve(reason: &str) -> Act {
        Act::Decide {
            verdict: crd::Verdict::Approve,
            reason: reason.to_string(),
        }
    }

    pub fn deny(reason: &str) -> Act {
        Act::Decide {
            verdict: crd::Verdict::Deny,
            reason: reason.to_string(),
        }
    }

    pub fn ask(message: &str) -> Act {
        Act::Ask {
            message: message.to_string(),
        }
    }

    /// The status list this act appends to, and the entry.
    fn entry(&self, by: Actor) -> (&'static str, Value) {
        match self {
            Act::Decide { verdict, reason } => (
                "decisions",
                json!(crd::Decision {
                    by,
                    verdict: *verdict,
                    reason: reason.clone(),
                    time: None,
                    via: crd::Via::Kubectl,
                }),
            ),
            Act::Ask { message } => (
                "conversation",
                json!(crd::Remark {
                    by,
                    message: message.clone(),
                    time: None,
                    via: crd::Via::Kubectl,
                }),
            ),
        }
    }

    fn done(&self) -> &'static str {
        match self {
            Act::Decide {
                verdict: crd::Verdict::Approve,
                ..
            } => "approved",
            Act::Decide { .. } => "denied",
            Act::Ask { .. } => "asked about",
        }
    }
}

/// Appends `act` to request `name` as the caller, and waits for the
/// approval service to count it (or refuse it).
pub async fn act(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    act: Act,
    target: &Target,
) -> anyhow::Result<String> {
    let caller = identity::whoami(client, &target.object_id_from).await?;
    let requests: Api<ApprovalRequest> = Api::namespaced(client.clone(), namespace);
    let request = requests.get(name).await.map_err(refusal)?;
    let (list, entry) = act.entry(actor(&caller, &request));
    let status = serde_json::to_value(&request.status).unwrap_or_default();
    // Appended in place by the API server, whatever else was appended since
    // this read: admission sees the real record before and after.
    let operation = if status.get(list).is_some_and(Value::is_array) {
        json!({"op": "add", "path": format!("/status/{list}/-"), "value": entry})
    } else if status.is_object() {
        json!({"op": "add", "path": format!("/status/{list}"), "value": [entry]})
    } else {
        json!({"op": "add", "path": "/status", "value": {list: [entry]}})
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([operation]))?;
    requests
        .patch_status(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(refusal)?;
    let outcome = counted(&requests, name, list, &caller).await?;
    Ok(format!(
        "{} {name} as {}: {outcome}",
        act.done(),
        caller.username
    ))
}

/// Who the entry names: the caller as the API server authenticated them,
/// with the groups that make them an approver of this request.
fn actor(caller: &Caller, request: &ApprovalRequest) -> Actor {
    let groups = caller
        .groups
        .iter()
        .filter(|g| {
            request
                .spec
                .requirements
                .iter()
                .any(|r| r.approver_groups.contains(g))
        })
        .cloned()
        .collect();
    Actor {
        user: caller.username.clone(),
        uid: caller.object_id.clone(),
        tenant: String::new(),
        groups,
    }
}

/// Waits until the approval service has judged the caller's entry: counted
/// (it carries a time), or refused (it is gone).
async fn counted(
    requests: &Api<ApprovalRequest>,
    name: &str,
    list: &str,
    caller: &Caller,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + COUNTED_WITHIN;
    loop {
        let request = requests.get(name).await.map_err(refusal)?;
        let status = request.status.clone().unwrap_or_default();
        // (who, via, time) of every entry of the list written to.
        let entries: Vec<(&Actor, crd::Via, Option<&String>)> = match list {
            "decisions" => status
                .decisions
                .iter()
                .map(|d| (&d.by, d.via, d.time.as_ref()))
                .collect(),
            _ => status
                .conversation
                .iter()
                .map(|r| (&r.by, r.via, r.time.as_ref()))
                .collect(),
        };
        let mine: Vec<Option<&String>> = entries
            .into_iter()
            .filter(|(by, via, _)| by.uid == caller.object_id && *via == crd::Via::Kubectl)
            .map(|(_, _, time)| time)
            .collect();
        let waiting = mine.iter().any(Option::is_none);
        if !waiting {
            let phase = status.phase;
            return Ok(match (mine.is_empty(), phase) {
                (true, phase) => anyhow::bail!(
                    "the approval service did not count it: the request is {phase:?} (its Events and the audit trail say why)"
                ),
                (false, Phase::Pending | Phase::InfoRequested) => format!(
                    "{phase:?}, {} more approval(s) needed",
                    status.approvals_needed
                ),
                (false, Phase::Approved) => "Approved: the held call may run".into(),
                (false, Phase::Executed) => "Approved, and the held call has run".into(),
                (false, phase) => format!("{phase:?}"),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(
                "written; the approval service has not counted it yet (is the operator running?)"
                    .into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
