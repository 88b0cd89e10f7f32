//! Held calls through real Envoy and the real approval service: approval
//! releases the original call, denial and outages refuse it, a single-use
//! grant releases exactly one call, and the trail verifies.

use airlock_tests::gateway::{ENGINEERS, Gateway, LEADS, Sidecar, call, policies};
use airlock_tests::lossy::LossyProxy;
use airlock_tests::peers::{McpServer, Transport, python_client};
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

pub(crate) fn deploy(id: u32) -> Value {
    call(
        id,
        "deploy_model",
        json!({"model": "m", "environment": "prod"}),
    )
}

/// Ada's deploy to production, held at a fresh gateway in front of a
/// recording upstream, and the id of the request Lea the lead sees for it.
pub(crate) struct HeldDeploy {
    pub(crate) upstream: Recorder,
    pub(crate) gateway: Gateway,
    pub(crate) http: reqwest::Client,
    pub(crate) ada: String,
    pub(crate) lea: String,
    pub(crate) held: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    pub(crate) id: String,
}

impl HeldDeploy {
    pub(crate) async fn start() -> anyhow::Result<HeldDeploy> {
        let upstream = Recorder::start().await?;
        let gateway = Gateway::start(upstream.port).await?;
        HeldDeploy::at(upstream, gateway).await
    }

    /// The deploy held at `gateway`, ready, in front of `upstream`.
    pub(crate) async fn at(upstream: Recorder, gateway: Gateway) -> anyhow::Result<HeldDeploy> {
        let http = reqwest::Client::new();
        let ada = gateway.person("oid-ada", &[ENGINEERS])?;
        let lea = gateway.person("oid-lea", &[LEADS])?;
        let held = tokio::spawn(gateway.post(&http, &ada, &deploy(1)).send());
        let request = gateway.pending(&lea, 1).await?;
        let id = request["id"].as_str().unwrap_or_default().to_string();
        Ok(HeldDeploy {
            upstream,
            gateway,
            http,
            ada,
            lea,
            held,
            id,
        })
    }
}

#[tokio::test]
async fn a_held_call_runs_after_approval_even_past_twenty_seconds() -> anyhow::Result<()> {
    let server = McpServer::python(Transport::StreamableJson).await?;
    let gateway = Gateway::start(server.port).await?;
    let ada = gateway.person("oid-ada", &[ENGINEERS, LEADS])?;
    let lea = gateway.person("oid-lea", &[LEADS])?;
    let url = gateway.envoy.url.clone();
    let client = {
        let ada = ada.clone();
        tokio::spawn(async move {
            python_client(
                &url,
                Transport::StreamableJson,
                Some(&ada),
                &[
                    "call",
                    "deploy_model",
                    r#"{"model": "m", "environment": "prod"}"#,
                ],
            )
            .await
        })
    };
    let request = gateway.pending(&lea, 1).await?;
    let id = request["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(request["state"], "pending");
    assert_eq!(request["tool"], "deploy_model");
    assert_eq!(request["requester"]["oid"], "oid-ada");

    // Ada leads too, but may not approve her own call.
    let own = gateway.decide(&ada, &id, "approve", "mine").await?;
    assert_eq!(own.status(), 403);
    assert!(own.text().await?.contains("self-approval"));

    // Longer than Envoy's default route timeout and than one long-poll.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let approved = gateway.decide(&lea, &id, "approve", "go ahead").await?;
    assert_eq!(approved.status(), 200, "{}", approved.text().await?);

    let result = client.await??;
    assert_eq!(
        result["isError"],
        false,
        "{result}\n{}",
        gateway.envoy.log()
    );
    assert_eq!(result["text"], "deployed m to prod");

    // A decided request is final.
    let late = gateway.decide(&lea, &id, "deny", "changed my mind").await?;
    assert_eq!(late.status(), 409);

    // The held message's own event names the approval that released it.
    let held = wait_for(
        "the held call's audit event",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&gateway.approvals.audit_log).unwrap_or_default();
            let id = id.clone();
            async move {
                Ok(log
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|e| e["kind"] == "message" && e["approvalId"] == id.as_str()))
            }
        },
    )
    .await?;
    assert_eq!(held["decision"], "RequireApproval");
    assert_eq!(held["upstreamStatus"], 200);
    assert!(
        held["heldMicros"].as_u64().is_some_and(|m| m > 20_000_000),
        "{held}"
    );
    let log = std::fs::read_to_string(&gateway.approvals.audit_log)?;
    let records = airlock_policy::audit::verify(&log)?;
    assert!(records >= 4, "asked, decided, executed, message: {log}");
    assert!(log.contains("approval.executed") && log.contains("oid-lea"));
    Ok(())
}

