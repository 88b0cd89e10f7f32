//! The audit trail in the cluster: each operator replica writes its own
//! hash chain to standard output and checkpoints its head in the API server;
//! `airlock audit verify` checks what `kubectl logs` returns against those
//! checkpoints, and catches a copy rewritten or cut after the fact.

use super::operator::{SERVER, call, gated_server, operator, token};
use airlock_policy::audit::{AuditEvent, Chain};
use airlock_tests::chart::SYSTEM_NAMESPACE;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::paths::built_binary;
use airlock_tests::wait_for;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every current replica's log, both streams, from its start.
fn replica_logs(node: &Node) -> anyhow::Result<String> {
    let out = node.kubectl(
        ADMIN,
        &[
            "logs",
            "-n",
            SYSTEM_NAMESPACE,
            "-l",
            "app.kubernetes.io/name=airlock-operator",
            "--tail=-1",
        ],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `kubectl airlock audit verify - --logs --checkpoints airlock-system` on
/// `logs`, as the cluster's admin: (succeeded, what it printed).
fn verify(node: &Node, logs: &str) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new(built_binary("kubectl-airlock")?)
        .args([
            "audit",
            "verify",
            "-",
            "--logs",
            "--checkpoints",
            SYSTEM_NAMESPACE,
        ])
        .env("KUBECONFIG", node.kubeconfig(ADMIN))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(logs.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `record[key]`, `null` when absent (indexing a `Map` panics instead).
fn field<'a>(record: &'a Map<String, Value>, key: &str) -> &'a Value {
    record.get(key).unwrap_or(&Value::Null)
}

fn record(line: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(line) {
        Ok(Value::Object(record)) if record.contains_key("hash") => Some(record),
        _ => None,
    }
}

/// `logs` with the record at `index` (a line index) edited by `edit` and
/// every later record of its chain resealed, as someone who can rewrite the
/// log store but not the API server would do: the copy verifies on its own.
fn rewritten(logs: &str, index: usize, edit: impl Fn(&mut Map<String, Value>)) -> String {
    let mut lines: Vec<String> = logs.lines().map(String::from).collect();
    let Some(first) = record(&lines[index]) else {
        return logs.to_string();
    };
    let name = field(&first, "chain")
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut chain = Chain {
        name: Some(name.clone()),
        next_seq: field(&first, "seq").as_u64().unwrap_or_default(),
        last_hash: field(&first, "prev")
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    for (at, line) in lines.iter_mut().enumerate().skip(index) {
        let Some(mut record) = record(line).filter(|r| field(r, "chain") == name.as_str()) else {
            continue;
        };
        if at == index {
            edit(&mut record);
        }
        for sealed in ["chain", "seq", "prev", "hash"] {
            record.remove(sealed);
        }
        let Ok(event) = serde_json::from_value::<AuditEvent>(Value::Object(record)) else {
            continue;
        };
        if let Ok(resealed) = chain.append(&event) {
            *line = resealed;
        }
    }
    lines.join("\n")
}

/// Calls through a gated server land in a replica's chain; once that
/// chain's checkpoint covers them, what `kubectl logs` shows verifies. A copy
/// with one decision rewritten (and every later record resealed) verifies
/// as a chain but not against its checkpoint; so does one cut short; and
/// the API server refuses to move a checkpoint back.
pub async fn the_trail_verifies_against_its_checkpoints(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    let ns = "gate-trail";
    gated_server(node, ns, 20).await?;
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let denied = call(node, ns, &ada, "echo", json!({"message": "hi"})).await?;
    assert_eq!(denied["meta"]["dev.airlock/decision"], "Deny", "{denied}");
    let server = format!("{ns}/{SERVER}");

    // The sidecar batches its events; a replica chains them and, within a
    // checkpoint interval, records the head past them.
    let (logs, index) = wait_for(
        "the denied call's record, under a checkpoint",
        Duration::from_secs(60),
        || {
            let server = server.clone();
            async move {
                let logs = replica_logs(node)?;
                let found = logs.lines().position(|line| {
                    record(line).is_some_and(|r| {
                        field(&r, "server") == server.as_str() && field(&r, "target") == "echo"
                    })
                });
                let Some(index) = found else {
                    return Ok(None);
                };
                let (ok, report) = verify(node, &logs)?;
                Ok((ok && report.contains("matches its checkpoint")).then_some((logs, index)))
            }
        },
    )
    .await?;
    let denied_record = record(logs.lines().nth(index).unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("no record at line {index}"))?;
    assert_eq!(
        field(&denied_record, "decision"),
        "Deny",
        "{denied_record:?}"
    );
    let chain = field(&denied_record, "chain")
        .as_str()
        .unwrap_or_default()
        .to_string();
    let seq = field(&denied_record, "seq").as_u64().unwrap_or_default();
    // The record must lie under the checkpoint for a rewrite of it to show.
    let checkpoint = wait_for(
        "a checkpoint past the record",
        Duration::from_secs(30),
        || {
            let chain = chain.clone();
            async move {
                let out = node.kubectl(
                    ADMIN,
                    &[
                        "get",
                        "auditcheckpoint",
                        "-n",
                        SYSTEM_NAMESPACE,
                        &chain,
                        "-o",
                        "json",
                    ],
                )?;
                let checkpoint: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let at = checkpoint["spec"]["sequence"].as_u64().unwrap_or_default();
                Ok((at >= seq).then_some(checkpoint))
            }
        },
    )
    .await?;
    let logs = replica_logs(node)?;
    let (ok, report) = verify(node, &logs)?;
    assert!(ok, "{report}");
    assert!(report.contains(&format!("chain {chain}: ")), "{report}");
    eprintln!("trail: {report}");

    let index = logs
        .lines()
        .position(|l| {
            record(l)
                .is_some_and(|r| field(&r, "chain") == chain.as_str() && field(&r, "seq") == seq)
        })
        .ok_or_else(|| anyhow::anyhow!("record {seq} of {chain} gone from the log"))?;
    let forged = rewritten(&logs, index, |r| {
        r.insert("decision".into(), json!("Allow"));
    });
    let (ok, report) = verify(node, &forged)?;
    assert!(!ok, "a rewritten chain verified: {report}");
    assert!(report.contains("the chain was rewritten"), "{report}");

    let cut: String = logs
        .lines()
        .enumerate()
        .filter(|(at, l)| {
            *at < index || !record(l).is_some_and(|r| field(&r, "chain") == chain.as_str())
        })
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let (ok, report) = verify(node, &cut)?;
    assert!(!ok, "a cut chain verified: {report}");
    assert!(report.contains("records were removed"), "{report}");

    let at = checkpoint["spec"]["sequence"].as_u64().unwrap_or_default();
    anyhow::ensure!(at >= 2, "the chain is too short to move back: {checkpoint}");
    // The admin's edit is refused either way: back by the CRD's rule, and
    // forward (a valid checkpoint) because only the operator writes them.
    for (sequence, refusal) in [
        (at - 1, "a checkpoint only moves forward"),
        (at + 1, "written only by the Airlock operator"),
    ] {
        let edit = format!(r#"{{"spec":{{"sequence":{sequence}}}}}"#);
        let edited = node.kubectl(
            ADMIN,
            &[
                "patch",
                "auditcheckpoint",
                "-n",
                SYSTEM_NAMESPACE,
                &chain,
                "--type=merge",
                "-p",
                &edit,
            ],
        )?;
        let said = String::from_utf8_lossy(&edited.stderr);
        assert!(
            !edited.status.success(),
            "moved to {sequence}: {checkpoint}"
        );
        assert!(said.contains(refusal), "{said}");
    }
    Ok(())
}
