//! Sidecar ↔ approval service over TLS, in the real Envoy: the service
//! serves a certificate from the operator's CA (the operator's own TLS
//! listener), and Envoy trusts that CA alone and checks the certificate is
//! for the service's name — one the same CA signed for another name is
//! refused.

use airlock_operator::render::envoy::Cluster;
use airlock_operator::tls::{Authority, TlsListener};
use airlock_tests::envoy::{Envoy, EnvoyOptions};

/// Envoy in front of a TLS server whose certificate (from `authority`)
/// names `names`; the cluster reaches it as `localhost`, trusting `trusted`.
async fn through_envoy(
    authority: &Authority,
    names: &[&str],
    trusted: &Authority,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let tls = TlsListener::new(listener, authority.serving_config(&names)?)?;
    let app = axum::Router::new().fallback(|| async { "the approval service" });
    let server = tokio::spawn(async move { axum::serve(tls, app).await });
    let (cluster, _) = Cluster::for_url("upstream", &format!("https://localhost:{port}/"))?;
    let envoy = Envoy::start(EnvoyOptions {
        upstream: Some(cluster.trusting(&trusted.ca_pem)),
        ..EnvoyOptions::plain(port)
    })
    .await?;
    let response = reqwest::get(format!("{}/v1/config/ml/models", envoy.url)).await?;
    let answer = (response.status(), response.text().await?);
    server.abort();
    Ok(answer)
}

#[tokio::test]
async fn envoy_reaches_the_service_only_with_its_name_signed_by_the_operators_ca()
-> anyhow::Result<()> {
    let operator = Authority::generate()?;
    let (status, body) = through_envoy(&operator, &["localhost"], &operator).await?;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "the approval service")
    );

    // The right CA, the wrong name.
    let (status, body) =
        through_envoy(&operator, &["airlock-gateways.elsewhere.svc"], &operator).await?;
    assert_eq!(status.as_u16(), 503, "{body}");
    // The right name, another CA.
    let stranger = Authority::generate()?;
    let (status, body) = through_envoy(&stranger, &["localhost"], &operator).await?;
    assert_eq!(status.as_u16(), 503, "{body}");
    Ok(())
}
