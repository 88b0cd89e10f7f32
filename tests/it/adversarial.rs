//! The gateway as an attacker meets it, through real Envoy in front of a
//! recording upstream: each case asserts what the upstream saw — nothing a
//! policy refuses, and what it allows byte for byte as it was judged.
//!
//! Elsewhere: forged and ill-claimed tokens
//! (`filter::bad_tokens_get_401_with_the_reason_and_never_reach_the_server`),
//! duplicate keys, batches hiding a call and header/body disagreement
//! (`filter::malformed_and_ambiguous_bodies_are_refused_before_the_server`),
//! a session used by another principal or after it was deleted
//! (`filter::a_session_belongs_to_the_principal_that_opened_it`), two calls
//! racing for one grant (`hold::two_racing_calls_spend_one_single_use_grant`).

use crate::hold::{HeldDeploy, deploy};
use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_tests::approvals::CREDENTIAL;
use airlock_tests::gateway::{ENGINEERS, Gateway, call};
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use anyhow::Context;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A JSON-RPC answer whose tool result is a refusal by `rule`.
    fn refused_by(&self, rule: &str) -> bool {
        let answer = self.json();
        answer["result"]["isError"] == true
            && answer["result"]["_meta"]["dev.airlock/rule"] == format!("test/model-ops/{rule}")
    }
}

/// A POST of `body` to `/mcp` as the holder of `token`, its head only:
/// the body follows as the caller chooses (whole, or in chunks).
fn head(token: &str, framing: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n{framing}\r\n"
    )
}

fn whole(token: &str, body: &[u8]) -> Vec<u8> {
    let mut request = head(token, &format!("content-length: {}\r\n", body.len())).into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads one response from `stream`, with what is left of `buffer` after it.
async fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<Answer> {
    let mut more = async |buffer: &mut Vec<u8>| -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .context("no answer within 30 s")??;
        anyhow::ensure!(n > 0, "the connection closed mid-answer");
        buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        more(buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("answers here carry a content-length")?;
    buffer.drain(..end + 4);
    while buffer.len() < length {
        more(buffer).await?;
    }
    let body = buffer.drain(..length).collect();
    Ok(Answer { status, body })
}

/// Sends `body` to the gateway in two chunks of chunked encoding, split at
/// `at`, the second a moment after the first; the answer.
async fn split_post(port: u16, token: &str, body: &[u8], at: usize) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(head(token, "transfer-encoding: chunked\r\n").as_bytes())
        .await?;
    for (i, part) in [&body[..at], &body[at..]].into_iter().enumerate() {
        let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
        chunk.extend_from_slice(part);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk).await?;
        stream.flush().await?;
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stream.write_all(b"0\r\n\r\n").await?;
    read_answer(&mut stream, &mut Vec::new()).await
}

/// A fresh gateway in front of a recording upstream, and an engineer's token.
async fn engineer_at_a_gateway() -> anyhow::Result<(Recorder, Gateway, String)> {
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start(upstream.port).await?;
    let token = gateway.token(&[ENGINEERS])?;
    Ok((upstream, gateway, token))
}

#[tokio::test]
async fn bodies_split_at_every_byte_are_judged_whole() -> anyhow::Result<()> {
    let (upstream, gateway, token) = engineer_at_a_gateway().await?;
    // An escaped method and a denied tool: every split must still be refused.
    let denied = br#"{"jsonrpc":"2.0","id":1,"method":"\u0074ools/call","params":{"name":"read_secret","arguments":{}}}"#;
    for at in 1..denied.len() {
        let answer = split_post(gateway.envoy.port, &token, denied, at).await?;
        assert!(
            answer.refused_by("no-secrets"),
            "split at {at}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert!(upstream.requests().is_empty(), "a refused call went up");
    // An allowed call arrives whole, exactly as sent, however it was split.
    let allowed = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_status","arguments":{}}}"#;
    for at in 1..allowed.len() {
        let answer = split_post(gateway.envoy.port, &token, allowed, at).await?;
        assert_eq!(answer.status, 200, "split at {at}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), allowed.len() - 1);
    assert!(
        seen.iter().all(|r| r.body == allowed),
        "a body changed on its way"
    );
    Ok(())
}

#[tokio::test]
async fn pipelined_requests_are_judged_one_by_one_and_none_runs_unanswered() -> anyhow::Result<()> {
    let (upstream, gateway, token) = engineer_at_a_gateway().await?;
    let bodies = [
        call(1, "get_status", json!({})),
        call(2, "read_secret", json!({"name": "db"})),
        call(3, "echo", json!({"message": "after"})),
    ];
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.envoy.port)).await?;
    let pipelined: Vec<u8> = bodies
        .iter()
        .flat_map(|b| whole(&token, b.to_string().as_bytes()))
        .collect();
    stream.write_all(&pipelined).await?;
    let mut buffer = Vec::new();
    let mut answers = Vec::new();
    // After a refusal Envoy may close the connection instead of reading on;
    // a request it never answered is one the client sends again (RFC 9112
    // §9.3.2), and it must not have run.
    while answers.len() < bodies.len() {
        match read_answer(&mut stream, &mut buffer).await {
            Ok(answer) => answers.push(answer),
            Err(closed) if answers.len() >= 2 => {
                eprintln!("pipelined: {closed:#} after {} answers", answers.len());
                break;
            }
            Err(e) => return Err(e),
        }
    }
    assert_eq!(answers[0].json()["id"], 1, "{:?}", answers[0]);
    assert!(answers[1].refused_by("no-secrets"), "{:?}", answers[1]);
    assert_eq!(answers[1].json()["id"], 2);
    let answered_allowed: Vec<Value> = answers
        .iter()
        .zip(&bodies)
        .filter(|(answer, _)| answer.json()["result"]["isError"] == false)
        .map(|(_, body)| body.clone())
        .collect();
    // What the server saw is exactly the allowed calls that were answered.
    let seen = || -> Vec<Value> {
        upstream
            .requests()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap_or_default())
            .collect()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen(), answered_allowed);
    if answers.len() < bodies.len() {
        let mut again = TcpStream::connect(("127.0.0.1", gateway.envoy.port)).await?;
        again
            .write_all(&whole(&token, bodies[2].to_string().as_bytes()))
            .await?;
        let answer = read_answer(&mut again, &mut Vec::new()).await?;
        assert_eq!(answer.json()["id"], 3, "{answer:?}");
        assert_eq!(seen(), [bodies[0].clone(), bodies[2].clone()]);
    }
    Ok(())
}

#[tokio::test]
async fn http2_clients_are_judged_as_http1_clients_are() -> anyhow::Result<()> {
    let (upstream, gateway, token) = engineer_at_a_gateway().await?;
    // h2c with prior knowledge: HTTP/2 from the first byte, no upgrade.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let allowed = gateway
        .post(&h2, &token, &call(1, "get_status", json!({})))
        .send()
        .await?;
    assert_eq!(allowed.version(), reqwest::Version::HTTP_2);
    assert_eq!(allowed.status(), 200);
    let denied: Value = gateway
        .post(&h2, &token, &call(2, "read_secret", json!({})))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    let forged = gateway
        .post(&h2, "not-a-token", &call(3, "get_status", json!({})))
        .send()
        .await?;
    assert_eq!(forged.status(), 401);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body)?,
        call(1, "get_status", json!({}))
    );
    Ok(())
}

