//! Sidecars one release behind the operator. An upgrade replaces the
//! operator's replicas first; each gateway pod keeps the filter module it
//! started with until its Deployment rolls it. Meanwhile it talks to the new
//! replicas' approval service over the versioned `/v1/` API, so that API
//! must keep serving the previous release's module: its policy long-poll,
//! held calls, single-use grants and audit batches.

use airlock_tests::gateway::{ENGINEERS, Gateway, LEADS, Sidecar, call, policies};
use airlock_tests::paths::previous_release_module;
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

/// The calls the upstream received, by tool.
fn tools_seen(upstream: &Recorder) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|body| body["params"]["name"].as_str().map(String::from))
        .collect()
}

/// What the gateway answers `token`'s `body`.
async fn answer(
    gateway: &Gateway,
    http: &reqwest::Client,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    Ok(gateway
        .post(http, token, &body)
        .send()
        .await?
        .json()
        .await?)
}

#[tokio::test]
async fn a_sidecar_of_the_previous_release_works_with_this_service() -> anyhow::Result<()> {
    let (version, module) = previous_release_module()?;
    eprintln!("the sidecar runs release {version}'s module");
    let upstream = Recorder::start().await?;
    let sidecar = Sidecar {
        module,
        ..Sidecar::standard()?
    };
    let mut gateway =
        Gateway::launch_on(sidecar, upstream.port, Some(policies()), json!({})).await?;
    // Ready once it fetched its policy through `/v1/config`.
    gateway.wait_until_ready().await?;
    let http = reqwest::Client::new();
    let ada = gateway.person("oid-ada", &[ENGINEERS])?;
    let lea = gateway.person("oid-lea", &[LEADS])?;
    let allowed = answer(&gateway, &http, &ada, call(1, "get_status", json!({}))).await?;
    assert_eq!(allowed["result"]["isError"], false, "{allowed}");
    let denied = answer(&gateway, &http, &ada, call(2, "read_secret", json!({}))).await?;
    assert_eq!(
        denied["result"]["_meta"]["dev.airlock/rule"], "test/model-ops/no-secrets",
        "{denied}"
    );

    // Held, asked for through `/v1/approvals`, released by the long-poll and
    // spent with `/consume`.
    let deploy = call(
        3,
        "deploy_model",
        json!({"model": "m", "environment": "prod"}),
    );
    let held = tokio::spawn(gateway.post(&http, &ada, &deploy).send());
    let request = gateway.pending(&lea, 1).await?;
    let id = request["id"].as_str().unwrap_or_default().to_string();
    let approved = gateway.decide(&lea, &id, "approve", "fine").await?;
    assert_eq!(approved.status(), 200, "{}", approved.text().await?);
    let released: Value = held.await??.json().await?;
    assert_eq!(released["result"]["isError"], false, "{released}");
    assert_eq!(
        tools_seen(&upstream),
        ["get_status", "deploy_model"],
        "{}",
        gateway.envoy.log()
    );

    // A policy edit reaches it through the long-poll it has open.
    let mut changed = policies();
    changed[0]["spec"]["rules"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("rules"))?
        .insert(
            0,
            json!({"name": "status-off", "match": {"tools": ["get_status"]}, "action": "Deny"}),
        );
    gateway
        .approvals
        .set_policies(serde_json::from_value(changed)?)?;
    wait_for(
        "the edited policy to reach the sidecar",
        Duration::from_secs(60),
        || async {
            let now = answer(&gateway, &http, &ada, call(4, "get_status", json!({}))).await?;
            let rule = &now["result"]["_meta"]["dev.airlock/rule"];
            Ok((rule == "test/model-ops/status-off").then_some(()))
        },
    )
    .await?;

    // Its audit batches land in this tree's trail, which verifies.
    let trail = wait_for(
        "the sidecar's audit events in the trail",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(&gateway.approvals.audit_log).unwrap_or_default();
            let messages = log
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|event| event["kind"] == "message")
                .filter_map(|event| event["target"].as_str().map(String::from))
                .collect::<Vec<_>>();
            let wanted = ["get_status", "read_secret", "deploy_model"];
            Ok(wanted
                .iter()
                .all(|tool| messages.iter().any(|m| m == tool))
                .then_some(log))
        },
    )
    .await?;
    airlock_policy::audit::verify(&trail)?;
    assert!(
        !gateway.envoy.log().contains("airlock: dropped"),
        "{}",
        gateway.envoy.log()
    );
    Ok(())
}
