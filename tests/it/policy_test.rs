//! `kubectl airlock policy test` over `examples/`, as a pipeline runs it:
//! the installed plugin, a policy file and call fixtures, the verdict in the
//! exit code.

use airlock_tests::paths::{built_binary, repo_root};

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
