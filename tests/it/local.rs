//! `airlock up`'s pieces end to end: the MCP Python SDK client → Envoy with
//! the filter → the rmcp demo server, the approval service on SQLite, the
//! development issuer, and the CLI's own code deciding approvals.

use airlock_operator::dev_issuer::TokenRequest;
use airlock_operator::local::people::{self, ApprovalCommand, Connection, Output, TokenArgs};
use airlock_operator::local::up::{Running, UpArgs};
use airlock_tests::issuer::{AUDIENCE, Issuer, TENANT};
use airlock_tests::paths::{filter_wasm, repo_root, tool};
use airlock_tests::peers::{Transport, python_client};
use airlock_tests::wait_for;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// `airlock up --demo --policy POLICY --port 0` with its state in `state_dir`,
/// on the pinned Envoy and the built filter.
pub(crate) fn demo_args(
    policy: PathBuf,
    state_dir: PathBuf,
    max_hold_seconds: u64,
) -> anyhow::Result<UpArgs> {
    Ok(UpArgs {
        demo: true,
        upstream: None,
        policies: vec![policy],
        name: "local".into(),
        namespace: "default".into(),
        labels: vec![],
        port: 0,
        approvals_port: 0,
        tenant: None,
        audience: None,
        jwks_url: None,
        issuer: None,
        envoy: Some(tool("envoy")?),
        filter: Some(filter_wasm()?),
        state_dir,
        max_hold_seconds,
    })
}

pub(crate) struct Local {
    pub(crate) running: Running,
    dir: tempfile::TempDir,
}

impl Local {
    /// `airlock up --demo --policy FILE --port 0` in a fresh state directory.
    pub(crate) async fn start(policy: &str, max_hold_seconds: u64) -> anyhow::Result<Local> {
        Local::start_with(
            policy,
            max_hold_seconds,
            |_| {},
            |local| local.token("probe", &[]),
        )
        .await
    }

    /// [`Local::start`] with more options, probing readiness with the
    /// token `probe` mints.
    async fn start_with(
        policy: &str,
        max_hold_seconds: u64,
        options: impl FnOnce(&mut UpArgs),
        probe: impl FnOnce(&Local) -> anyhow::Result<String>,
    ) -> anyhow::Result<Local> {
        let dir = tempfile::Builder::new().prefix("airlock-up-").tempdir()?;
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy)?;
        let mut args = demo_args(policy_file, dir.path().join("state"), max_hold_seconds)?;
        options(&mut args);
        let running = Running::start(&args).await?;
        let local = Local { running, dir };
        // The gateway loads keys and policy asynchronously after Envoy starts.
        let probe = probe(&local)?;
        wait_for(
            "the gateway to load keys and policy",
            Duration::from_secs(30),
            || {
                let request = reqwest::Client::new()
                    .get(local.running.endpoints.gateway.clone())
                    .bearer_auth(&probe)
                    .send();
                async move { Ok(request.await.ok().filter(|r| r.status() != 503).map(|_| ())) }
            },
        )
        .await?;
        Ok(local)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(crate) fn token(&self, user: &str, groups: &[&str]) -> anyhow::Result<String> {
        people::token(&TokenArgs {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            roles: vec![],
            scopes: vec!["mcp.call".into()],
            app: None,
            v1: false,
            lifetime: 3600,
            audience: None,
            state_dir: self.state_dir(),
        })
    }

    /// One tool call by the Python SDK client, through the gateway.
    async fn call(&self, token: &str, tool: &str, arguments: &str) -> anyhow::Result<Value> {
        let base = self
            .running
            .endpoints
            .gateway
            .trim_end_matches("/mcp")
            .to_string();
        python_client(
            &base,
            Transport::StreamableJson,
            Some(token),
            &["call", tool, arguments],
        )
        .await
    }

    /// An approvals command as the CLI runs it, acting with `token`.
    pub(crate) async fn approvals(
        &self,
        token: &str,
        command: ApprovalCommand,
    ) -> anyhow::Result<Value> {
        let connection = Connection {
            server: None,
            token: Some(token.into()),
            state_dir: self.state_dir(),
            output: Output::Json,
        };
        Ok(serde_json::from_str(
            &people::approvals(&connection, &command).await?,
        )?)
    }

