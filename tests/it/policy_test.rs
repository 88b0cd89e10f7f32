//! `kubectl airlock policy test` as a pipeline runs it: the installed
//! plugin over `examples/` (a policy file and call fixtures, the verdict in
//! the exit code), and over a real gateway's trail (`--replay`).

use airlock_operator::dev_issuer::TokenRequest;
use airlock_tests::gateway::{self, ENGINEERS, Gateway, call};
use airlock_tests::issuer::AUDIENCE;
use airlock_tests::paths::{built_binary, repo_root};
use airlock_tests::peers::{McpServer, Transport};
use airlock_tests::wait_for;
use serde_json::json;
use std::time::Duration;

/// `(fixture, caller's groups, exit code, what the report names)`.
const CASES: [(&str, &str, i32, &str); 4] = [
    (
        "deploy-to-prod",
        "engineers",
        3,
        "default/model-ops/deploy-to-prod",
    ),
    (
        "deploy-to-staging",
        "engineers",
        0,
        "default/model-ops/deploy-to-staging",
    ),
    (
        "deploy-to-prod",
        "sales",
        2,
        "default/model-ops/defaultAction",
    ),
    (
        "read-secret",
        "engineers,leads",
        2,
        "default/model-ops/no-secrets",
    ),
];

#[test]
fn the_examples_decide_as_their_policy_says() -> anyhow::Result<()> {
    let plugin = built_binary("kubectl-airlock")?;
    let examples = repo_root().join("examples");
    for (fixture, groups, code, names) in CASES {
        let out = std::process::Command::new(&plugin)
            .args(["policy", "test", "-f"])
            .arg(examples.join("policy.yaml"))
            .arg("--call")
            .arg(examples.join(format!("calls/{fixture}.json")))
            .args(["--as-groups", groups])
            .output()?;
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{fixture} as {groups}: {report}"
        );
        assert!(report.contains(names), "{fixture} as {groups}: {report}");
    }
    // A fixture that is not one strict request is an error (1), saying why.
    let bad = tempfile::NamedTempFile::new()?;
    std::fs::write(
        bad.path(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}"#,
    )?;
    let out = std::process::Command::new(&plugin)
        .args(["policy", "test", "-f"])
        .arg(examples.join("policy.yaml"))
        .arg("--call")
        .arg(bad.path())
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("duplicate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The policy [`gateway::policies`] serves, as the ApprovalPolicy a
/// repository holds, with `rules` in place of its rules.
fn policy_file(rules: Option<serde_json::Value>) -> anyhow::Result<tempfile::NamedTempFile> {
    let served = gateway::policies();
    let mut spec = served[0]["spec"].clone();
    if let Some(rules) = rules {
        spec["rules"] = rules;
    }
    let document = json!({
        "apiVersion": "mcp.airlock.dev/v1alpha1",
        "kind": "ApprovalPolicy",
        "metadata": {"namespace": "test", "name": "model-ops"},
        "spec": spec,
    });
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), document.to_string())?;
    Ok(file)
}

