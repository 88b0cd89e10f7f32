//! The credential a sidecar's Envoy attaches to its requests to the
//! approval service, in the real Envoy: read from a file laid out the way
//! kubelet projects a ServiceAccount token (`token` → `..data/token`, with
//! `..data` a symlink swapped atomically on renewal), replacing whatever the
//! request carried, and re-read on the next request after a renewal.

use airlock_operator::render::envoy::{Cluster, FileCredential};
use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_tests::envoy::{Envoy, EnvoyOptions};
use airlock_tests::projected::project;
use airlock_tests::recorder::Recorder;
use airlock_tests::wait_for;
use std::path::Path;
use std::time::Duration;

async fn start(dir: &Path, upstream: &Recorder) -> anyhow::Result<Envoy> {
    let credential = FileCredential {
        header: GATEWAY_CREDENTIAL_HEADER.into(),
        file: dir.join("token/token"),
        sds_file: dir.join("credential-sds.json"),
    };
    std::fs::create_dir_all(dir.join("token"))?;
    std::fs::write(&credential.sds_file, credential.sds_document().to_string())?;
    Envoy::start(EnvoyOptions {
        upstream: Some(Cluster::loopback("upstream", upstream.port).with_credential(credential)),
        ..EnvoyOptions::plain(upstream.port)
    })
    .await
}

/// What the upstream saw in the credential header of a request that
/// carried `forged` in it.
async fn attached(envoy: &Envoy, upstream: &Recorder, forged: &str) -> anyhow::Result<String> {
    let status = reqwest::Client::new()
        .post(format!("{}/v1/approvals", envoy.url))
        .header(GATEWAY_CREDENTIAL_HEADER, forged)
        .body("{}")
        .send()
        .await?
        .status();
    anyhow::ensure!(status.is_success(), "Envoy answered {status}");
    let last = upstream.requests().pop();
    Ok(last
        .and_then(|r| r.header(GATEWAY_CREDENTIAL_HEADER).map(str::to_string))
        .unwrap_or_default())
}

#[tokio::test]
async fn envoy_attaches_the_projected_token_and_follows_its_renewal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let upstream = Recorder::start().await?;
    // kubelet projects the token before any container starts.
    std::fs::create_dir_all(dir.path().join("token"))?;
    project(&dir.path().join("token"), 1, &[("token", "token-one")])?;
    let envoy = start(dir.path(), &upstream).await?;
    assert_eq!(attached(&envoy, &upstream, "forged").await?, "token-one");

    project(&dir.path().join("token"), 2, &[("token", "token-two")])?;
    wait_for(
        "Envoy to send the renewed token",
        Duration::from_secs(10),
        || async {
            let seen = attached(&envoy, &upstream, "forged").await?;
            anyhow::ensure!(
                seen == "token-one" || seen == "token-two",
                "a request went out with neither token: {seen:?}"
            );
            Ok((seen == "token-two").then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn without_the_token_envoy_refuses_and_the_upstream_sees_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let upstream = Recorder::start().await?;
    let envoy = start(dir.path(), &upstream).await?;
    let status = reqwest::Client::new()
        .post(format!("{}/v1/approvals", envoy.url))
        .header(GATEWAY_CREDENTIAL_HEADER, "forged")
        .body("{}")
        .send()
        .await?
        .status();
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    assert!(upstream.requests().is_empty());
    Ok(())
}