#[tokio::test]
async fn a_body_not_declared_as_json_in_utf8_is_refused() -> anyhow::Result<()> {
    let (upstream, gateway, token) = engineer_at_a_gateway().await?;
    let http = reqwest::Client::new();
    let body = call(1, "get_status", json!({})).to_string();
    let post = || {
        http.post(gateway.url())
            .bearer_auth(&token)
            .body(body.clone())
    };
    for (case, request) in [
        ("text/plain", post().header("content-type", "text/plain")),
        ("no type", post()),
        (
            "UTF-16",
            post().header("content-type", "application/json; charset=utf-16"),
        ),
        (
            "declared twice",
            post()
                .header("content-type", "application/json")
                .header("content-type", "text/plain"),
        ),
    ] {
        let refused = request.send().await?;
        assert_eq!(refused.status(), 415, "{case}");
        let why: Value = refused.json().await?;
        assert_eq!(why["error"], "unsupported_media_type", "{case}: {why}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let declared = post()
        .header("content-type", "application/json; charset=UTF-8")
        .send()
        .await?;
    assert_eq!(declared.status(), 200);
    assert_eq!(upstream.requests().len(), 1);
    Ok(())
}

#[tokio::test]
async fn deep_wide_and_look_alike_bodies_reach_the_server_only_as_judged() -> anyhow::Result<()> {
    let (upstream, gateway, token) = engineer_at_a_gateway().await?;
    let http = reqwest::Client::new();
    let send = async |body: String| -> anyhow::Result<(u16, Value)> {
        let answer = http
            .post(gateway.url())
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await.unwrap_or(Value::Null)))
    };

    // Nesting past the parser's depth: refused as invalid, not a crash.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_status","arguments":{{"a":{}1{}}}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let (status, answer) = send(deep).await?;
    assert_eq!(status, 400, "{answer}");
    // Wide: thousands of arguments, judged and passed whole.
    let wide: serde_json::Map<String, Value> =
        (0..3000).map(|i| (format!("k{i}"), json!(i))).collect();
    let wide = call(2, "get_status", Value::Object(wide));
    let (status, _) = send(wide.to_string()).await?;
    assert_eq!(status, 200);

    // Names that only look like an allowed tool are refused as invalid:
    // tool names are ASCII (MCP's own character set for them).
    for (id, name) in [
        (3, "g\u{0435}t_status"),  // Cyrillic е
        (4, "get\u{200b}_status"), // zero-width space
        (5, "get_status\u{feff}"), // zero-width no-break space
        (6, "ＧＥＴ_status"),      // fullwidth letters
    ] {
        let (status, answer) = send(call(id, name, json!({})).to_string()).await?;
        assert_eq!(status, 400, "{name:?}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("tool names are")),
            "{name:?}: {answer}"
        );
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "only the wide call went up");
    assert_eq!(serde_json::from_slice::<Value>(&seen[0].body)?, wide);

    // The gateway still serves.
    let (status, _) = send(call(7, "get_status", json!({})).to_string()).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn an_approval_releases_only_its_own_call_once_on_its_own_server() -> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    // Holds end after 4 s, so that a call nobody approved is answered soon.
    let gateway = Gateway::start_with(upstream.port, json!({"maxHoldSeconds": 4})).await?;
    let HeldDeploy {
        upstream,
        gateway,
        http,
        ada,
        lea,
        held,
        id,
    } = HeldDeploy::at(upstream, gateway).await?;
    let approved = gateway.decide(&lea, &id, "approve", "model m only").await?;
    assert_eq!(approved.status(), 200);
    let released: Value = held.await??.json().await?;
    assert_eq!(released["result"]["isError"], false, "{released}");
    assert_eq!(upstream.requests().len(), 1);

    // The approval presented for another server: the service refuses to
    // spend it there, and it stays spent for this one.
    let on_another = http
        .post(format!(
            "{}/v1/approvals/{id}/consume",
            gateway.approvals.url
        ))
        .bearer_auth(&ada)
        .header(GATEWAY_CREDENTIAL_HEADER, CREDENTIAL)
        .json(&json!({"server": "test/other", "method": "tools/call",
            "params": {"name": "deploy_model", "arguments": {"model": "m", "environment": "prod"}}}))
        .send()
        .await?;
    assert!(
        on_another.status().is_client_error(),
        "{}",
        on_another.status()
    );

    // The approved call replayed with other arguments, and replayed as it
    // was once its single-use grant is spent: each waits for an approval
    // of its own, and nothing more goes up.
    let other_arguments = call(
        2,
        "deploy_model",
        json!({"model": "m-2", "environment": "prod"}),
    );
    for (n, replay) in [(2, other_arguments), (3, deploy(3))] {
        let answer: Value = gateway
            .post(&http, &ada, &replay)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(answer["result"]["isError"], true, "{answer}");
        let waiting_for = answer["result"]["_meta"]["dev.airlock/approval"]
            .as_str()
            .unwrap_or_default();
        assert!(
            !waiting_for.is_empty() && waiting_for != id,
            "replay {n} was not held under a request of its own: {answer}"
        );
    }
    assert_eq!(upstream.requests().len(), 1, "a replay reached the server");
    Ok(())
}

