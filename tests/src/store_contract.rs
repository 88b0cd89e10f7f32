//! What every approval store must do, checked the same way against each: the
//! SQLite file and ApprovalRequests in a real API server.

use airlock_operator::approvals::model::{
    Approval, Binding, Decision, Person, Remark, Requirement, State, Verdict, Via,
};
use airlock_operator::approvals::store::Store;
use anyhow::ensure;
use serde_json::json;

fn person(oid: &str, groups: &[&str]) -> Person {
    Person {
        tid: "tenant-1".into(),
        oid: oid.into(),
        name: format!("{oid}@contoso.com"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// A held call by `ada`, with everything a store has to keep.
pub fn sample(id: &str, digest: &str, created_at: u64) -> Approval {
    Approval {
        id: id.into(),
        binding: Binding {
            tid: "tenant-1".into(),
            oid: "ada".into(),
            app_id: "app-1".into(),
            server: "team-a/model-server".into(),
            method: "tools/call".into(),
            target: Some("deploy_model".into()),
            digest: digest.into(),
        },
        requester: person("ada", &["engineers"]),
        requirements: vec![
            Requirement {
                rule: "team-a/model-ops/deploy-to-prod".into(),
                policy_version: "7".into(),
                approver_groups: vec!["leads".into()],
                approver_users: vec![],
                min_approvals: 2,
                allow_self_approval: false,
            },
            Requirement {
                rule: "team-a/security/prod-changes".into(),
                policy_version: "3".into(),
                approver_groups: vec![],
                approver_users: vec!["sam".into()],
                min_approvals: 1,
                allow_self_approval: true,
            },
        ],
        summary: "ada asks to run tools/call deploy_model on team-a/model-server".into(),
        arguments: Some(json!({
            "model": "m-7", "environment": "prod", "replicas": 3, "ratio": 0.25,
            "note": "naïve \u{202e} text", "tags": ["a", {"b": null}]
        })),
        session_id: Some("session-1".into()),
        protocol_version: Some("2025-11-25".into()),
        grant_window: Some(600),
        state: State::Pending,
        created_at,
        expires_at: created_at + 1800,
        decisions: vec![],
        conversation: vec![],
        approved_at: None,
        releases: 0,
        last_release: None,
        version: 0,
        arrivals: Vec::new(),
    }
}

/// Runs the contract on an empty `store`; ids start with `ar-contract-`.
pub async fn check<S: Store>(store: &S) -> anyhow::Result<()> {
    let first = sample("ar-contract-1", "sha256:aa", 1_790_000_000);
    store.insert(&first).await?;
    ensure!(
        store.get(&first.id).await?.as_ref() == Some(&first),
        "read back differs"
    );
    ensure!(
        store.insert(&first).await.is_err(),
        "a second insert of one id succeeded"
    );

    // The newest identical ask is found, and only an identical one.
    let second = sample("ar-contract-2", "sha256:aa", 1_790_000_100);
    let other = sample("ar-contract-3", "sha256:bb", 1_790_000_200);
    store.insert(&second).await?;
    store.insert(&other).await?;
    let latest = store.latest_for(&first.binding).await?.map(|a| a.id);
    ensure!(
        latest.as_deref() == Some("ar-contract-2"),
        "latest_for gave {latest:?}"
    );
    let mut stranger = first.binding.clone();
    stranger.oid = "eve".into();
    ensure!(
        store.latest_for(&stranger).await?.is_none(),
        "another caller's ask matched"
    );

    let mut eve = sample("ar-contract-4", "sha256:aa", 1_790_000_300);
    eve.binding.oid = "eve".into();
    eve.requester.oid = "eve".into();
    store.insert(&eve).await?;
    let by_ada: Vec<String> = store
        .by_requester("tenant-1", "ada")
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    ensure!(
        by_ada == ["ar-contract-1", "ar-contract-2", "ar-contract-3"],
        "ada's asks: {by_ada:?}"
    );

    // Every change is a compare-and-set on the version.
    let mut decided = first.clone();
    decided.conversation.push(Remark {
        by: person("lea", &["leads"]),
        message: "which model?".into(),
        at: first.created_at + 5,
        via: Via::Service,
    });
    decided.decisions.push(Decision {
        approver: person("lea", &["leads"]),
        verdict: Verdict::Approve,
        reason: "canary looked fine".into(),
        at: first.created_at + 10,
        via: Via::Kubectl,
    });
    decided.state = State::Approved;
    decided.approved_at = Some(first.created_at + 10);
    decided.version = 1;
    ensure!(store.update(&decided, 0).await?, "the first writer lost");
    ensure!(!store.update(&decided, 0).await?, "a stale writer won");
    ensure!(
        store.get(&first.id).await?.as_ref() == Some(&decided),
        "update not kept"
    );

    // Writers racing from one version: exactly one wins, and its write is kept.
    let contenders: Vec<Approval> = (1..=6)
        .map(|releases| Approval {
            releases,
            last_release: Some(format!("release-{releases}")),
            version: 2,
            ..decided.clone()
        })
        .collect();
    let results = futures::future::join_all(contenders.iter().map(|a| store.update(a, 1))).await;
    let winners: Vec<u32> = results
        .into_iter()
        .zip(&contenders)
        .filter_map(|(won, a)| match won {
            Ok(true) => Some(Ok(a.releases)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    ensure!(winners.len() == 1, "racing writers that won: {winners:?}");
    let kept = store.get(&first.id).await?;
    ensure!(
        kept.as_ref().and_then(|a| a.last_release.clone())
            == winners.first().map(|r| format!("release-{r}")),
        "the winner's release key was not kept"
    );
    let kept = kept.map(|a| a.releases);
    ensure!(
        kept == winners.first().copied(),
        "kept {kept:?}, winner {winners:?}"
    );

    let ids: Vec<String> = store.list().await?.into_iter().map(|a| a.id).collect();
    ensure!(
        ids == [
            "ar-contract-1",
            "ar-contract-2",
            "ar-contract-3",
            "ar-contract-4"
        ],
        "list gave {ids:?}"
    );

    // Unknown and malformed ids are simply not there.
    for id in ["ar-missing", "ar-contract-1/status", "../ar-contract-1", ""] {
        ensure!(store.get(id).await?.is_none(), "{id:?} found something");
        let ghost = Approval {
            id: id.into(),
            ..decided.clone()
        };
        ensure!(!store.update(&ghost, 2).await?, "{id:?} was updated");
    }
    Ok(())
}
