//! The enforcement filter in real Envoy (`--concurrency 2`): token checks,
//! strict MCP parsing and policy, with real peers on both sides.

use airlock_operator::dev_issuer::{DevIssuer, TokenRequest};
use airlock_policy::entra::TokenVersion;
use airlock_tests::gateway::{ENGINEERS, Gateway, Sidecar, call, ping, policies};
use airlock_tests::issuer::TENANT;
use airlock_tests::paths::crash_hook_wasm;
use airlock_tests::peers::{McpServer, Transport, python_client};
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn python_sdk_client_is_allowed_refused_and_told_why() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let gateway = Gateway::start(server.port).await?;
    let token = gateway.token(&[ENGINEERS])?;
    let run = |operation: Vec<&'static str>| {
        let token = token.clone();
        let url = gateway.envoy.url.clone();
        async move { python_client(&url, Transport::StreamableJson, Some(&token), &operation).await }
    };

    let listed = run(vec!["list-tools"]).await?;
    assert_eq!(
        listed["tools"],
        json!(["deploy_model", "echo", "get_status"]),
        "{listed}\n{}",
        gateway.envoy.log()
    );

    let status = run(vec!["call", "get_status"]).await?;
    assert_eq!(
        status,
        json!({"isError": false, "text": "ok", "meta": null})
    );

    let denied = run(vec!["call", "add", r#"{"a": 1, "b": 2}"#]).await?;
    assert_eq!(denied["isError"], true, "{denied}");
    assert!(
        denied["text"]
            .as_str()
            .unwrap_or_default()
            .contains("test/model-ops/defaultAction"),
        "{denied}"
    );
    assert_eq!(denied["meta"]["dev.airlock/decision"], "Deny");

    // Someone outside the engineers group may shake hands but not read status.
    let outsider = gateway.token(&[])?;
    let refused = python_client(
        &gateway.envoy.url,
        Transport::StreamableJson,
        Some(&outsider),
        &["call", "get_status"],
    )
    .await?;
    assert_eq!(refused["isError"], true, "{refused}");
    let listed = python_client(
        &gateway.envoy.url,
        Transport::StreamableJson,
        Some(&outsider),
        &["list-tools"],
    )
    .await?;
    assert_eq!(listed["tools"], json!(["deploy_model"]), "{listed}");
    Ok(())
}

#[tokio::test]
async fn sse_and_legacy_transports_are_judged_and_filtered_too() -> anyhow::Result<()> {
    for transport in [Transport::StreamableSse, Transport::LegacySse] {
        let server = McpServer::python(transport).await?;
        let gateway = Gateway::start(server.port).await?;
        let token = gateway.token(&[ENGINEERS])?;
        let url = gateway.envoy.url.clone();
        let listed = python_client(&url, transport, Some(&token), &["list-tools"]).await?;
        assert_eq!(
            listed["tools"],
            json!(["deploy_model", "echo", "get_status"]),
            "{transport:?}: {listed}\n{}",
            gateway.envoy.log()
        );
        let status = python_client(&url, transport, Some(&token), &["call", "get_status"]).await?;
        assert_eq!(status["text"], "ok", "{transport:?}: {status}");
        if transport == Transport::StreamableSse {
            let denied = python_client(
                &url,
                transport,
                Some(&token),
                &["call", "add", r#"{"a": 1, "b": 2}"#],
            )
            .await?;
            assert_eq!(denied["isError"], true, "{denied}");
        }
    }
    Ok(())
}

/// Opens a legacy SSE stream through the gateway and returns it with the
/// message endpoint its first event announces.
pub(crate) async fn legacy_stream(
    gateway: &Gateway,
    token: &str,
) -> anyhow::Result<(reqwest::Response, String)> {
    let mut stream = reqwest::Client::new()
        .get(format!("{}/sse", gateway.envoy.url))
        .bearer_auth(token)
        .send()
        .await?;
    let mut start = String::new();
    while !start.contains("\r\n\r\n") && !start.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended before its endpoint event"))?;
        start.push_str(&String::from_utf8_lossy(&chunk));
    }
    let endpoint = start
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .ok_or_else(|| anyhow::anyhow!("no endpoint event: {start}"))?
        .trim()
        .to_string();
    Ok((stream, endpoint))
}

#[tokio::test]
async fn legacy_posts_are_judged_and_their_session_is_bound() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::LegacySse).await?;
    let gateway = Gateway::start(server.port).await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let (_stream, endpoint) = legacy_stream(&gateway, &ada).await?;
    let post = |token: &str, body: Value| {
        http.post(format!("{}{endpoint}", gateway.envoy.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    // Legacy responses travel on the stream, so a refused POST is an HTTP error.
    let denied = post(&ada, call(1, "read_secret", json!({}))).send().await?;
    assert_eq!(denied.status(), 403);
    let answer: Value = denied.json().await?;
    assert_eq!(answer["error"]["code"], -31001, "{answer}");
    let batch = post(&ada, json!([ping(1)])).send().await?;
    assert_eq!(batch.status(), 400, "batches did not exist in 2024-11-05");
    // The session belongs to whoever opened the stream.
    let mut bob = gateway.request(&[ENGINEERS]);
    bob.oid = "oid-bob".into();
    let bob = gateway.issuer.issuer.mint(&bob)?;
    assert_eq!(post(&bob, ping(2)).send().await?.status(), 404);
    assert_eq!(post(&ada, ping(3)).send().await?.status(), 202);
    Ok(())
}

#[tokio::test]
async fn a_session_belongs_to_the_principal_that_opened_it() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let gateway = Gateway::start(server.port).await?;
    let http = reqwest::Client::new();
    let ada = gateway.token(&[ENGINEERS])?;
    let mut bob_request = gateway.request(&[ENGINEERS]);
    bob_request.oid = "oid-bob".into();
    let bob = gateway.issuer.issuer.mint(&bob_request)?;
    let session = gateway.open_session(&http, &ada).await?;
    let in_session = |token: &str, body: &Value| {
        gateway
            .post(&http, token, body)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(in_session(&ada, &initialized).send().await?.status(), 202);
    let stolen = in_session(&bob, &call(2, "get_status", json!({})))
        .send()
        .await?;
    assert_eq!(
        stolen.status(),
        404,
        "another principal presented the session"
    );
    let owner = in_session(&ada, &call(3, "get_status", json!({})))
        .send()
        .await?;
    assert_eq!(owner.status(), 200);
    let invented = gateway
        .post(&http, &ada, &ping(4))
        .header("mcp-session-id", "invented")
        .send()
        .await?;
    assert_eq!(invented.status(), 404);
    // Ending the session forgets the binding.
    let ended = http
        .delete(gateway.url())
        .bearer_auth(&ada)
        .header("mcp-session-id", &session)
        .send()
        .await?;
    assert!(ended.status().is_success(), "{}", ended.status());
    let after = in_session(&ada, &ping(5)).send().await?;
    assert_eq!(after.status(), 404);
    Ok(())
}

pub(crate) fn forge(header: Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_reason_and_never_reach_the_server() -> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start(upstream.port).await?;
    let http = reqwest::Client::new();
    let good = gateway.issuer.issuer.claims(&gateway.request(&[ENGINEERS]));
    let good = Value::Object(good);
    let stranger = DevIssuer::new(TENANT)?; // same tenant and kid names, other keys
    let other_tenant = DevIssuer::new("0b7e8c52-1111-4222-8333-000000000002")?;
    let mint = |edit: &dyn Fn(&mut TokenRequest)| -> anyhow::Result<String> {
        let mut request = gateway.request(&[ENGINEERS]);
        edit(&mut request);
        Ok(gateway.issuer.issuer.mint(&request)?)
    };

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "forged signature",
            stranger.mint(&gateway.request(&[ENGINEERS]))?,
            "signature does not verify",
        ),
        (
            "expired",
            mint(&|r| {
                r.overrides.insert("exp".into(), json!(1));
            })?,
            "expired",
        ),
        (
            "not yet valid",
            mint(&|r| {
                r.overrides.insert("nbf".into(), json!(4_000_000_000u64));
            })?,
            "not valid yet",
        ),
        (
            "other tenant",
            other_tenant.mint(&gateway.request(&[ENGINEERS]))?,
            "not a trusted Entra ID tenant",
        ),
        (
            "tid disagrees with issuer",
            mint(&|r| {
                r.overrides
                    .insert("tid".into(), json!("0b7e8c52-1111-4222-8333-000000000002"));
            })?,
            "does not match its issuer",
        ),
        (
            "wrong audience",
            mint(&|r| r.audience = "api://something-else".into())?,
            "audience",
        ),
        (
            "v1 with v2 version claim",
            mint(&|r| {
                r.version = TokenVersion::V1;
                r.overrides.insert("ver".into(), json!("2.0"));
            })?,
            "version",
        ),
        (
            "alg none",
            forge(json!({"alg": "none", "kid": "dev-key-1"}), &good, "x"),
            "only RS256",
        ),
        (
            "HS256",
            forge(
                json!({"alg": "HS256", "kid": "dev-key-1"}),
                &good,
                "c2lnbmF0dXJl",
            ),
            "only RS256",
        ),
        (
            "unknown kid",
            forge(
                json!({"alg": "RS256", "kid": "nope"}),
                &good,
                "c2lnbmF0dXJl",
            ),
            "not among tenant",
        ),
        ("garbage", "not-a-jwt".into(), "compact JWS"),
        (
            "groups overage",
            mint(&|r| {
                r.overrides
                    .insert("_claim_names".into(), json!({"groups": "src1"}));
            })?,
            "groups overage",
        ),
    ];
    for (name, token, reason) in &cases {
        let response = gateway.post(&http, token, &ping(1)).send().await?;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            challenge.contains("resource_metadata=\"http://"),
            "{name}: {challenge}"
        );
        let body: Value = response.json().await?;
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains(reason),
            "{name}: {body}"
        );
    }

    let missing = http
        .post(gateway.url())
        .body(ping(1).to_string())
        .send()
        .await?;
    assert_eq!(missing.status(), 401);
    let token = gateway.token(&[ENGINEERS])?;
    let in_query = http
        .post(format!("{}?access_token={token}", gateway.url()))
        .body(ping(1).to_string())
        .send()
        .await?;
    assert_eq!(in_query.status(), 400);
    let twice = http
        .post(gateway.url())
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .body(ping(1).to_string())
        .send()
        .await?;
    assert_eq!(twice.status(), 401);
    assert!(
        upstream.requests().is_empty(),
        "refused requests reached the server"
    );

    // The protected-resource metadata is answered by the gateway itself.
    let metadata: Value = http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            gateway.envoy.url
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        metadata["authorization_servers"],
        json!([format!("https://login.microsoftonline.com/{TENANT}/v2.0")])
    );
    assert!(upstream.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn allowed_calls_carry_the_verified_identity_and_nothing_the_client_claims()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start(upstream.port).await?;
    let http = reqwest::Client::new();
    let token = gateway.token(&[ENGINEERS])?;
    let body = call(5, "get_status", json!({}));
    let response = gateway
        .post(&http, &token, &body)
        .header("x-airlock-oid", "someone-else")
        .header("X-Airlock-Decision", "Allow")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-airlock-filter")
            .and_then(|v| v.to_str().ok()),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.header("x-airlock-oid"), Some("oid-ada"));
    assert_eq!(request.header("x-airlock-tid"), Some(TENANT));
    assert_eq!(request.header("x-airlock-groups"), Some(ENGINEERS));
    assert_eq!(request.header("x-airlock-decision"), Some("Allow"));
    assert_eq!(
        request.header("authorization"),
        None,
        "the token is not forwarded by default"
    );
    assert_eq!(
        request
            .headers
            .iter()
            .filter(|(n, _)| n == "x-airlock-oid")
            .count(),
        1
    );
    assert_eq!(
        request.body,
        body.to_string().into_bytes(),
        "forwarded byte for byte"
    );

    // tools/list answers are filtered, hence private to the caller.
    let list = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"});
    let listed = gateway.post(&http, &token, &list).send().await?;
    assert_eq!(
        listed
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("private, no-store")
    );
    Ok(())
}