#[tokio::test]
async fn a_held_call_whose_client_goes_away_is_cancelled_and_never_runs() -> anyhow::Result<()> {
    let HeldDeploy {
        upstream,
        gateway,
        http,
        lea,
        held,
        id,
        ..
    } = HeldDeploy::start().await?;
    // The client goes away: its connection closes mid-hold.
    held.abort();
    let shown = || {
        http.get(format!("{}/v1/approvals/{id}", gateway.approvals.url))
            .bearer_auth(&lea)
            .send()
    };
    wait_for(
        "the request to be cancelled",
        Duration::from_secs(30),
        || {
            let request = shown();
            async move {
                let shown: Value = request.await?.json().await?;
                Ok((shown["state"] == "cancelled").then_some(()))
            }
        },
    )
    .await?;
    // An approval afterwards is refused, and nothing ran.
    let late = gateway.decide(&lea, &id, "approve", "too late").await?;
    assert_eq!(late.status(), 409, "{}", late.text().await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let log = std::fs::read_to_string(&gateway.approvals.audit_log)?;
    airlock_policy::audit::verify(&log)?;
    let cancelled = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["kind"] == "approval.cancelled" && e["approvalId"] == id.as_str())
        .ok_or_else(|| anyhow::anyhow!("no approval.cancelled for {id} in\n{log}"))?;
    assert_eq!(
        cancelled["reason"], "the caller went away while the call was held",
        "{cancelled}"
    );
    Ok(())
}