#[tokio::test]
async fn denial_and_an_unreachable_service_refuse_the_call() -> anyhow::Result<()> {
    let HeldDeploy {
        upstream,
        mut gateway,
        http,
        ada,
        lea,
        held,
        id,
    } = HeldDeploy::start().await?;
    assert_eq!(
        gateway
            .decide(&lea, &id, "deny", "freeze week")
            .await?
            .status(),
        200
    );
    let answer: Value = held.await??.json().await?;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("denied") && text.contains("freeze week"),
        "{text}"
    );
    assert_eq!(
        answer["result"]["_meta"]["dev.airlock/approval"],
        id.as_str()
    );

    // The approval service goes away: the gateway fails closed and says so.
    gateway.approvals.stop();
    let answer: Value = gateway
        .post(&http, &ada, &deploy(2))
        .send()
        .await?
        .json()
        .await?;
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.contains("approval service is unavailable"), "{answer}");
    assert!(
        upstream.requests().is_empty(),
        "a refused call reached the server"
    );
    Ok(())
}

#[tokio::test]
async fn two_racing_calls_spend_one_single_use_grant() -> anyhow::Result<()> {
    let HeldDeploy {
        upstream,
        gateway,
        http,
        ada,
        lea,
        held: first,
        id,
    } = HeldDeploy::start().await?;
    let second = tokio::spawn(gateway.post(&http, &ada, &deploy(2)).send());
    // The identical ask joins the same request instead of flooding approvers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed: Value = http
        .get(format!("{}/v1/approvals", gateway.approvals.url))
        .bearer_auth(&lea)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        gateway.decide(&lea, &id, "approve", "once").await?.status(),
        200
    );
    let answers: Vec<Value> = vec![first.await??.json().await?, second.await??.json().await?];
    let released = answers
        .iter()
        .filter(|a| a["result"]["isError"] == false)
        .count();
    assert_eq!(released, 1, "{answers:?}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "exactly one call reached the server"
    );
    let refused = answers
        .iter()
        .find(|a| a["result"]["isError"] == true)
        .cloned()
        .unwrap_or_default();
    assert!(
        refused["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&id),
        "{refused}"
    );
    Ok(())
}

/// The service releases a held call, but its answer is lost on the way back
/// (the replica that served it died after acting): the gateway asks again
/// with the same release key, is answered as before, and the call runs
/// exactly once on the one grant.
#[tokio::test]
async fn a_release_whose_answer_was_lost_is_asked_again_and_runs_once() -> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let first_release = AtomicBool::new(true);
    let proxy = LossyProxy::start(move |method, path| {
        method == Method::POST && path.ends_with("/consume") && first_release.swap(false, SeqCst)
    })
    .await?;
    let sidecar = Sidecar {
        approvals_proxy: Some(proxy.port),
        ..Sidecar::standard()?
    };
    let gateway = Gateway::launch_on(sidecar, upstream.port, Some(policies()), json!({})).await?;
    proxy.forward_to(gateway.approvals.port);
    gateway.wait_until_ready().await?;
    let HeldDeploy {
        upstream,
        gateway,
        http,
        lea,
        held,
        id,
        ..
    } = HeldDeploy::at(upstream, gateway).await?;
    let approved = gateway.decide(&lea, &id, "approve", "go").await?;
    assert_eq!(approved.status(), 200, "{}", approved.text().await?);

    let answer: Value = held.await??.json().await?;
    assert_eq!(
        answer["result"]["isError"],
        false,
        "{answer}\n{}",
        gateway.envoy.log()
    );
    assert_eq!(proxy.lost(), [format!("POST /v1/approvals/{id}/consume")]);
    assert_eq!(upstream.requests().len(), 1, "the call ran once");
    let shown: Value = http
        .get(format!("{}/v1/approvals/{id}", gateway.approvals.url))
        .bearer_auth(&lea)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (&shown["state"], &shown["releases"]),
        (&json!("executed"), &json!(1))
    );
    let log = std::fs::read_to_string(&gateway.approvals.audit_log)?;
    airlock_policy::audit::verify(&log)?;
    assert_eq!(log.matches("\"approval.executed\"").count(), 1, "{log}");
    Ok(())
}

