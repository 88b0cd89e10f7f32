//! The gateway is transparent when it allows: `@modelcontextprotocol/conformance
//! server` against server-everything gives the same result for every check
//! through the gateway (a policy that allows everything) as directly. The
//! runner cannot send a bearer token, so an Envoy hop in front of the gateway
//! adds one, as an MCP client's HTTP stack would.

use airlock_tests::envoy::{Envoy, EnvoyOptions};
use airlock_tests::gateway::{ENGINEERS, Gateway};
use airlock_tests::paths::{node, node_modules};
use airlock_tests::peers::{McpServer, Transport};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// Check results by scenario: each check's id and status, in order.
type Results = BTreeMap<String, Vec<(String, String)>>;

async fn conformance(url: &str, out: &Path) -> anyhow::Result<Results> {
    let runner = node_modules()?.join("@modelcontextprotocol/conformance/dist/index.js");
    // The runner exits non-zero when any check fails; the results are compared instead.
    let run = tokio::process::Command::new(node()?)
        .arg(runner)
        .args(["server", "--url", url, "--output-dir"])
        .arg(out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .context("the conformance runner did not finish")??;
    let mut results = Results::new();
    for entry in std::fs::read_dir(out)? {
        let dir = entry?.path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("a result directory")?;
        let scenario = scenario_of(name).with_context(|| format!("no scenario in {name}"))?;
        let checks: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.join("checks.json"))?)?;
        let checks = checks
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        results.insert(scenario, checks);
    }
    anyhow::ensure!(
        !results.is_empty(),
        "no results from the conformance runner:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(results)
}

/// The scenario of a result directory, `server-<scenario>-<YYYY-MM-DDT…>`.
fn scenario_of(directory: &str) -> Option<String> {
    let rest = directory.strip_prefix("server-")?;
    let is_date = |s: &[u8]| {
        s.len() >= 11
            && s.iter().enumerate().take(11).all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                _ => c.is_ascii_digit(),
            })
    };
    let at = (0..rest.len())
        .find(|&i| rest.as_bytes()[i] == b'-' && is_date(&rest.as_bytes()[i + 1..]))?;
    Some(rest[..at].to_string())
}

fn allow_everything() -> Value {
    json!([{
        "name": "test/allow-all",
        "version": "1",
        "spec": {"defaultAction": "Allow", "rules": []}
    }])
}

#[tokio::test]
async fn conformance_checks_pass_through_the_gateway_as_they_pass_directly() -> anyhow::Result<()> {
    let server = McpServer::everything(Transport::StreamableSse).await?;
    let gateway = Gateway::launch(server.port, Some(allow_everything()), json!({})).await?;
    gateway.wait_until_ready().await?;
    let token = gateway.token(&[ENGINEERS])?;
    let mut hop = EnvoyOptions::plain(gateway.envoy.port);
    hop.add_request_headers = vec![("authorization".into(), format!("Bearer {token}"))];
    let hop = Envoy::start(hop).await?;

    let out = tempfile::tempdir()?;
    let direct = conformance(&server.url(), &out.path().join("direct")).await?;
    let through = conformance(&format!("{}/mcp", hop.url), &out.path().join("gateway")).await?;

    let passed = |results: &Results| {
        results
            .values()
            .flatten()
            .filter(|(_, status)| status == "SUCCESS")
            .count()
    };
    assert!(
        passed(&direct) >= 10,
        "too few checks pass directly: {direct:#?}"
    );
    // The checks really went through the filter, under the hop's token.
    let allowed = gateway
        .envoy
        .stat("wasmcustom.airlock.requests.Allow")
        .await?;
    assert!(
        allowed >= 30,
        "only {allowed} requests allowed by the filter"
    );
    eprintln!(
        "conformance: {} checks pass directly and through the gateway; the filter allowed {allowed} requests",
        passed(&direct)
    );
    assert_eq!(
        through,
        direct,
        "through the gateway (left) vs directly (right)\n{}",
        gateway.envoy.log()
    );
    Ok(())
}
