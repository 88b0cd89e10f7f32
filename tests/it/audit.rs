//! Audit events from the filter: one per message, tied to the verified
//! identity, chained by the approval service; drops counted when it is down.

use airlock_policy::audit::verify;
use airlock_tests::gateway::{ENGINEERS, Gateway, Sidecar, call, ping, policies};
use airlock_tests::lossy::LossyProxy;
use airlock_tests::peers::{McpServer, Transport};
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
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
    // Defined at zero before any drop, so that Prometheus sees a first drop
    // as an increase.
    let dropped = gateway
        .envoy
        .defined_stat("wasmcustom.airlock.audit.dropped")
        .await?;
    assert_eq!(dropped, Some(0));
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

#[tokio::test]
async fn session_capture_records_each_exchange_redacted_and_airlock_audit_session_shows_it()
-> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableSse).await?;
    let policies = json!([{
        "name": "test/captured",
        "version": "1",
        "spec": {
            "defaultAction": "Deny",
            "rules": [
                {"name": "handshake", "match": {"methods": ["initialize", "notifications/*"]}, "action": "Allow"},
                {"name": "echo", "match": {"tools": ["echo"]}, "action": "Allow",
                 "audit": {"capture": "Session", "redact": ["/message", "/result/content/0/text", "/result/structuredContent"]}},
                {"name": "status", "match": {"tools": ["get_status"]}, "action": "Allow"}
            ]
        }
    }]);
    let gateway = Gateway::launch(server.port, Some(policies), json!({})).await?;
    gateway.wait_until_ready().await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let session = gateway.open_session(&http, &ada).await?;
    for (body, expected) in [
        (
            call(21, "echo", json!({"message": "the password is swordfish"})),
            "the password is swordfish",
        ),
        (call(22, "get_status", json!({})), "ok"),
    ] {
        let answer = gateway
            .post(&http, &ada, &body)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        // The client still gets the answer unredacted: capture only observes.
        let text = answer.text().await?;
        assert!(text.contains(&format!("\"text\":\"{expected}\"")), "{text}");
    }

    let log = gateway.approvals.audit_log.clone();
    let recorded = wait_for("the captured exchange", Duration::from_secs(30), || {
        let found = events(&log);
        let done = found.iter().any(|e| e["target"] == "get_status");
        async move { Ok(done.then_some(found)) }
    })
    .await?;
    let echo = recorded
        .iter()
        .find(|e| e["target"] == "echo")
        .ok_or_else(|| anyhow::anyhow!("no echo event: {recorded:#?}"))?;
    assert_eq!(
        echo["request"],
        json!({"jsonrpc": "2.0", "id": 21, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"message": "[redacted]"}}})
    );
    let responses = echo["responses"].as_array().cloned().unwrap_or_default();
    let answer = responses
        .iter()
        .find(|m| m["id"] == 21)
        .ok_or_else(|| anyhow::anyhow!("no captured answer: {echo:#}"))?;
    assert_eq!(answer["result"]["content"][0]["text"], "[redacted]");
    assert!(!echo.to_string().contains("swordfish"), "{echo:#}");
    // A rule without session capture records no messages.
    let status = recorded
        .iter()
        .find(|e| e["target"] == "get_status")
        .ok_or_else(|| anyhow::anyhow!("no status event"))?;
    assert!(status.get("request").is_none() && status.get("responses").is_none());
    assert!(verify(&std::fs::read_to_string(&log)?).is_ok());

    // `airlock audit session ID`: the exchange, in order.
    let shown = airlock_operator::audit::cli::session_events(&log, &session)?;
    let echo_at = shown.find("-> {").unwrap_or(usize::MAX);
    let answer_at = shown.find("<- {").unwrap_or(0);
    assert!(echo_at < answer_at, "{shown}");
    assert!(
        shown.contains("[redacted]") && !shown.contains("swordfish"),
        "{shown}"
    );
    Ok(())
}

/// Calls `ids` in turn as the holder of `token`: every third is denied.
async fn calls(gateway: &Gateway, token: &str, ids: std::ops::Range<u32>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for id in ids {
        let tool = if id % 3 == 0 {
            "read_secret"
        } else {
            "get_status"
        };
        let answer = gateway
            .post(&http, token, &call(id, tool, json!({})))
            .send()
            .await?;
        anyhow::ensure!(answer.status() == 200, "call {id}: {}", answer.status());
    }
    Ok(())
}

