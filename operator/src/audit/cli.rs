//! `airlock audit verify` and `airlock audit session`.

use crate::present::printable;
use airlock_policy::audit::{Checkpoint, Input, verify_chains};
use anyhow::{Context, bail};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The trail: a file, or `-` for standard input (`kubectl logs … | airlock audit verify -`).
    pub file: PathBuf,
    /// The input is a log stream: lines that are not audit records are skipped.
    #[arg(long)]
    pub logs: bool,
    /// Check each chain against its checkpoints in this namespace of the
    /// cluster the current kubeconfig names (the operator's namespace).
    #[arg(long, value_name = "NAMESPACE")]
    pub checkpoints: Option<String>,
}

pub(crate) fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The record count of every chain, checked against its checkpoint when
/// asked; an error names the first broken record or every mismatch.
pub async fn verify(args: &VerifyArgs) -> anyhow::Result<String> {
    let input = if args.logs {
        Input::Logs
    } else {
        Input::Records
    };
    let text = read_input(&args.file)?;
    let chains =
        verify_chains(&text, input).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let Some(namespace) = &args.checkpoints else {
        let count: u64 = chains.iter().map(|c| c.records()).sum();
        return Ok(format!(
            "{}: {count} records, chain intact",
            args.file.display()
        ));
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster for its checkpoints")?;
    let checkpoints = super::checkpoints::read(client, namespace)
        .await
        .with_context(|| format!("reading AuditCheckpoints in {namespace}"))?;
    let (report, failed) = against_checkpoints(&chains, &checkpoints);
    if failed {
        bail!("{}", report.join("\n"));
    }
    Ok(report.join("\n"))
}

/// One line per chain in the input and per checkpointed chain missing from
/// it; `true` when any chain contradicts its checkpoint or has none.
fn against_checkpoints(
    chains: &[airlock_policy::audit::VerifiedChain],
    checkpoints: &[Checkpoint],
) -> (Vec<String>, bool) {
    let mut failed = false;
    let mut report = Vec::new();
    for chain in chains {
        let name = chain.name.as_deref().unwrap_or("(unnamed)");
        let records = chain.records();
        match checkpoints
            .iter()
            .find(|c| Some(&c.chain) == chain.name.as_ref())
        {
            Some(checkpoint) => match chain.check(checkpoint) {
                Ok(()) => report.push(format!(
                    "chain {name}: {records} records, intact, matches its checkpoint at seq {}",
                    checkpoint.seq
                )),
                Err(reason) => {
                    failed = true;
                    report.push(format!("chain {name}: {records} records, {reason}"));
                }
            },
            None => {
                failed = true;
                report.push(format!(
                    "chain {name}: {records} records, intact, but no checkpoint vouches for it"
                ));
            }
        }
    }
    for checkpoint in checkpoints {
        if !chains
            .iter()
            .any(|c| c.name.as_ref() == Some(&checkpoint.chain))
        {
            report.push(format!(
                "chain {} (checkpoint at seq {}): not in the input",
                checkpoint.chain, checkpoint.seq
            ));
        }
    }
    (report, failed)
}

/// `airlock audit session ID`: the session's events, in order, one a line.
pub fn session_events(file: &Path, session: &str) -> anyhow::Result<String> {
    let text = read_input(file)?;
    airlock_policy::audit::verify(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["session"] == session)
        .map(|e| {
            let mut text = printable(&format!(
                "#{} {} {} {} {} {} {}",
                e["seq"],
                e["time"].as_str().unwrap_or(""),
                e["principal"]["name"].as_str().unwrap_or("-"),
                e["method"]
                    .as_str()
                    .unwrap_or(e["kind"].as_str().unwrap_or("")),
                e["target"].as_str().unwrap_or(""),
                e["decision"].as_str().unwrap_or(""),
                e["arguments"]
                    .as_object()
                    .map(|_| e["arguments"].to_string())
                    .unwrap_or_default()
            ));
            // Session capture: the whole exchange, in order.
            if let Some(request) = e.get("request") {
                text.push_str(&format!("\n    -> {}", printable(&request.to_string())));
            }
            for response in e["responses"].as_array().into_iter().flatten() {
                text.push_str(&format!("\n    <- {}", printable(&response.to_string())));
            }
            text
        })
        .collect();
    if lines.is_empty() {
        bail!(
            "no events of session {} in {}",
            printable(session),
            file.display()
        );
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_policy::audit::{AuditEvent, Chain};

    fn records(name: &str, n: usize) -> Vec<String> {
        let mut chain = Chain::named(name);
        (0..n)
            .map(|_| chain.append(&AuditEvent::default()).unwrap())
            .collect()
    }

    fn checkpoint(name: &str, line: &str) -> Checkpoint {
        let record: Value = serde_json::from_str(line).unwrap();
        Checkpoint {
            chain: name.into(),
            seq: record["seq"].as_u64().unwrap(),
            hash: record["hash"].as_str().unwrap().into(),
        }
    }

    #[test]
    fn every_chain_must_match_a_checkpoint_and_absent_ones_are_named() {
        let (a, b) = (records("a", 3), records("b", 2));
        let text = [a.clone(), b.clone()].concat().join("\n");
        let chains = verify_chains(&text, Input::Records).unwrap();
        let gone = Checkpoint {
            chain: "gone".into(),
            seq: 9,
            hash: "sha256:00".into(),
        };
        let all = [checkpoint("a", &a[2]), checkpoint("b", &b[0]), gone];
        let (report, failed) = against_checkpoints(&chains, &all);
        assert!(!failed, "{report:?}");
        assert_eq!(
            report,
            [
                "chain a: 3 records, intact, matches its checkpoint at seq 3",
                "chain b: 2 records, intact, matches its checkpoint at seq 1",
                "chain gone (checkpoint at seq 9): not in the input",
            ]
        );
        // A chain no checkpoint vouches for could be made up whole.
        let (report, failed) = against_checkpoints(&chains, &all[..1]);
        assert!(failed);
        assert_eq!(
            report[1],
            "chain b: 2 records, intact, but no checkpoint vouches for it"
        );
    }
}