#[tokio::test]
async fn malformed_and_ambiguous_bodies_are_refused_before_the_server() -> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start(upstream.port).await?;
    let http = reqwest::Client::new();
    let token = gateway.token(&[ENGINEERS])?;
    let raw = |body: &str| {
        http.post(gateway.url())
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("not JSON", raw("{"), 400),
        ("name given twice", raw(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_status","name":"read_secret"}}"#), 400),
        ("null id", raw(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#), 400),
        ("batch under 2025-06-18", raw(&format!("[{}]", ping(1))).header("mcp-protocol-version", "2025-06-18"), 400),
        ("Mcp-Name disagrees", raw(&call(1, "read_secret", json!({})).to_string())
            .header("mcp-protocol-version", "2026-07-28").header("mcp-method", "tools/call").header("mcp-name", "get_status"), 400),
        ("unknown protocol version", raw(&ping(1).to_string()).header("mcp-protocol-version", "1999-01-01"), 400),
        ("compressed", raw(&ping(1).to_string()).header("content-encoding", "gzip"), 415),
        ("too large", raw(&json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad": "x".repeat(70_000)}}).to_string()), 413),
        ("GET with a body", http.get(gateway.url()).bearer_auth(&token).body("{}"), 400),
        ("other path", http.post(format!("{}/admin", gateway.envoy.url)).bearer_auth(&token).body(ping(1).to_string()), 404),
        ("encoded slash", http.post(format!("{}/mcp%2Fx", gateway.envoy.url)).bearer_auth(&token).body(ping(1).to_string()), 400),
        ("PUT", http.put(gateway.url()).bearer_auth(&token).body(ping(1).to_string()), 405),
    ];
    for (name, request, status) in cases {
        let response = request.send().await?;
        assert_eq!(
            response.status(),
            status,
            "{name}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    // Escapes decode before judging: `tools\/call` is tools/call.
    let escaped =
        raw(r#"{"jsonrpc":"2.0","id":7,"method":"tools\/call","params":{"name":"read_secret"}}"#)
            .send()
            .await?;
    let answer: Value = escaped.json().await?;
    assert_eq!(answer["result"]["isError"], true, "{answer}");

    // A batch hiding a denied call is refused whole.
    let batch = json!([
        call(1, "get_status", json!({})),
        call(2, "read_secret", json!({}))
    ]);
    let answer: Value = raw(&batch.to_string()).send().await?.json().await?;
    assert_eq!(answer.as_array().map(Vec::len), Some(2), "{answer}");
    assert!(
        upstream.requests().is_empty(),
        "a refused request reached the server: {:?}",
        upstream.requests()
    );

    // The normalized path is what goes upstream.
    let ok = http
        .post(format!("{}//mcp/", gateway.envoy.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(ping(9).to_string())
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(upstream.requests()[0].path, "/mcp");
    Ok(())
}

#[tokio::test]
async fn a_dry_run_policy_records_what_it_would_do_and_lets_the_call_through() -> anyhow::Result<()>
{
    let upstream = Recorder::start().await?;
    let policies = json!([
        {"name": "test/open", "version": "1", "spec": {"defaultAction": "Allow"}},
        {"name": "test/rollout", "version": "1", "spec": {
            "enforcement": "DryRun", "defaultAction": "Allow",
            "rules": [{"name": "no-secrets", "match": {"tools": ["read_secret"]}, "action": "Deny"}]}}
    ]);
    let gateway = Gateway::launch(upstream.port, Some(policies), json!({})).await?;
    let http = reqwest::Client::new();
    let token = gateway.token(&[])?;
    let response = wait_for("the gateway to load", Duration::from_secs(30), || {
        let request = gateway
            .post(&http, &token, &call(1, "read_secret", json!({})))
            .send();
        async move { Ok(request.await.ok().filter(|r| r.status() == 200)) }
    })
    .await?;
    assert_eq!(
        response
            .headers()
            .get("x-airlock-dry-run")
            .and_then(|v| v.to_str().ok()),
        Some("Deny test/rollout")
    );
    let answer: Value = response.json().await?;
    assert_eq!(
        answer["result"]["isError"], false,
        "the call went through: {answer}"
    );
    assert_eq!(upstream.requests().len(), 1);
    let other = gateway
        .post(&http, &token, &call(2, "get_status", json!({})))
        .send()
        .await?;
    assert!(other.headers().get("x-airlock-dry-run").is_none());

    let event = wait_for("the dry-run audit event", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&gateway.approvals.audit_log).unwrap_or_default();
        async move {
            Ok(log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["target"] == "read_secret"))
        }
    })
    .await?;
    assert_eq!(event["decision"], "Allow");
    assert_eq!(event["dryRun"], "Deny test/rollout");
    assert_eq!(event["upstreamStatus"], 200);
    assert_eq!(
        gateway
            .envoy
            .stat("wasmcustom.airlock.dry_run.Deny")
            .await?,
        1
    );
    // Scraped, what the metric counts is a label of one series (Envoy
    // names a custom namespace's stats without its `envoy_wasmcustom_`).
    let scraped = reqwest::get(format!("{}/stats/prometheus", gateway.envoy.admin_url))
        .await?
        .text()
        .await?;
    for series in [
        r#"airlock_dry_run{action="Deny"} 1"#,
        r#"airlock_requests{decision="Allow"}"#,
    ] {
        assert!(scraped.contains(series), "no {series} in\n{scraped}");
    }
    Ok(())
}

#[tokio::test]
async fn a_crashed_vm_refuses_the_call_instead_of_passing_it() -> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let sidecar = Sidecar {
        module: crash_hook_wasm()?,
        ..Sidecar::standard()?
    };
    let gateway = Gateway::launch_on(sidecar, upstream.port, Some(policies()), json!({})).await?;
    gateway.wait_until_ready().await?;
    let token = gateway.token(&[ENGINEERS])?;
    let http = reqwest::Client::new();
    let allowed = gateway
        .post(
            &http,
            &token,
            &call(1, "get_status", json!({"marker": "before"})),
        )
        .send()
        .await?;
    assert_eq!(allowed.status(), 200);

    // An allowed call whose headers make the VM trap mid-request.
    let crashed = gateway
        .post(
            &http,
            &token,
            &call(2, "get_status", json!({"marker": "crash"})),
        )
        .header("x-airlock-test-crash", "1")
        .send()
        .await?;
    let status = crashed.status();
    let body = crashed.text().await?;
    assert!(
        status.is_server_error(),
        "a crashed filter must refuse: {status} {body}\n{}",
        gateway.envoy.log()
    );

    // Whatever worker serves them, later calls are refused or judged; none
    // reaches the upstream unjudged, and the crashed call never did.
    for id in 3..9 {
        let later = gateway
            .post(
                &http,
                &token,
                &call(id, "read_secret", json!({"marker": "after"})),
            )
            .send()
            .await?;
        let (status, text) = (later.status(), later.text().await?);
        assert!(
            status.is_server_error() || text.contains("read_secret"),
            "{status} {text}"
        );
    }
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(seen.iter().any(|b| b.contains("before")), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|b| b.contains("crash") || b.contains("after")),
        "the upstream saw calls the filter did not pass: {seen:?}"
    );
    Ok(())
}