/// Every audit event the gateway made is in the trail once, or counted as
/// dropped: after a batch whose answer was lost (sent again, written once),
/// and after the approval service was down long enough for the gateway's
/// small queue to overflow. Reconciled by the events' numbers: for each
/// sender, the numbers written are distinct, and with those dropped they
/// are every number it made.
#[tokio::test]
async fn every_event_is_written_once_or_counted_dropped_through_lost_answers_and_outages()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let first_batch = AtomicBool::new(true);
    let proxy = LossyProxy::start(move |method, path| {
        method == Method::POST && path == "/v1/audit" && first_batch.swap(false, SeqCst)
    })
    .await?;
    let sidecar = Sidecar {
        approvals_proxy: Some(proxy.port),
        ..Sidecar::standard()?
    };
    let mut gateway = Gateway::launch_on(
        sidecar,
        upstream.port,
        Some(policies()),
        json!({"auditQueueEvents": 5}),
    )
    .await?;
    proxy.forward_to(gateway.approvals.port);
    gateway.wait_until_ready().await?;
    let ada = gateway.token(&[ENGINEERS])?;
    calls(&gateway, &ada, 1..4).await?;
    wait_for(
        "the first batch's answer to be lost",
        Duration::from_secs(30),
        || async { Ok((!proxy.lost().is_empty()).then_some(())) },
    )
    .await?;
    calls(&gateway, &ada, 4..10).await?;
    // The service goes away; the policy already held keeps deciding, and
    // events beyond the queue's five are dropped.
    gateway.approvals.stop();
    calls(&gateway, &ada, 10..30).await?;
    gateway.approvals.restart()?;
    calls(&gateway, &ada, 30..35).await?;

    let stat = async |name: &str| {
        gateway
            .envoy
            .stat(&format!("wasmcustom.airlock.audit.{name}"))
            .await
    };
    let written = || -> BTreeMap<String, Vec<u64>> {
        let mut by_sender: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for event in events(&gateway.approvals.audit_log) {
            if let Some((sender, n)) = event["id"].as_str().and_then(|id| id.rsplit_once('-')) {
                by_sender
                    .entry(sender.into())
                    .or_default()
                    .extend(n.parse::<u64>().ok());
            }
        }
        by_sender
    };
    let reconciled = wait_for(
        "every event written or dropped",
        Duration::from_secs(60),
        || async {
            // Once nothing waits to be sent, every event is written or dropped.
            let pending = stat("pending").await?;
            let produced = stat("produced").await?;
            let dropped = stat("dropped").await?;
            let written: usize = written().values().map(Vec::len).sum();
            Ok(
                (pending == 0 && produced == i64::try_from(written)? + dropped)
                    .then_some((produced, dropped, written)),
            )
        },
    )
    .await;
    let (produced, dropped, count) = reconciled
        .map_err(|e| anyhow::anyhow!("{e}; written {:?}\n{}", written(), gateway.envoy.log()))?;
    eprintln!("audit: {produced} produced = {count} written + {dropped} dropped");
    assert!(dropped > 0, "the outage overflowed no queue");
    assert_eq!(proxy.lost(), ["POST /v1/audit"]);
    for (sender, numbers) in written() {
        let distinct: BTreeSet<&u64> = numbers.iter().collect();
        assert_eq!(
            distinct.len(),
            numbers.len(),
            "{sender} written twice: {numbers:?}"
        );
    }
    verify(&std::fs::read_to_string(&gateway.approvals.audit_log)?)?;
    Ok(())
}

/// An upstream MCP server for faults: `echo` answers one SSE event and then
/// breaks off, `get_status` answers after two seconds.
async fn faulty_upstream() -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    use axum::body::{Body, Bytes};
    use axum::response::Response;
    use futures::StreamExt;
    let answer = async |body: Bytes| -> Response {
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = request["id"].clone();
        let result = json!({"jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": "done"}], "isError": false}});
        if request["params"]["name"] == "get_status" {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(result.to_string()))
                .unwrap_or_default();
        }
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": 1}});
        let first = Bytes::from(format!("event: message\ndata: {progress}\n\n"));
        // The event goes out first; a moment later the server dies.
        let events =
            futures::stream::once(async { Ok(first) }).chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(std::io::Error::other("the server died mid-answer"))
            }));
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(events))
            .unwrap_or_default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route("/mcp", axum::routing::post(answer));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((port, task))
}

/// The MCP server dies in the middle of an SSE answer: the client's stream
/// ends there (what it got, then the break), and the call's audit event
/// says the answer did not reach its end. A slow server's answer arrives
/// whole, however long it takes.
#[tokio::test]
async fn an_answer_cut_off_mid_stream_ends_the_clients_stream_and_is_recorded() -> anyhow::Result<()>
{
    let (port, upstream) = faulty_upstream().await?;
    let gateway = Gateway::start(port).await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let mut cut = gateway
        .post(&http, &ada, &call(41, "echo", json!({"message": "hi"})))
        .send()
        .await?;
    assert_eq!(cut.status(), 200);
    let mut received = Vec::new();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), cut.chunk()).await? {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break "a clean end",
            Err(_) => break "a broken stream",
        }
    };
    assert_eq!(ended, "a broken stream", "the client must see the break");
    assert!(
        String::from_utf8_lossy(&received).contains("notifications/progress"),
        "what was sent before the break arrives"
    );
    let slow = gateway
        .post(&http, &ada, &call(42, "get_status", json!({})))
        .send()
        .await?;
    assert_eq!(slow.status(), 200);
    assert_eq!(
        slow.json::<Value>().await?["result"]["content"][0]["text"],
        "done"
    );

    let recorded = |target: &'static str| {
        let log = gateway.approvals.audit_log.clone();
        async move {
            Ok(events(&log)
                .into_iter()
                .find(|e| e["kind"] == "message" && e["target"] == target))
        }
    };
    let broken = wait_for("the cut answer's event", Duration::from_secs(30), || {
        recorded("echo")
    })
    .await?;
    assert_eq!(broken["upstreamStatus"], 200, "{broken}");
    assert!(
        broken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("did not reach its end")),
        "{broken}"
    );
    let whole = wait_for("the slow answer's event", Duration::from_secs(30), || {
        recorded("get_status")
    })
    .await?;
    assert_eq!(whole["upstreamStatus"], 200, "{whole}");
    assert!(whole.get("reason").is_none(), "{whole}");
    verify(&std::fs::read_to_string(&gateway.approvals.audit_log)?)?;
    upstream.abort();
    Ok(())
}