    /// Waits for a `pending` approval of `tool` that `approver` may see.
    pub(crate) async fn pending(&self, approver: &str, tool: &str) -> anyhow::Result<String> {
        wait_for(
            "a pending approval",
            Duration::from_secs(30),
            || async move {
                let list = self.approvals(approver, ApprovalCommand::List).await?;
                Ok(list.as_array().and_then(|l| {
                    l.iter()
                        .find(|a| a["state"] == "pending" && a["tool"] == tool)
                        .and_then(|a| a["id"].as_str().map(str::to_string))
                }))
            },
        )
        .await
    }

    fn show(id: &str) -> ApprovalCommand {
        ApprovalCommand::Show {
            id: id.into(),
            raw: false,
        }
    }

    pub(crate) fn approve(id: &str, reason: &str) -> ApprovalCommand {
        ApprovalCommand::Approve {
            id: id.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) fn example_policy() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(
        repo_root().join("examples/policy.yaml"),
    )?)
}

const PROD: &str = r#"{"model": "fraud:v7", "environment": "prod"}"#;

#[tokio::test]
async fn allow_deny_hold_approve_deny_ask_and_self_approval() -> anyhow::Result<()> {
    let local = Local::start(&example_policy()?, 45).await?;
    let ada = local.token("ada", &["engineers"])?;
    let lea = local.token("lea", &["leads"])?;

    let status = local.call(&ada, "get_status", "{}").await?;
    assert_eq!(status["isError"], false, "{status}");
    let secret = local.call(&ada, "read_secret", r#"{"name": "db"}"#).await?;
    assert_eq!(secret["isError"], true);
    assert_eq!(
        secret["meta"]["dev.airlock/rule"],
        "default/model-ops/no-secrets"
    );

    // Held, then approved by a lead: the original call completes.
    let (released, ()) = tokio::try_join!(local.call(&ada, "deploy_model", PROD), async {
        let id = local.pending(&lea, "deploy_model").await?;
        let shown = local.approvals(&lea, Local::show(&id)).await?;
        assert_eq!(
            shown["arguments"]["environment"], "prod",
            "captured per policy"
        );
        assert_eq!(shown["requester"]["name"], "ada@airlock.local");
        local
            .approvals(&lea, Local::approve(&id, "ship it"))
            .await?;
        Ok(())
    })?;
    assert_eq!(released["text"], "deployed fraud:v7 to prod", "{released}");

    // Held, then denied: refused, naming the request.
    let runtime_change = r#"{"key": "replicas", "value": "9"}"#;
    let (refused, id) = tokio::try_join!(
        local.call(&ada, "update_runtime_config", runtime_change),
        async {
            let id = local.pending(&lea, "update_runtime_config").await?;
            let deny = ApprovalCommand::Deny {
                id: id.clone(),
                reason: "not during the freeze".into(),
            };
            let denied = local.approvals(&lea, deny).await?;
            assert_eq!(denied["state"], "denied");
            Ok(id)
        }
    )?;
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(refused["meta"]["dev.airlock/approval"], id.as_str());

    // Asked for context, answered, then approved.
    let v8 = r#"{"model": "fraud:v8", "environment": "prod"}"#;
    let (released, ()) = tokio::try_join!(local.call(&ada, "deploy_model", v8), async {
        let id = local.pending(&lea, "deploy_model").await?;
        let ask = ApprovalCommand::Ask {
            id: id.clone(),
            message: "why now?".into(),
        };
        assert_eq!(local.approvals(&lea, ask).await?["state"], "info_requested");
        let impostor = ApprovalCommand::Answer {
            id: id.clone(),
            message: "me".into(),
        };
        assert!(
            local.approvals(&lea, impostor).await.is_err(),
            "only the requester answers"
        );
        let answer = ApprovalCommand::Answer {
            id: id.clone(),
            message: "fixes false positives".into(),
        };
        local.approvals(&ada, answer).await?;
        local.approvals(&lea, Local::approve(&id, "thanks")).await?;
        Ok(())
    })?;
    assert_eq!(released["text"], "deployed fraud:v8 to prod", "{released}");

    // Someone both engineer and lead cannot approve their own call.
    let sam = local.token("sam", &["engineers", "leads"])?;
    let v9 = r#"{"model": "fraud:v9", "environment": "prod"}"#;
    let (refused, ()) = tokio::try_join!(local.call(&sam, "deploy_model", v9), async {
        let id = local.pending(&lea, "deploy_model").await?;
        let own = local.approvals(&sam, Local::approve(&id, "trust me")).await;
        let refusal = own.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refusal.contains("self-approval"), "{refusal}");
        local
            .approvals(
                &lea,
                ApprovalCommand::Deny {
                    id,
                    reason: "no".into(),
                },
            )
            .await?;
        Ok(())
    })?;
    assert_eq!(refused["isError"], true, "{refused}");

    let log = &local.running.endpoints.audit_log;
    let records = airlock_policy::audit::verify(&std::fs::read_to_string(log)?)?;
    assert!(records > 10, "{records}");
    // Each call above was its own MCP session; the session view replays one.
    let session = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|e| {
            (e["target"] == "read_secret")
                .then(|| e["session"].as_str().map(str::to_string))
                .flatten()
        })
        .ok_or_else(|| anyhow::anyhow!("no session recorded"))?;
    let replay = airlock_operator::audit::cli::session_events(log, &session)?;
    assert!(
        replay.contains("notifications/initialized")
            && replay.contains("tools/call read_secret Deny"),
        "{replay}"
    );

    let metrics = reqwest::get(format!("{}/metrics", local.running.endpoints.approvals))
        .await?
        .text()
        .await?;
    assert!(
        !metrics.contains("airlock_approvals_pending{"),
        "nothing waits, so no server has a pending count:\n{metrics}"
    );
    for expected in [
        "airlock_approval_decisions_total{verdict=\"approve\"} 2",
        "airlock_approval_decisions_total{verdict=\"deny\"} 2",
        "airlock_approval_time_to_decision_seconds_count 4",
        "airlock_audit_events_dropped_total 0",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from\n{metrics}"
        );
    }
    local.running.stop().await;
    Ok(())
}

