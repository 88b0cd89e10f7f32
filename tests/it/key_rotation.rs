//! Signing keys that roll: a token signed with a key the issuer published a
//! moment ago waits for the refetched keys instead of being refused,
//! made-up kids cost at most one refetch per interval, and a key endpoint
//! that is down, answers garbage or never answers costs no held key.

use crate::filter::forge;
use airlock_tests::gateway::{ENGINEERS, Gateway, call, ping};
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_key_published_a_moment_ago_signs_tokens_accepted_on_their_first_call()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    // Refetches every second at most, so a second key can roll within the test.
    let gateway = Gateway::start_with(upstream.port, json!({"jwksMinRefreshSeconds": 1})).await?;
    let issuer = &gateway.issuer.issuer;
    let http = reqwest::Client::new();
    let old = gateway.token(&[ENGINEERS])?;
    assert_eq!(answer(gateway.post(&http, &old, &ping(1))).await?.0, 200);

    let fetched = issuer.key_sets_served();
    let kid = issuer.rotate()?;
    let new = gateway.token(&[ENGINEERS])?;
    let (status, body) =
        answer(gateway.post(&http, &new, &call(2, "get_status", json!({})))).await?;
    assert_eq!(
        status,
        200,
        "a token signed with {kid} was refused: {body}\n{}",
        gateway.envoy.log()
    );
    assert_eq!(issuer.key_sets_served(), fetched + 1, "one refetch");
    assert_eq!(answer(gateway.post(&http, &old, &ping(3))).await?.0, 200);

    // A request without a body (an event stream's GET) waits and goes on too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    issuer.rotate()?;
    let newer = gateway.token(&[ENGINEERS])?;
    let stream = http
        .get(gateway.url())
        .bearer_auth(&newer)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(stream.status(), 200, "{}", gateway.envoy.log());
    let seen = upstream.requests();
    assert_eq!(seen.iter().filter(|r| r.method == "GET").count(), 1);
    assert!(
        seen.iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("get_status")),
        "the waiting call's body reached the server whole"
    );
    assert_eq!(
        gateway.envoy.stat("wasmcustom.airlock.key_waiters").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn made_up_kids_cost_one_refetch_per_interval_and_never_reach_the_server()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    // The default interval (30 s); three waiting calls per worker at most.
    let gateway = Gateway::start_with(upstream.port, json!({"unknownKeyWaiters": 3})).await?;
    let issuer = &gateway.issuer.issuer;
    let http = reqwest::Client::new();
    let claims = Value::Object(issuer.claims(&gateway.request(&[ENGINEERS])));
    let made_up = |n: usize| {
        forge(
            json!({"alg": "RS256", "kid": format!("made-up-{n}")}),
            &claims,
            "c2lnbmF0dXJl",
        )
    };
    let fetched = issuer.key_sets_served();
    let flood = (0..24).map(|n| {
        let token = made_up(n);
        answer(gateway.post(&http, &token, &call(n as u32, "get_status", json!({}))))
    });
    let (mut waited, mut turned_away) = (0, 0);
    for result in futures::future::join_all(flood).await {
        let (status, body) = result?;
        match status {
            401 if message(&body).contains("is not among tenant") => waited += 1,
            503 if message(&body).contains("already wait") => turned_away += 1,
            _ => panic!("{status} {body}"),
        }
    }
    assert!(waited >= 1, "{waited} waited, {turned_away} turned away");
    assert!(waited <= 6, "at most 3 wait on each of 2 workers: {waited}");
    assert_eq!(
        issuer.key_sets_served(),
        fetched + 1,
        "one refetch for the flood"
    );

    // Within the interval a made-up kid is refused at once, with no fetch.
    let (status, body) = answer(gateway.post(&http, &made_up(99), &ping(99))).await?;
    assert_eq!(status, 401);
    assert!(
        message(&body).contains("the next refetch is allowed in"),
        "{body}"
    );
    assert_eq!(issuer.key_sets_served(), fetched + 1);

    let valid = gateway.token(&[ENGINEERS])?;
    let (status, _) =
        answer(gateway.post(&http, &valid, &call(100, "get_status", json!({})))).await?;
    assert_eq!(status, 200);
    let seen = upstream.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the valid call reached the server: {seen:?}"
    );
    assert_eq!(
        gateway.envoy.stat("wasmcustom.airlock.key_waiters").await?,
        0
    );
    assert!(
        gateway
            .envoy
            .stat("wasmcustom.airlock.token_failures.key_waiters_full")
            .await?
            >= 18
    );
    Ok(())
}