/// A gateway's real trail, replayed by the installed plugin against a
/// changed policy: what would change is listed by line, what the trail
/// cannot settle is named, and the unchanged policy changes nothing.
#[tokio::test]
async fn a_recorded_trail_replayed_against_a_changed_policy() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let gateway = Gateway::start(server.port).await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let bob =
        gateway
            .issuer
            .issuer
            .mint(&TokenRequest::user("oid-bob", "bob@contoso.com", AUDIENCE))?;
    for (token, tool, arguments) in [
        (&ada, "get_status", json!({})),
        (&bob, "get_status", json!({})),
        (&ada, "read_secret", json!({"name": "db"})),
        (
            &ada,
            "deploy_model",
            json!({"model": "m", "environment": "staging"}),
        ),
    ] {
        gateway
            .post(&http, token, &call(1, tool, arguments))
            .send()
            .await?;
    }
    let trail = gateway.approvals.audit_log.clone();
    wait_for("the calls in the trail", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&trail).unwrap_or_default();
        async move { Ok(text.contains("deploy_model").then_some(())) }
    })
    .await?;

    let changed = policy_file(Some(json!([
        {"name": "handshake", "match": {"methods": ["initialize", "ping", "notifications/*", "tools/list"]}, "action": "Allow"},
        {"name": "read-status", "match": {"tools": ["get_status", "echo"]}, "principals": {"groups": [ENGINEERS, "auditors"]}, "action": "Allow"},
        {"name": "deploy-to-staging", "match": {"tools": ["deploy_model"], "arguments": [{"pointer": "/environment", "in": ["staging"]}]}, "action": "Allow"},
        {"name": "secrets-with-approval", "match": {"tools": ["read_secret"]}, "principals": {"groups": [ENGINEERS]},
         "action": "RequireApproval", "approval": {"approvers": {"groups": ["leads"]}}}
    ])))?;
    let plugin = built_binary("kubectl-airlock")?;
    let replay = |policy: &std::path::Path| {
        std::process::Command::new(&plugin)
            .args(["policy", "test", "-f"])
            .arg(policy)
            .arg("--replay")
            .arg(&trail)
            .args(["--server", "test/mcp"])
            .output()
    };
    let out = replay(changed.path())?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{report}");
    let lines: Vec<&str> = report.lines().collect();
    let listed = |start: &str, call: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(start) && l.contains(call))
            .ok_or_else(|| anyhow::anyhow!("no {start} {call} in\n{report}"))
    };
    let secret = listed(
        "CHANGED",
        "ada@contoso.com  test/mcp  tools/call read_secret",
    )?;
    assert!(
        lines[secret].ends_with("Deny -> RequireApproval  by test/model-ops/secrets-with-approval"),
        "{report}"
    );
    // bob's groups were checked only for those the recorded policy named.
    let status = listed(
        "UNDECIDABLE",
        "bob@contoso.com  test/mcp  tools/call get_status",
    )?;
    assert!(lines[status + 1].contains("group auditors"), "{report}");
    // The recorded policy captured no arguments of a staging deploy.
    let staging = listed("UNDECIDABLE", "tools/call deploy_model")?;
    assert!(
        lines[staging + 1]
            .contains("argument /environment: the call's arguments were not recorded"),
        "{report}"
    );
    assert!(
        !report.contains("get_status  Allow")
            && !report.contains("ada@contoso.com  test/mcp  tools/call get_status"),
        "ada's status call stays allowed: {report}"
    );

    let unchanged = policy_file(None)?;
    let out = replay(unchanged.path())?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains(" 0 would change, 0 undecidable"),
        "{report}"
    );
    Ok(())
}

/// Runs `examples/gitops/check-policies.sh` from `dir` with the built plugin
/// on PATH, as a pipeline would.
fn check_policies(dir: &std::path::Path) -> anyhow::Result<std::process::Output> {
    let plugin = built_binary("kubectl-airlock")?;
    let bin = plugin
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", plugin.display()))?;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH")?);
    Ok(std::process::Command::new("sh")
        .arg(dir.join("check-policies.sh"))
        .env("PATH", path)
        .output()?)
}

/// The GitOps example's pipeline check passes on the example as committed,
/// and fails naming the fixture when a change to a policy loosens it.
#[test]
fn the_gitops_pipeline_check_holds_and_catches_a_loosened_policy() -> anyhow::Result<()> {
    let examples = repo_root().join("examples/gitops");
    let out = check_policies(&examples)?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let copy = tempfile::tempdir()?;
    std::fs::create_dir_all(copy.path().join("policies"))?;
    std::fs::create_dir_all(copy.path().join("calls"))?;
    for dir in ["", "policies", "calls"] {
        for entry in std::fs::read_dir(examples.join(dir))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(
                    &path,
                    copy.path()
                        .join(dir)
                        .join(path.file_name().unwrap_or_default()),
                )?;
            }
        }
    }
    let deploy = copy.path().join("policies/deploy-model.yaml");
    let loosened = std::fs::read_to_string(&deploy)?
        .replace(
            "- name: to-production",
            "- name: to-production-or-anywhere-with-a-typo",
        )
        .replace("in: [prod, production]", "in: [prd]");
    std::fs::write(&deploy, loosened)?;
    let out = check_policies(copy.path())?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("calls/deploy-to-production.json as e0e0e0e0-0000-4000-8000-00000000000e: expected RequireApproval, got Allow"),
        "{report}"
    );
    Ok(())
}