#[tokio::test]
async fn a_restart_of_the_approval_service_keeps_the_request_and_the_trail() -> anyhow::Result<()> {
    let HeldDeploy {
        upstream,
        mut gateway,
        http,
        ada,
        lea,
        held,
        id,
    } = HeldDeploy::start().await?;
    gateway.approvals.restart()?;
    // The held call's long-poll was cut: the gateway refused rather than guess.
    let cut: Value = held.await??.json().await?;
    assert_eq!(cut["result"]["isError"], true, "{cut}");
    assert!(upstream.requests().is_empty());

    // The request survived the restart, and its approval lets the retry through once.
    let survived = gateway.pending(&lea, 1).await?;
    assert_eq!(survived["id"], id.as_str());
    assert_eq!(survived["state"], "pending");
    let approved = gateway
        .decide(&lea, &id, "approve", "after the restart")
        .await?;
    assert_eq!(approved.status(), 200, "{}", approved.text().await?);
    let retried: Value = gateway
        .post(&http, &ada, &deploy(2))
        .send()
        .await?
        .json()
        .await?;
    assert!(retried.get("error").is_none(), "{retried}");
    assert_eq!(upstream.requests().len(), 1, "released exactly once");

    let log = std::fs::read_to_string(&gateway.approvals.audit_log)?;
    let records = airlock_policy::audit::verify(&log)?;
    assert!(
        log.contains("approval.asked") && log.contains("approval.executed"),
        "{log}"
    );
    assert!(records >= 3);
    Ok(())
}

#[tokio::test]
async fn two_hundred_held_calls_each_released_once_by_their_own_approval() -> anyhow::Result<()> {
    const CALLS: usize = 200;
    // The service caps pending asks per principal at 20: ten requesters, twenty calls each.
    const REQUESTERS: usize = 10;
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start(upstream.port).await?;
    let http = reqwest::Client::new();
    let approvers = [
        gateway.person("oid-lea", &[LEADS])?,
        gateway.person("oid-leo", &[LEADS])?,
        gateway.person("oid-liv", &[LEADS])?,
    ];
    let mut held = Vec::new();
    for n in 0..CALLS {
        let requester = gateway.person(&format!("oid-r{}", n % REQUESTERS), &[ENGINEERS])?;
        let body = call(
            u32::try_from(n)?,
            "deploy_model",
            json!({"model": format!("m{n}"), "environment": "prod"}),
        );
        held.push(tokio::spawn(gateway.post(&http, &requester, &body).send()));
    }
    let list = gateway.visible(&approvers[0], CALLS).await?;
    let mut ids: Vec<String> = list
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), CALLS);
    // Random order (ids are random), split among three approvers deciding at once.
    ids.sort();
    let decided = ids
        .chunks(CALLS.div_ceil(approvers.len()))
        .zip(&approvers)
        .map(|(chunk, approver)| {
            let gateway = &gateway;
            async move {
                for id in chunk {
                    let response = gateway.decide(approver, id, "approve", "ok").await?;
                    anyhow::ensure!(response.status() == 200, "{}", response.text().await?);
                }
                anyhow::Ok(())
            }
        });
    for result in futures::future::join_all(decided).await {
        result?;
    }
    for (n, response) in held.into_iter().enumerate() {
        let answer: Value = response.await??.json().await?;
        assert_eq!(answer["id"], n, "each caller gets its own answer");
        assert!(
            answer.get("error").is_none() && answer["result"]["isError"] == false,
            "{answer}"
        );
    }

    // Each call reached the server once, carrying the approval bound to its own arguments.
    let released = upstream.requests();
    assert_eq!(released.len(), CALLS);
    let mut models = std::collections::BTreeSet::new();
    for request in &released {
        let body: Value = serde_json::from_slice(&request.body)?;
        let approval_id = request.header("x-airlock-approval").unwrap_or_default();
        let approval = list
            .iter()
            .find(|a| a["id"] == approval_id)
            .ok_or_else(|| anyhow::anyhow!("released under unknown approval {approval_id:?}"))?;
        assert_eq!(
            approval["argumentsDigest"],
            airlock_policy::canonical::params_digest(body.get("params")).as_str(),
            "released by another call's approval"
        );
        models.insert(body["params"]["arguments"]["model"].to_string());
    }
    assert_eq!(models.len(), CALLS, "no call released twice");

    let log = wait_for("every message event", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(&gateway.approvals.audit_log).unwrap_or_default();
        let messages = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["kind"] == "message" && e["target"] == "deploy_model")
            .count();
        async move { Ok((messages >= CALLS).then_some(log)) }
    })
    .await?;
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    let messages = events
        .iter()
        .filter(|e| e["kind"] == "message" && e["target"] == "deploy_model")
        .count();
    assert_eq!(messages, CALLS, "one event per message");
    assert_eq!(count("approval.asked"), CALLS);
    assert_eq!(count("approval.decided"), CALLS);
    assert_eq!(count("approval.executed"), CALLS);
    airlock_policy::audit::verify(&log)?;
    Ok(())
}

