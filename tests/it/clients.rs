//! The client matrix: the clients a team is likely to point at a gateway —
//! the MCP Python SDK (current and previous major), the TypeScript SDK and
//! the Inspector's CLI — each lists tools, makes an allowed call, a denied
//! call and a call held until a lead approves it, through `airlock up`.

use super::local::{Local, example_policy};
use airlock_tests::peers::Client;
use serde_json::{Value, json};

/// The demo's policy, with a deploy the policy refuses by its arguments: a
/// tool every caller still sees listed, so that each client sends the call
/// (the Inspector refuses a tool the list lacks before sending it).
fn policy() -> anyhow::Result<String> {
    let example = example_policy()?;
    let policy = example.replacen(
        "  - name: deploy-to-staging\n",
        "  - name: nothing-on-the-moon\n    match:\n      tools: [deploy_model]\n      arguments: [{pointer: /environment, in: [moon]}]\n    action: Deny\n  - name: deploy-to-staging\n",
        1,
    );
    anyhow::ensure!(policy != example, "the example policy changed shape");
    Ok(policy)
}

#[tokio::test]
async fn every_client_lists_is_allowed_denied_and_held_until_approved() -> anyhow::Result<()> {
    let local = Local::start(&policy()?, 45).await?;
    let url = local.running.endpoints.gateway.clone();
    let ada = local.token("ada", &["engineers"])?;
    let lea = local.token("lea", &["leads"])?;
    for (n, client) in Client::ALL.into_iter().enumerate() {
        let listed = client.run(&url, &ada, None).await?;
        assert_eq!(
            listed["tools"],
            json!(["deploy_model", "get_status", "update_runtime_config"]),
            "{client:?}: {listed}"
        );

        let allowed = client
            .run(&url, &ada, Some(("get_status", &json!({}))))
            .await?;
        assert_eq!(allowed["isError"], false, "{client:?}: {allowed}");
        assert!(
            allowed["text"]
                .as_str()
                .is_some_and(|t| t.contains("serving")),
            "{client:?}: {allowed}"
        );

        let moon = json!({"model": "fraud:v1", "environment": "moon"});
        let denied = client
            .run(&url, &ada, Some(("deploy_model", &moon)))
            .await?;
        assert_eq!(denied["isError"], true, "{client:?}: {denied}");
        assert_eq!(
            denied["meta"]["dev.airlock/rule"], "default/model-ops/nothing-on-the-moon",
            "{client:?}: {denied}"
        );
        assert!(
            denied["text"]
                .as_str()
                .is_some_and(|t| t.contains("nothing-on-the-moon")),
            "{client:?} shows why: {denied}"
        );

        // Each client deploys its own model: a grant is bound to its arguments.
        let model = format!("fraud:v{}", 10 + n);
        let prod = json!({"model": model, "environment": "prod"});
        let (held, ()) = tokio::try_join!(
            client.run(&url, &ada, Some(("deploy_model", &prod))),
            async {
                let id = local.pending(&lea, "deploy_model").await?;
                local.approvals(&lea, Local::approve(&id, "go")).await?;
                Ok(())
            }
        )?;
        assert_eq!(held["isError"], false, "{client:?}: {held}");
        assert_eq!(
            held["text"],
            format!("deployed {model} to prod"),
            "{client:?}: {held}"
        );
        eprintln!("{client:?}: listed, allowed, denied, held and approved");
    }
    let log = std::fs::read_to_string(&local.running.endpoints.audit_log)?;
    airlock_policy::audit::verify(&log)?;
    let released = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "approval.executed")
        .count();
    assert_eq!(released, Client::ALL.len(), "one release per client");
    local.running.stop().await;
    Ok(())
}
