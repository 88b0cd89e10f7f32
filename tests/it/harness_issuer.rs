//! The development issuer over HTTP: its key set verifies its tokens with the
//! production verification code, across a key rotation.

use airlock_operator::dev_issuer::TokenRequest;
use airlock_policy::entra::{TokenVersion, TrustConfig, principal};
use airlock_policy::jwt::{JwkSet, decode};
use airlock_tests::issuer::{AUDIENCE, Issuer, TENANT};

async fn fetch_keys(issuer: &Issuer) -> anyhow::Result<JwkSet> {
    let body = reqwest::get(&issuer.jwks_url)
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok(JwkSet::from_json(&body)?)
}

#[tokio::test]
async fn tokens_verify_against_the_served_key_set() -> anyhow::Result<()> {
    let issuer = Issuer::start().await?;
    let config = TrustConfig::tenant(TENANT, AUDIENCE);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut request = TokenRequest::user("oid-ada", "ada@contoso.com", AUDIENCE);
    for version in [TokenVersion::V1, TokenVersion::V2] {
        request.version = version;
        let token = issuer.issuer.mint(&request)?;
        let decoded = decode(&token)?;
        decoded.verify(&fetch_keys(&issuer).await?)?;
        assert_eq!(principal(&decoded.claims, &config, now)?.version, version);
    }

    let old = issuer.issuer.mint(&request)?;
    let new_kid = issuer.issuer.rotate()?;
    let new = issuer.issuer.mint(&request)?;
    let keys = fetch_keys(&issuer).await?;
    assert!(keys.get(&new_kid).is_some());
    decode(&old)?.verify(&keys)?;
    decode(&new)?.verify(&keys)?;
    Ok(())
}
