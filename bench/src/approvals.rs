//! Approval-side figures: how long after `approve` the held call's response
//! arrives, and how many audit events a second the approval service takes in.

use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_tests::approvals::CREDENTIAL;
use airlock_tests::gateway::{ENGINEERS, Gateway, LEADS, call};
use anyhow::{Context, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Holds `samples` calls one after another; for each, approves it as a lead
/// and measures from sending the decision to receiving the call's answer.
pub async fn approve_to_response(
    gateway: &Gateway,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let requester = gateway.person("oid-bench-requester", &[ENGINEERS])?;
    let approver = gateway.person("oid-bench-approver", &[LEADS])?;
    let mut took = Vec::with_capacity(samples);
    let mut decided = Vec::with_capacity(samples);
    for i in 0..samples {
        let model = format!("bench-model-{i}");
        let held = gateway
            .post(
                &http,
                &requester,
                &call(
                    1,
                    "deploy_model",
                    json!({"model": model, "environment": "prod"}),
                ),
            )
            .send();
        let held = tokio::spawn(async move {
            let response = held.await?;
            let status = response.status();
            let text = response.text().await?;
            Ok::<_, anyhow::Error>((Instant::now(), status, text))
        });
        let id = match pending(gateway, &http, &approver, &decided).await {
            Ok(id) => id,
            Err(e) if held.is_finished() => {
                let (_, status, text) = held.await??;
                anyhow::bail!("{e}: the call was answered instead, {status}: {text}");
            }
            Err(e) => return Err(e),
        };
        decided.push(id.clone());
        let decided_at = Instant::now();
        let decision = http
            .post(format!(
                "{}/v1/approvals/{id}/decision",
                gateway.approvals.url
            ))
            .bearer_auth(&approver)
            .json(&json!({"verdict": "approve", "reason": "bench"}))
            .send()
            .await?;
        ensure!(
            decision.status() == 200,
            "approve: {}",
            decision.text().await?
        );
        let (answered_at, status, text) = held.await??;
        ensure!(
            status == 200 && text.contains(r#""isError":false"#),
            "the held call answered {status}: {text}"
        );
        took.push(answered_at - decided_at);
    }
    took.sort_unstable();
    Ok(took)
}

/// The id of the pending request not yet `decided`: calls are held one at a
/// time, so it is the one just sent. (Its arguments are not shown: the
/// policy does not capture them.)
async fn pending(
    gateway: &Gateway,
    http: &reqwest::Client,
    approver: &str,
    decided: &[String],
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = http
            .get(format!("{}/v1/approvals", gateway.approvals.url))
            .bearer_auth(approver)
            .send()
            .await?
            .json()
            .await?;
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "pending")
            .filter_map(|a| a["id"].as_str())
            .find(|id| !decided.iter().any(|d| d == id));
        if let Some(id) = found {
            return Ok(id.to_string());
        }
        ensure!(Instant::now() < deadline, "no new pending request");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What audit intake measured.
pub struct Intake {
    pub events: u64,
    pub elapsed: Duration,
    pub batch_bytes: usize,
}

/// `senders` gateways posting batches of `batch` copies of `event` to
/// `POST /v1/audit` for `duration`.
pub async fn audit_intake(
    approvals_url: &str,
    event: &Value,
    batch: usize,
    senders: usize,
    duration: Duration,
) -> anyhow::Result<Intake> {
    let body = Value::Array(vec![event.clone(); batch]).to_string();
    let batch_bytes = body.len();
    let started = Instant::now();
    let until = started + duration;
    let workers = (0..senders).map(|_| {
        let (url, body) = (format!("{approvals_url}/v1/audit"), body.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut sent = 0u64;
            while Instant::now() < until {
                let response = http
                    .post(&url)
                    .header(GATEWAY_CREDENTIAL_HEADER, CREDENTIAL)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                ensure!(
                    response.status() == 202,
                    "audit intake: {}",
                    response.text().await?
                );
                sent += 1;
            }
            Ok::<_, anyhow::Error>(sent)
        })
    });
    let mut batches = 0;
    for worker in futures::future::join_all(workers).await {
        batches += worker??;
    }
    Ok(Intake {
        events: batches * batch as u64,
        elapsed: started.elapsed(),
        batch_bytes,
    })
}

/// The last event of an audit log, without its chain fields: a real event to replay.
pub fn last_event(audit_log: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(audit_log)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(r#""decision":"Allow""#))
        .context("no allowed call in the audit log")?;
    let mut event: Value = serde_json::from_str(line)?;
    if let Some(fields) = event.as_object_mut() {
        for chain_field in ["seq", "prev", "hash"] {
            fields.remove(chain_field);
        }
    }
    Ok(event)
}
