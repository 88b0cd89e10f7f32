//! The approval service's API under bad input: every refusal is a 4xx with a
//! message saying why, and none changes a request or the audit trail.

use airlock_operator::dev_issuer::TokenRequest;
use airlock_tests::approvals::{Approvals, CREDENTIAL};
use airlock_tests::gateway::{ENGINEERS, policies};
use airlock_tests::issuer::{AUDIENCE, Issuer};
use reqwest::Method;
use serde_json::{Value, json};

use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER as GATEWAY;

/// Name, method, path, bearer token, with the gateway credential, body, expected status.
type Case<'a> = (&'a str, Method, String, Option<&'a str>, bool, String, u16);

fn person(issuer: &Issuer, oid: &str, groups: &[&str]) -> anyhow::Result<String> {
    let mut request = TokenRequest::user(oid, &format!("{oid}@contoso.com"), AUDIENCE);
    request.groups = groups.iter().map(|g| g.to_string()).collect();
    Ok(issuer.issuer.mint(&request)?)
}

fn deploy(model: &str) -> Value {
    json!({"server": "test/mcp", "method": "tools/call",
           "params": {"name": "deploy_model", "arguments": {"model": model, "environment": "prod"}}})
}

#[tokio::test]
async fn bad_input_on_every_endpoint_is_refused_clearly_and_changes_nothing() -> anyhow::Result<()>
{
    let issuer = Issuer::start().await?;
    let approvals =
        Approvals::start(&issuer, "test/mcp", serde_json::from_value(policies())?).await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", approvals.url);
    let ada = person(&issuer, "oid-ada", &[ENGINEERS])?;
    let lea = person(&issuer, "oid-lea", &["leads"])?;
    let mut expired_request = TokenRequest::user("oid-lea", "lea@contoso.com", AUDIENCE);
    expired_request.groups = vec!["leads".into()];
    expired_request
        .overrides
        .insert("exp".into(), json!(1_700_000_000));
    let expired = issuer.issuer.mint(&expired_request)?;

    // One decided request and one pending request to aim at.
    let ask = |model: &str| {
        http.post(url("/v1/approvals"))
            .bearer_auth(&ada)
            .header(GATEWAY, CREDENTIAL)
            .json(&deploy(model))
            .send()
    };
    let decided: Value = ask("m1").await?.json().await?;
    let decided = decided["id"].as_str().unwrap_or_default().to_string();
    let approve = http
        .post(url(&format!("/v1/approvals/{decided}/decision")))
        .bearer_auth(&lea)
        .json(&json!({"verdict": "approve", "reason": "ok"}))
        .send()
        .await?;
    assert_eq!(approve.status(), 200);
    let pending: Value = ask("m2").await?.json().await?;
    let pending = pending["id"].as_str().unwrap_or_default().to_string();

    let snapshot = || async {
        let list: Value = http
            .get(url("/v1/approvals"))
            .bearer_auth(&lea)
            .send()
            .await?
            .json()
            .await?;
        let log = std::fs::read_to_string(&approvals.audit_log)?;
        anyhow::Ok((list, log))
    };
    let before = snapshot().await?;

    let huge = format!(
        r#"{{"server": "test/mcp", "method": "tools/call", "params": {{"pad": "{}"}}}}"#,
        "x".repeat(1_200_000)
    );
    let decision = |id: &str| format!("/v1/approvals/{id}/decision");
    let cases: Vec<Case> = vec![
        ("malformed JSON", Method::POST, "/v1/approvals".into(), Some(ada.as_str()), true, r#"{"server": "#.into(), 400),
        ("unknown field", Method::POST, "/v1/approvals".into(), Some(ada.as_str()), true,
            json!({"server": "test/mcp", "method": "tools/call", "params": {}, "requester": "oid-lea"}).to_string(), 400),
        ("duplicate key", Method::POST, "/v1/approvals".into(), Some(ada.as_str()), true,
            r#"{"server": "test/mcp", "server": "other/mcp", "method": "tools/call"}"#.into(), 400),
        ("oversized body", Method::POST, "/v1/approvals".into(), Some(ada.as_str()), true, huge, 413),
        ("no gateway credential", Method::POST, "/v1/approvals".into(), Some(ada.as_str()), false, deploy("m3").to_string(), 401),
        ("unknown server", Method::POST, "/v1/approvals".into(), Some(ada.as_str()), true,
            json!({"server": "test/other", "method": "tools/call", "params": {"name": "deploy_model"}}).to_string(), 404),
        ("expired token asking", Method::POST, "/v1/approvals".into(), Some(expired.as_str()), true, deploy("m4").to_string(), 401),
        ("no token", Method::POST, "/v1/approvals".into(), None, true, deploy("m5").to_string(), 401),
        ("unknown id", Method::GET, "/v1/approvals/ar-0000000000000000".into(), Some(lea.as_str()), false, String::new(), 404),
        ("decision on a decided request", Method::POST, decision(&decided), Some(lea.as_str()), false,
            json!({"verdict": "deny", "reason": "changed my mind"}).to_string(), 409),
        ("decision on an unknown id", Method::POST, decision("ar-nope"), Some(lea.as_str()), false,
            json!({"verdict": "approve"}).to_string(), 404),
        ("bad verdict", Method::POST, decision(&pending), Some(lea.as_str()), false,
            json!({"verdict": "maybe"}).to_string(), 400),
        ("expired token deciding", Method::POST, decision(&pending), Some(expired.as_str()), false,
            json!({"verdict": "approve"}).to_string(), 401),
        ("self-approval", Method::POST, decision(&pending), Some(ada.as_str()), false,
            json!({"verdict": "approve"}).to_string(), 403),
        ("consume before approval", Method::POST, format!("/v1/approvals/{pending}/consume"), Some(ada.as_str()), true,
            deploy("m2").to_string(), 409),
        ("consume another call's grant", Method::POST, format!("/v1/approvals/{decided}/consume"), Some(ada.as_str()), true,
            deploy("m-other").to_string(), 409),
        ("answer by a non-requester", Method::POST, format!("/v1/approvals/{pending}/answer"), Some(lea.as_str()), false,
            json!({"message": "hi"}).to_string(), 403),
        ("audit with unknown fields", Method::POST, "/v1/audit".into(), None, true,
            json!([{"time": "2026-01-01T00:00:00Z", "kind": "message", "forged": true}]).to_string(), 400),
        ("audit without credential", Method::POST, "/v1/audit".into(), None, false,
            json!([{"time": "2026-01-01T00:00:00Z", "kind": "message"}]).to_string(), 401),
        ("config of an unknown server", Method::GET, "/v1/config/test/other".into(), None, true, String::new(), 404),
        ("config without credential", Method::GET, "/v1/config/test/mcp".into(), None, false, String::new(), 401),
    ];
    for (name, method, path, token, credential, body, status) in cases {
        let mut request = http
            .request(method, url(&path))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if credential {
            request = request.header(GATEWAY, CREDENTIAL);
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            answer["message"].as_str().is_some_and(|m| m.len() > 5),
            "{name}: no clear message in {answer}"
        );
    }
    let after = snapshot().await?;
    assert_eq!(before.0, after.0, "an approval changed");
    assert_eq!(before.1, after.1, "the audit trail changed");
    Ok(())
}
