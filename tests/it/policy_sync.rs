//! Policy reaches running gateways from the approval service by long-poll:
//! a change applies within seconds, without restarting Envoy or cutting a
//! connection, and a gateway that has no policy yet refuses everything.

use crate::filter::legacy_stream;
use airlock_tests::gateway::{ENGINEERS, Gateway, call, policies};
use airlock_tests::peers::{McpServer, Transport};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Reads the legacy stream until the message answering `id` arrives.
async fn answer_on_stream(stream: &mut reqwest::Response, id: u32) -> anyhow::Result<Value> {
    let mut seen = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the stream ended; read so far: {seen}"))?;
        seen.push_str(&String::from_utf8_lossy(&chunk));
        for data in seen.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if let Ok(message) = serde_json::from_str::<Value>(data)
                && message["id"] == id
            {
                return Ok(message);
            }
        }
    }
}

#[tokio::test]
async fn a_policy_change_applies_without_restart_or_cut_connections() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::LegacySse).await?;
    let mut gateway = Gateway::start(server.port).await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let (mut stream, endpoint) = legacy_stream(&gateway, &ada).await?;
    let post = |body: Value| {
        http.post(format!("{}{endpoint}", gateway.envoy.url))
            .bearer_auth(&ada)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    assert_eq!(post(initialize).await?.status(), 202);
    answer_on_stream(&mut stream, 1).await?;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(initialized).await?.status(), 202);

    let add = |id: u32| call(id, "add", json!({"a": 2, "b": 3}));
    assert_eq!(post(add(2)).await?.status(), 403, "default deny");

    let mut changed = policies();
    changed[0]["spec"]["rules"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("rules"))?
        .push(json!({"name": "arithmetic", "match": {"tools": ["add"]},
                     "principals": {"groups": [ENGINEERS]}, "action": "Allow"}));
    let changed_at = Instant::now();
    gateway
        .approvals
        .set_policies(serde_json::from_value(changed)?)?;
    let mut id = 3;
    loop {
        let status = post(add(id)).await?.status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 403);
        anyhow::ensure!(
            changed_at.elapsed() < Duration::from_secs(60),
            "the change never applied\n{}",
            gateway.envoy.log()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("policy change applied after {:?}", changed_at.elapsed());
    // The answer travels on the stream opened before the change.
    let answer = answer_on_stream(&mut stream, id).await?;
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    Ok(())
}

#[tokio::test]
async fn without_a_policy_the_gateway_refuses_everything_and_says_why() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let gateway = Gateway::launch(server.port, None, json!({})).await?;
    let http = reqwest::Client::new();
    let token = gateway.token(&[ENGINEERS])?;
    // Give the filter time to try, and fail, to reach the approval service.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for body in [
        call(1, "get_status", json!({})),
        json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    ] {
        let refused = gateway.post(&http, &token, &body).send().await?;
        assert_eq!(refused.status(), 503);
        let answer: Value = refused.json().await?;
        assert_eq!(answer["error"], "policy_unavailable", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains("policy")),
            "{answer}"
        );
    }
    Ok(())
}
