//! Audit events from the filter: one per message, tied to the verified
//! identity, chained by the approval service; drops counted when it is down.

use airlock_policy::audit::verify;
use airlock_tests::gateway::{ENGINEERS, Gateway, call, ping};
use airlock_tests::peers::{McpServer, Transport};
use airlock_tests::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

fn events(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn every_message_is_audited_with_its_identity_and_the_chain_verifies() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let gateway = Gateway::start(server.port).await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let session = gateway.open_session(&http, &ada).await?;
    let allowed = gateway
        .post(&http, &ada, &call(11, "get_status", json!({})))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await?;
    assert_eq!(allowed.status(), 200);
    let denied = gateway
        .post(&http, &ada, &call(12, "read_secret", json!({"name": "db"})))
        .send()
        .await?;
    assert_eq!(denied.status(), 200);
    let anonymous = http
        .post(gateway.url())
        .header("content-type", "application/json")
        .body(ping(13).to_string())
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);
    let malformed = gateway
        .post(&http, &ada, &json!("ignored"))
        .body(r#"{"jsonrpc":"2.0","id":14,"id":15,"method":"ping"}"#)
        .send()
        .await?;
    assert_eq!(malformed.status(), 400);

    let log = gateway.approvals.audit_log.clone();
    let recorded = wait_for("four audit events", Duration::from_secs(30), || {
        let found = events(&log);
        let complete = found.iter().any(|e| e["target"] == "get_status")
            && found
                .iter()
                .any(|e| e["target"] == "read_secret" && e["decision"] == "Deny")
            && found.iter().any(|e| e["decision"] == "Unauthenticated")
            && found.iter().any(|e| e["decision"] == "Invalid");
        async move { Ok(complete.then_some(found)) }
    })
    .await?;
    let find = |check: &dyn Fn(&Value) -> bool| -> anyhow::Result<Value> {
        recorded
            .iter()
            .find(|e| check(e))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no such event in {recorded:#?}"))
    };
    let status = find(&|e| e["target"] == "get_status")?;
    assert_eq!(status["kind"], "message");
    assert_eq!(status["server"], "test/mcp");
    assert_eq!(status["method"], "tools/call");
    assert_eq!(status["decision"], "Allow");
    assert_eq!(status["rule"], "test/model-ops/read-status");
    assert_eq!(status["principal"]["oid"], "oid-ada");
    assert_eq!(status["upstreamStatus"], 200);
    assert_eq!(status["session"], session.as_str());
    assert_eq!(status["protocolVersion"], "2025-06-18");
    assert!(
        status["argumentsDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert!(status.get("arguments").is_none(), "no rule captures them");

    let secret = find(&|e| e["target"] == "read_secret" && e["decision"] == "Deny")?;
    assert_eq!(secret["rule"], "test/model-ops/no-secrets");
    assert!(
        secret.get("upstreamStatus").is_none(),
        "never reached the server"
    );
    assert!(
        secret["reason"]
            .as_str()
            .is_some_and(|r| r.contains("denied")),
        "{secret}"
    );
    let anonymous = find(&|e| e["decision"] == "Unauthenticated")?;
    assert!(anonymous.get("principal").is_none());
    let invalid = find(&|e| e["decision"] == "Invalid")?;
    assert_eq!(invalid["principal"]["oid"], "oid-ada");

    let text = std::fs::read_to_string(&gateway.approvals.audit_log)?;
    assert_eq!(verify(&text)?, text.lines().count() as u64);
    Ok(())
}

#[tokio::test]
async fn audit_events_the_gateway_cannot_deliver_are_counted_and_logged() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let mut gateway = Gateway::start_with(server.port, json!({"auditQueueEvents": 3})).await?;
    gateway.approvals.stop();
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    for id in 0..20 {
        // The policy already loaded keeps deciding while the service is down.
        let response = gateway
            .post(&http, &ada, &call(id, "read_secret", json!({})))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
    }
    let dropped = gateway
        .envoy
        .stat("wasmcustom.airlock.audit.dropped")
        .await?;
    assert!(dropped >= 14, "dropped {dropped}\n{}", gateway.envoy.log());
    assert!(
        gateway.envoy.log().contains("dropped"),
        "{}",
        gateway.envoy.log()
    );
    Ok(())
}