#[tokio::test]
async fn held_calls_are_capped_per_caller_and_per_gateway_and_a_dropped_hold_frees_its_place()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let gateway = Gateway::start_with(
        upstream.port,
        json!({"maxHoldsPerCaller": 2, "maxHolds": 3}),
    )
    .await?;
    let http = reqwest::Client::new();
    let ada = gateway.person("oid-ada", &[ENGINEERS])?;
    let bob = gateway.person("oid-bob", &[ENGINEERS])?;
    let lea = gateway.person("oid-lea", &[LEADS])?;
    // Each call deploys its own model, so each is its own approval request.
    let deploy = |id: u32| {
        call(
            id,
            "deploy_model",
            json!({"model": format!("m{id}"), "environment": "prod"}),
        )
    };
    let hold = |token: &str, id: u32| tokio::spawn(gateway.post(&http, token, &deploy(id)).send());
    // A call refused at a cap, and the refusal says which.
    let refused = |token: &str, id: u32, says: &'static str| {
        let request = gateway.post(&http, token, &deploy(id)).send();
        async move {
            let answer: Value = request.await?.json().await?;
            let result = &answer["result"];
            assert_eq!(result["isError"], true, "{answer}");
            assert_eq!(result["_meta"]["dev.airlock/code"], -31007);
            let text = result["content"][0]["text"].as_str().unwrap_or_default();
            assert!(text.contains(says), "{text}");
            anyhow::Ok(())
        }
    };

    let ada_first = hold(&ada, 1);
    let _ada_second = hold(&ada, 2);
    gateway.pending(&lea, 2).await?;
    refused(&ada, 3, "2 of your calls are already held").await?;
    let _bob_first = hold(&bob, 4);
    gateway.pending(&lea, 3).await?;
    refused(&bob, 5, "already holds 3 calls").await?;
    // Refused past a cap, nothing was asked of the approval service.
    assert_eq!(gateway.visible(&lea, 3).await?.len(), 3);

    // Ada's client gives up on her first call: its place is given back.
    ada_first.abort();
    let _ada_again = hold(&ada, 6);
    let requests = gateway.visible(&lea, 4).await?;
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert!(upstream.requests().is_empty(), "no held call ran");
    assert_eq!(
        gateway
            .envoy
            .stat("wasmcustom.airlock.requests.HoldsFull")
            .await?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn under_memory_pressure_envoy_refuses_new_calls_and_a_held_one_still_completes()
-> anyhow::Result<()> {
    let upstream = Recorder::start().await?;
    let dir = tempfile::tempdir()?;
    let pressure = dir.path().join("pressure");
    // Envoy watches for the file being moved into place, not for writes.
    let press = |level: &str| -> std::io::Result<()> {
        let next = dir.path().join("pressure.next");
        std::fs::write(&next, level)?;
        std::fs::rename(&next, &pressure)
    };
    press("0.1")?;
    let sidecar = Sidecar {
        memory_pressure_file: Some(pressure.clone()),
        ..Sidecar::standard()?
    };
    let gateway = Gateway::launch_on(sidecar, upstream.port, Some(policies()), json!({})).await?;
    gateway.wait_until_ready().await?;
    let HeldDeploy {
        upstream,
        gateway,
        http,
        ada,
        lea,
        held,
        id,
    } = HeldDeploy::at(upstream, gateway).await?;

    press("0.99")?;
    let status = |id: u32| {
        let request = gateway
            .post(&http, &ada, &call(id, "get_status", json!({})))
            .send();
        async move { anyhow::Ok(request.await?) }
    };
    let refused_for_pressure = |response: reqwest::Response| async move {
        let status = response.status();
        let body = response.text().await?;
        anyhow::Ok(status == 503 && body == "envoy overloaded")
    };
    // Envoy reads the pressure four times a second; calls until then pass.
    let overloaded = wait_for(
        "Envoy to refuse under pressure",
        Duration::from_secs(20),
        || {
            let response = status(2);
            async move { Ok(refused_for_pressure(response.await?).await?.then_some(())) }
        },
    )
    .await;
    assert!(overloaded.is_ok(), "{}", gateway.envoy.log());
    let reached = upstream.requests().len();
    assert!(refused_for_pressure(status(3).await?).await?);
    assert_eq!(
        upstream.requests().len(),
        reached,
        "nothing refused reached the server"
    );

    // What was under way when the pressure rose still completes.
    let decided = gateway.decide(&lea, &id, "approve", "ok").await?;
    assert_eq!(decided.status(), 200);
    let answer: Value = held.await??.json().await?;
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    let released = upstream.requests();
    assert_eq!(released.len(), reached + 1);
    assert!(
        released
            .last()
            .is_some_and(|r| r.header("x-airlock-approval") == Some(id.as_str())),
        "the held call ran"
    );

    press("0.2")?;
    let recovered = wait_for("Envoy to accept again", Duration::from_secs(20), || {
        let response = status(4);
        async move { Ok((response.await?.status() == 200).then_some(())) }
    })
    .await;
    assert!(recovered.is_ok(), "{}", gateway.envoy.log());
    Ok(())
}
