//! Sidecar ↔ approval service over TLS, in the real Envoy: the service
//! serves a certificate from the operator's CA (the operator's own TLS
//! listener), and Envoy trusts that CA alone — read from a file laid out as
//! kubelet projects the server's ConfigMap — and checks the certificate is
//! for the service's name: one the same CA signed for another name is
//! refused. A CA rotation reaches the running Envoy through that file, with
//! no request refused.

use airlock_operator::render::envoy::{Cluster, WatchedTrust};
use airlock_operator::tls::{Authority, ServingCertificate, TlsListener, bundle};
use airlock_tests::envoy::{Envoy, EnvoyOptions};
use airlock_tests::projected::project;
use airlock_tests::wait_for;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The approval service's stand-in: a TLS server whose certificate
/// `certificate` holds, closing every connection after its answer and
/// resuming no session, so that each request is a handshake that checks
/// the certificate.
async fn serve(
    certificate: &Arc<ServingCertificate>,
) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut config = (*certificate.config()?).clone();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let tls = TlsListener::new(listener, Arc::new(config))?;
    let app = axum::Router::new()
        .fallback(|| async { ([("connection", "close")], "the approval service") });
    let server = tokio::spawn(async move {
        let _ = axum::serve(tls, app).await;
    });
    Ok((port, server))
}

/// `trusted` as the server's ConfigMap holds it, generation `generation`.
fn project_trust(dir: &Path, generation: u32, trusted: &str) -> anyhow::Result<WatchedTrust> {
    let trust = WatchedTrust {
        ca_file: dir.join("approvals-ca.crt"),
        sds_file: dir.join("approvals-ca.json"),
    };
    let sds = trust.sds_document().to_string();
    project(
        dir,
        generation,
        &[("approvals-ca.crt", trusted), ("approvals-ca.json", &sds)],
    )?;
    Ok(trust)
}

async fn envoy_to(port: u16, trust: WatchedTrust) -> anyhow::Result<Envoy> {
    let (cluster, _) = Cluster::for_url("upstream", &format!("https://localhost:{port}/"))?;
    Envoy::start(EnvoyOptions {
        upstream: Some(cluster.trusting(trust)),
        ..EnvoyOptions::plain(port)
    })
    .await
}

async fn status(envoy: &Envoy) -> anyhow::Result<u16> {
    let response = reqwest::get(format!("{}/v1/config/ml/models", envoy.url)).await?;
    Ok(response.status().as_u16())
}

/// Envoy in front of a server whose certificate (from `authority`) names
/// `names`, trusting `trusted`.
async fn through_envoy(
    authority: &Authority,
    names: &[&str],
    trusted: &Authority,
) -> anyhow::Result<u16> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (port, server) = serve(&ServingCertificate::issue(authority, &names)?).await?;
    let dir = tempfile::tempdir()?;
    let envoy = envoy_to(port, project_trust(dir.path(), 1, &trusted.ca_pem)?).await?;
    let answer = status(&envoy).await;
    server.abort();
    answer
}

#[tokio::test]
async fn envoy_reaches_the_service_only_with_its_name_signed_by_the_operators_ca()
-> anyhow::Result<()> {
    let operator = Authority::generate()?;
    assert_eq!(
        through_envoy(&operator, &["localhost"], &operator).await?,
        200
    );
    // The right CA, the wrong name.
    let wrong_name = through_envoy(&operator, &["airlock-gateways.elsewhere.svc"], &operator);
    assert_eq!(wrong_name.await?, 503);
    // The right name, another CA.
    let stranger = Authority::generate()?;
    assert_eq!(
        through_envoy(&stranger, &["localhost"], &operator).await?,
        503
    );
    Ok(())
}

/// The three steps of `tls::rotation` as a running Envoy sees them: the
/// next CA trusted beside the signing one, then signing, then alone. Every
/// request in between succeeds; and once the old CA is forgotten, a
/// certificate it signs is refused — Envoy re-read the bundle, unrestarted.
#[tokio::test]
async fn a_ca_rotation_reaches_a_running_envoy_with_no_request_refused() -> anyhow::Result<()> {
    let old = Authority::generate()?;
    let new = Authority::generate()?;
    let certificate = ServingCertificate::issue(&old, &["localhost".to_string()])?;
    let (port, server) = serve(&certificate).await?;
    let dir = tempfile::tempdir()?;
    let envoy = envoy_to(port, project_trust(dir.path(), 1, &old.ca_pem)?).await?;
    let mut refused = 0;
    let mut count = |code: u16| refused += usize::from(code != 200);
    count(status(&envoy).await?);

    // Begin: both trusted. Give Envoy time to read it; every request still passes.
    project_trust(dir.path(), 2, &bundle(&[&old.ca_pem, &new.ca_pem]))?;
    // The overlap: generous, as the operator's is.
    for _ in 0..40 {
        count(status(&envoy).await?);
        tokio::time::sleep(Duration::from_millis(75)).await;
    }
    // Promote: the service serves from the new CA.
    certificate.renew(&new)?;
    for _ in 0..20 {
        count(status(&envoy).await?);
    }
    // Forget: the new CA alone.
    project_trust(dir.path(), 3, &new.ca_pem)?;
    // The overlap: generous, as the operator's is.
    for _ in 0..40 {
        count(status(&envoy).await?);
        tokio::time::sleep(Duration::from_millis(75)).await;
    }
    assert_eq!(refused, 0, "requests refused during the rotation");

    // The old CA is trusted no more.
    certificate.renew(&old)?;
    wait_for(
        "a certificate of the old CA refused",
        Duration::from_secs(10),
        || async { Ok((status(&envoy).await? == 503).then_some(())) },
    )
    .await?;
    server.abort();
    Ok(())
}