#[tokio::test]
async fn expiry_and_a_retry_under_a_single_use_grant() -> anyhow::Result<()> {
    // Runtime changes expire after 3 s here; holds last 8 s.
    let policy = example_policy()?.replace(
        "      timeout: 30m\n    audit: {capture: Arguments, redact: [/value]}",
        "      timeout: 3s\n    audit: {capture: Arguments, redact: [/value]}",
    );
    assert!(
        policy.contains("timeout: 3s"),
        "the example policy changed shape"
    );
    let local = Local::start(&policy, 8).await?;
    let ada = local.token("ada", &["engineers"])?;
    let lea = local.token("lea", &["leads"])?;

    let expired = local
        .call(
            &ada,
            "update_runtime_config",
            r#"{"key": "k", "value": "v"}"#,
        )
        .await?;
    assert_eq!(expired["isError"], true, "{expired}");
    assert!(
        expired["text"]
            .as_str()
            .is_some_and(|t| t.contains("expired")),
        "{expired}"
    );

    // Nobody decides within the hold: the caller is told which request to wait for.
    let pending = local.call(&ada, "deploy_model", PROD).await?;
    assert_eq!(pending["isError"], true, "{pending}");
    let id = pending["meta"]["dev.airlock/approval"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no approval named: {pending}"))?
        .to_string();
    local.approvals(&lea, Local::approve(&id, "ok")).await?;
    // The same call, retried, passes once under the grant...
    let retried = local.call(&ada, "deploy_model", PROD).await?;
    assert_eq!(retried["text"], "deployed fraud:v7 to prod", "{retried}");
    let spent = local.approvals(&lea, Local::show(&id)).await?;
    assert_eq!(spent["state"], "executed");
    // ...and a second retry needs a new approval.
    let (again, ()) = tokio::try_join!(local.call(&ada, "deploy_model", PROD), async {
        let second = local.pending(&lea, "deploy_model").await?;
        assert_ne!(second, id);
        let deny = ApprovalCommand::Deny {
            id: second,
            reason: "once was enough".into(),
        };
        local.approvals(&lea, deny).await?;
        Ok(())
    })?;
    assert_eq!(again["isError"], true, "{again}");
    local.running.stop().await;
    Ok(())
}

#[tokio::test]
async fn up_trusts_a_non_entra_issuer_named_with_issuer_and_jwks_url() -> anyhow::Result<()> {
    const MIRROR: &str = "https://idp.example.test/airlock";
    let keys = Issuer::start().await?;
    let mint = |iss: &str, groups: &[&str]| -> anyhow::Result<String> {
        let mut request = TokenRequest::user("oid-ada", "ada@contoso.com", AUDIENCE);
        request.groups = groups.iter().map(|g| g.to_string()).collect();
        request.overrides.insert("iss".into(), json!(iss));
        Ok(keys.issuer.mint(&request)?)
    };
    let local = Local::start_with(
        &example_policy()?,
        45,
        |args| {
            args.tenant = Some(TENANT.into());
            args.audience = Some(AUDIENCE.into());
            args.jwks_url = Some(keys.jwks_url.clone());
            args.issuer = Some(MIRROR.into());
        },
        |_| mint(MIRROR, &[]),
    )
    .await?;
    assert!(
        local.running.endpoints.issuer.is_none(),
        "no development issuer when a tenant is trusted"
    );

    let ada = mint(MIRROR, &["engineers"])?;
    let status = local.call(&ada, "get_status", "{}").await?;
    assert_eq!(status["isError"], false, "{status}");
    // The approval service trusts the same issuer: the CLI works with its tokens.
    let listed = local.approvals(&ada, ApprovalCommand::List).await?;
    assert_eq!(listed, json!([]));

    // Same keys, another issuer: refused by the gateway and by the service.
    let stranger = mint("https://elsewhere.example.test/", &["engineers"])?;
    let refused = reqwest::Client::new()
        .post(&local.running.endpoints.gateway)
        .bearer_auth(&stranger)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let www = refused
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(www.contains("issuer"), "{www}");
    let cli = local.approvals(&stranger, ApprovalCommand::List).await;
    assert!(cli.is_err(), "{cli:?}");
    Ok(())
}

/// A second `airlock up` on the same state directory, or on the same
/// gateway port, refuses to start and says which; the first keeps serving
/// and keeps its endpoints file.
#[tokio::test]
async fn a_second_airlock_up_refuses_a_taken_state_directory_or_port() -> anyhow::Result<()> {
    let first = Local::start(&example_policy()?, 5).await?;
    let refusal = |started: anyhow::Result<Local>| match started {
        Ok(_) => "started".to_string(),
        Err(e) => format!("{e:#}"),
    };
    let same_state = refusal(
        Local::start_with(
            &example_policy()?,
            5,
            |args| args.state_dir = first.state_dir(),
            |local| local.token("probe", &[]),
        )
        .await,
    );
    assert!(
        same_state.contains(&format!("another airlock up (pid {})", std::process::id())),
        "{same_state}"
    );
    let port = reqwest::Url::parse(&first.running.endpoints.gateway)?
        .port()
        .unwrap_or_default();
    let same_port = refusal(
        Local::start_with(
            &example_policy()?,
            5,
            |args| args.port = port,
            |local| local.token("probe", &[]),
        )
        .await,
    );
    assert!(
        same_port.contains(&format!("port {port} on 127.0.0.1 is taken")),
        "{same_port}"
    );
    assert!(first.state_dir().join("run/endpoints.json").exists());
    let status = reqwest::get(&first.running.endpoints.gateway)
        .await?
        .status();
    assert_eq!(
        status,
        reqwest::StatusCode::UNAUTHORIZED,
        "the first gateway stopped answering"
    );
    Ok(())
}