#[tokio::test]
async fn with_the_key_endpoint_down_held_keys_work_and_a_new_kid_is_refused_as_unavailable()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start(upstream.port).await?;
    let issuer = &gateway.issuer.issuer;
    let http = reqwest::Client::new();
    let old = gateway.token(&[ENGINEERS])?;
    gateway.issuer.stop_serving();
    issuer.rotate()?;
    let new = gateway.token(&[ENGINEERS])?;
    let response = gateway.post(&http, &new, &ping(1)).send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await?;
    assert_eq!(status, 503, "{body}\n{}", gateway.envoy.log());
    assert!(message(&body).contains("refetching them failed"), "{body}");
    assert!(retry_after.is_some(), "a refusal to retry says when");
    assert_eq!(answer(gateway.post(&http, &old, &ping(2))).await?.0, 200);
    assert_eq!(upstream.requests().len(), 1);
    Ok(())
}

/// The key endpoint answers garbage, then nothing at all (a slow endpoint
/// past every timeout): the keys the gateway holds keep working, a token
/// signed with a new key is refused with a reason each time, and the
/// gateway serves on.
#[tokio::test]
async fn a_key_endpoint_serving_garbage_or_nothing_leaves_held_keys_working() -> anyhow::Result<()>
{
    let upstream = Recorder::start().await?;
    // Refetches every second at most, so each misbehaviour is asked for.
    let gateway = Gateway::start_with(upstream.port, json!({"jwksMinRefreshSeconds": 1})).await?;
    let issuer = &gateway.issuer.issuer;
    let http = reqwest::Client::new();
    let old = gateway.token(&[ENGINEERS])?;
    assert_eq!(answer(gateway.post(&http, &old, &ping(1))).await?.0, 200);
    issuer.rotate()?;
    let new = gateway.token(&[ENGINEERS])?;

    // In the real endpoint's place, on its port: garbage, then silence.
    gateway.issuer.stop_serving();
    let path = gateway.issuer.jwks_path.clone();
    for (n, (what, misbehaviour)) in [
        (
            "garbage",
            axum::routing::get(|| async { r#"{"keys": "not a key set"}"# }),
        ),
        (
            "nothing",
            axum::routing::get(std::future::pending::<&'static str>),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // The aborted server lets go of its port a moment later.
        let port = gateway.issuer.port;
        let listener = wait_for(
            "the key endpoint's port",
            Duration::from_secs(10),
            || async move {
                Ok(tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .ok())
            },
        )
        .await?;
        let app = axum::Router::new().route(&path, misbehaviour);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = 10 * (n as u32 + 1);
        let (status, body) = answer(gateway.post(&http, &new, &ping(id))).await?;
        assert!(
            status == 503 && message(&body).contains("refetching them"),
            "{what}: {status} {body}\n{}",
            gateway.envoy.log()
        );
        eprintln!(
            "key endpoint serving {what}: a new kid got {status}: {}",
            message(&body)
        );
        let (held, _) = answer(gateway.post(&http, &old, &ping(id + 1))).await?;
        assert_eq!(held, 200, "{what}: the held keys stopped working");
        server.abort();
    }
    assert_eq!(
        upstream.requests().len(),
        3,
        "only the old token's pings went up"
    );
    Ok(())
}
