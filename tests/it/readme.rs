//! The README's walkthrough of `make demo`, run as written: its shell
//! blocks are read from README.md and run, in one bash, in a directory laid
//! out like the repository's root, against `airlock up --demo --policy
//! examples/policy.yaml` — only the gateway's port (an ephemeral one, not
//! 8421) and the held request's id (`ar-…`) filled in.

use crate::local::demo_args;
use airlock_operator::local::up::Running;
use airlock_tests::docs::{fenced_blocks, named_tests};
use airlock_tests::paths::{built_binary, repo_root};
use airlock_tests::wait_for;
use std::process::Command;
use std::time::Duration;

const SECTION: &str = "## Five minutes with `make demo`";

#[tokio::test]
async fn the_walkthrough_of_make_demo_runs_as_written() -> anyhow::Result<()> {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let blocks = fenced_blocks(&readme, SECTION, "sh")?;
    anyhow::ensure!(blocks.len() == 3, "expected three blocks: {blocks:?}");

    // The repository's root, as the walkthrough sees it, with a state of its own.
    let dir = tempfile::Builder::new()
        .prefix("airlock-readme-")
        .tempdir()?;
    let airlock = built_binary("airlock")?;
    let target = airlock
        .parent()
        .and_then(|debug| debug.parent())
        .ok_or_else(|| anyhow::anyhow!("{} is in no target directory", airlock.display()))?;
    std::os::unix::fs::symlink(target, dir.path().join("target"))?;
    for linked in [".tools", "tests", "examples"] {
        std::os::unix::fs::symlink(root.join(linked), dir.path().join(linked))?;
    }
    let running = Running::start(&demo_args(
        root.join("examples/policy.yaml"),
        dir.path().join(".airlock"),
        50,
    )?)
    .await?;
    let gateway = running.endpoints.gateway.clone();
    let port = reqwest::Url::parse(&gateway)?
        .port()
        .ok_or_else(|| anyhow::anyhow!("{gateway} has no port"))?;
    let address = format!("127.0.0.1:{port}");

    // What a reader does between the blocks: finds the request's id in the
    // list, and waits for the held call.
    let find_request = r#"for i in $(seq 150); do AR=$(AIRLOCK_TOKEN=$LEA airlock approvals list 2>/dev/null | grep -o 'ar-[0-9a-f]*' | head -1); [ -n "$AR" ] && break; sleep 0.2; done"#;
    let script = format!(
        "shopt -s expand_aliases\n{}\n{find_request}\n{}\nwait\n{}",
        blocks[0].replace("127.0.0.1:8421", &address),
        blocks[1].replace("ar-…", "$AR"),
        blocks[2],
    );
    // The gateway loads keys and policy just after Envoy starts.
    let probe = Command::new(&airlock)
        .args(["token", "--user", "probe"])
        .current_dir(dir.path())
        .output()?;
    let probe = String::from_utf8(probe.stdout)?.trim().to_string();
    wait_for(
        "the gateway to load keys and policy",
        Duration::from_secs(30),
        || {
            let request = reqwest::Client::new()
                .get(gateway.clone())
                .bearer_auth(&probe)
                .send();
            async move { Ok(request.await.ok().filter(|r| r.status() != 503).map(|_| ())) }
        },
    )
    .await?;
    let output = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .current_dir(dir)
                .output()
        }
    })
    .await??;
    drop(running);
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for (what, expected) in [
        ("get_status allowed", "serving in prod"),
        (
            "read_secret denied with its rule",
            "default/model-ops/no-secrets does not allow it",
        ),
        ("ada refused as an approver", "not an approver"),
        ("the held deploy completed", "deployed fraud:v7 to prod"),
        ("the trail verified", "chain intact"),
    ] {
        anyhow::ensure!(
            transcript.contains(expected),
            "{what}: no {expected:?} in\n{transcript}"
        );
    }
    // The demo's own client exits cleanly: its session ends without a complaint.
    anyhow::ensure!(
        !transcript.contains("Session termination failed"),
        "the client complained as it ended its session:\n{transcript}"
    );
    let tools_line = transcript
        .lines()
        .find(|l| l.contains("get_status") && l.contains("deploy_model"))
        .unwrap_or_default();
    anyhow::ensure!(
        !tools_line.contains("read_secret"),
        "read_secret listed for ada: {transcript}"
    );
    Ok(())
}

/// Every test the README and `docs/` name as the proof of a claim exists.
#[test]
fn every_test_the_docs_name_exists() -> anyhow::Result<()> {
    let root = repo_root();
    let mut defined = std::collections::BTreeSet::new();
    let mut sources = vec![
        root.join("operator/src"),
        root.join("policy/src"),
        root.join("wasm-filter/src"),
        root.join("tests"),
    ];
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                sources.push(entry?.path());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            defined.extend(text.split("fn ").skip(1).filter_map(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                (!name.is_empty()).then_some(name)
            }));
        }
    }
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))? {
        documents.push(entry?.path());
    }
    let mut missing = Vec::new();
    let mut named = 0;
    for document in documents
        .iter()
        .filter(|d| d.extension().is_some_and(|e| e == "md"))
    {
        for test in named_tests(&std::fs::read_to_string(document)?) {
            named += 1;
            let name = test.rsplit("::").next().unwrap_or_default();
            if !defined.contains(name) {
                missing.push(format!("{}: {test}", document.display()));
            }
        }
    }
    anyhow::ensure!(
        named > 20,
        "found only {named} named tests: is the pattern right?"
    );
    anyhow::ensure!(
        missing.is_empty(),
        "named but not defined:\n{}",
        missing.join("\n")
    );
    Ok(())
}
