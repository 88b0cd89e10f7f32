//! Entra ID access-token claims: validation and normalization into one principal.
//!
//! v1 and v2 tokens name the same things differently (`appid` vs `azp`, `upn`
//! vs `preferred_username`). Everything downstream sees a [`Principal`], and
//! authorizes only on `tid`, `oid`, group object ids, app roles and scopes —
//! never on display names, which users can influence.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Which tokens a gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustConfig {
    /// Entra tenant ids whose v1 and v2 issuers are trusted.
    pub tenants: Vec<String>,
    /// Accepted `aud` values (App ID URI or client id).
    pub audiences: Vec<String>,
    /// Tolerance for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Whether tokens an application obtained for itself (no user) are accepted.
    #[serde(default)]
    pub allow_app_only: bool,
    /// What to do when the token says the user is in too many groups to list.
    #[serde(default)]
    pub groups_overage: OverageAction,
    /// Issuers other than Entra's whose Entra-shaped tokens are trusted too:
    /// an on-premises mirror, a test issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<OtherIssuer>,
}

/// An issuer that is not Entra's but signs Entra-shaped tokens for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtherIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The tenant its tokens name in `tid`; its keys are that tenant's key set.
    pub tenant: String,
    /// Which Entra token format its tokens follow.
    #[serde(default = "TokenVersion::v2")]
    pub version: TokenVersion,
}

fn default_skew() -> u64 {
    60
}

impl TrustConfig {
    /// One tenant's tokens for one audience; everything else as a
    /// configuration that leaves it out gets it.
    pub fn tenant(tenant: &str, audience: &str) -> TrustConfig {
        TrustConfig {
            tenants: vec![tenant.to_string()],
            audiences: vec![audience.to_string()],
            clock_skew_seconds: default_skew(),
            allow_app_only: false,
            groups_overage: OverageAction::default(),
            issuers: Vec::new(),
        }
    }
}

/// Handling of the groups-overage claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OverageAction {
    /// Refuse the token: its group list is incomplete.
    #[default]
    Deny,
    /// Accept the token with no groups; rules on groups will not match.
    IgnoreGroups,
}

/// The token format version, from the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TokenVersion {
    V1,
    V2,
}

impl TokenVersion {
    fn v2() -> TokenVersion {
        TokenVersion::V2
    }
}

/// The verified caller, the same for v1 and v2 tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    pub tenant_id: String,
    pub object_id: String,
    /// For display and audit only (`upn`, `preferred_username`, `name`).
    pub display_name: String,
    /// The client application (`appid` in v1, `azp` in v2).
    pub app_id: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// True for a token an application obtained for itself.
    pub app_only: bool,
    pub version: TokenVersion,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimsError {
    #[error("token has no {0:?} claim")]
    Missing(&'static str),
    #[error("token claim {0:?} has the wrong type")]
    WrongType(&'static str),
    #[error("token issuer {0:?} is not a trusted Entra ID tenant")]
    UntrustedIssuer(String),
    #[error("token tid {tid:?} does not match its issuer's tenant {issuer_tenant:?}")]
    TenantMismatch { tid: String, issuer_tenant: String },
    #[error("token version {ver:?} does not match its {issuer_version:?} issuer")]
    VersionMismatch {
        ver: String,
        issuer_version: TokenVersion,
    },
    #[error("token audience is not accepted here")]
    WrongAudience,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("app-only tokens are not accepted here")]
    AppOnlyNotAllowed,
    #[error(
        "token omits the user's groups because there are too many (groups overage); \
         assign the groups to the application or use app roles"
    )]
    GroupsOverage,
}

impl ClaimsError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimsError::Missing(_) | ClaimsError::WrongType(_) => "malformed_claims",
            ClaimsError::UntrustedIssuer(_) => "untrusted_issuer",
            ClaimsError::TenantMismatch { .. } => "tenant_mismatch",
            ClaimsError::VersionMismatch { .. } => "version_mismatch",
            ClaimsError::WrongAudience => "wrong_audience",
            ClaimsError::Expired => "expired",
            ClaimsError::NotYetValid => "not_yet_valid",
            ClaimsError::AppOnlyNotAllowed => "app_only",
            ClaimsError::GroupsOverage => "groups_overage",
        }
    }
}

/// The v1 issuer of a tenant.
pub fn v1_issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// The v2 issuer of a tenant.
pub fn v2_issuer(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

/// Entra's published signing keys for a tenant.
pub fn jwks_url(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
}

/// The trusted tenant and token version an issuer names, if any.
pub fn trusted_issuer<'a>(
    config: &'a TrustConfig,
    issuer: &str,
) -> Option<(&'a str, TokenVersion)> {
    let entra = config.tenants.iter().find_map(|tenant| {
        if issuer == v1_issuer(tenant) {
            Some((tenant.as_str(), TokenVersion::V1))
        } else if issuer == v2_issuer(tenant) {
            Some((tenant.as_str(), TokenVersion::V2))
        } else {
            None
        }
    });
    entra.or_else(|| {
        config
            .issuers
            .iter()
            .find(|other| other.issuer == issuer)
            .map(|other| (other.tenant.as_str(), other.version))
    })
}

fn string<'a>(claims: &'a Value, name: &'static str) -> Result<Option<&'a str>, ClaimsError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ClaimsError::WrongType(name)),
    }
}

fn required_string<'a>(claims: &'a Value, name: &'static str) -> Result<&'a str, ClaimsError> {
    string(claims, name)?
        .filter(|s| !s.is_empty())
        .ok_or(ClaimsError::Missing(name))
}

fn time(claims: &Value, name: &'static str) -> Result<Option<u64>, ClaimsError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(ClaimsError::WrongType(name)),
        Some(_) => Err(ClaimsError::WrongType(name)),
    }
}

fn string_list(claims: &Value, name: &'static str) -> Result<Vec<String>, ClaimsError> {
    match claims.get(name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(ClaimsError::WrongType(name))
            })
            .collect(),
        Some(_) => Err(ClaimsError::WrongType(name)),
    }
}

/// Checks verified claims against `config` at time `now` (seconds since the
/// epoch) and returns the principal. The signature must already be verified.
/// The home UPN a sign-in name stands for, lowercased: a B2B guest signs in
/// to another tenant as `ada_contoso.com#EXT#@fabrikam.onmicrosoft.com`,
/// which is `ada@contoso.com`. `None` for what is not a UPN (an app's name,
/// an object ID), so that such names never match each other.
pub fn home_upn(name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let home = match name.split_once("#ext#") {
        Some((guest, _)) => {
            let (user, domain) = guest.rsplit_once('_')?;
            format!("{user}@{domain}")
        }
        None => name,
    };
    match home.split_once('@') {
        Some((user, domain)) if !user.is_empty() && domain.contains('.') => Some(home),
        _ => None,
    }
}

pub fn principal(claims: &Value, config: &TrustConfig, now: u64) -> Result<Principal, ClaimsError> {
    let issuer = required_string(claims, "iss")?;
    let (issuer_tenant, version) = trusted_issuer(config, issuer)
        .ok_or_else(|| ClaimsError::UntrustedIssuer(issuer.to_string()))?;
    let tid = required_string(claims, "tid")?;
    if tid != issuer_tenant {
        return Err(ClaimsError::TenantMismatch {
            tid: tid.to_string(),
            issuer_tenant: issuer_tenant.to_string(),
        });
    }
    if let Some(ver) = string(claims, "ver")? {
        let expected = match version {
            TokenVersion::V1 => "1.0",
            TokenVersion::V2 => "2.0",
        };
        if ver != expected {
            return Err(ClaimsError::VersionMismatch {
                ver: ver.to_string(),
                issuer_version: version,
            });
        }
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => config.audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| config.audiences.iter().any(|a| a == aud)),
        None => return Err(ClaimsError::Missing("aud")),
        Some(_) => return Err(ClaimsError::WrongType("aud")),
    };
    if !audience_ok {
        return Err(ClaimsError::WrongAudience);
    }
    let skew = config.clock_skew_seconds;
    let expires_at = time(claims, "exp")?.ok_or(ClaimsError::Missing("exp"))?;
    if now > expires_at.saturating_add(skew) {
        return Err(ClaimsError::Expired);
    }
    for name in ["nbf", "iat"] {
        if time(claims, name)?.is_some_and(|t| t > now.saturating_add(skew)) {
            return Err(ClaimsError::NotYetValid);
        }
    }
    let object_id = required_string(claims, "oid")?.to_string();
    let app_id = match version {
        TokenVersion::V1 => string(claims, "appid")?,
        TokenVersion::V2 => string(claims, "azp")?,
    }
    .unwrap_or_default()
    .to_string();
    let scopes: Vec<String> = string(claims, "scp")?
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let app_only = string(claims, "idtyp")? == Some("app") || claims.get("scp").is_none();
    if app_only && !config.allow_app_only {
        return Err(ClaimsError::AppOnlyNotAllowed);
    }
    let overage = claims
        .get("_claim_names")
        .and_then(|names| names.get("groups"))
        .is_some()
        || claims.get("hasgroups") == Some(&Value::Bool(true));
    let groups = if overage {
        match config.groups_overage {
            OverageAction::Deny => return Err(ClaimsError::GroupsOverage),
            OverageAction::IgnoreGroups => Vec::new(),
        }
    } else {
        string_list(claims, "groups")?
    };
    let display_name = ["upn", "preferred_username", "unique_name", "name"]
        .into_iter()
        .find_map(|name| claims.get(name).and_then(Value::as_str))
        .unwrap_or(app_id.as_str())
        .to_string();
    Ok(Principal {
        tenant_id: tid.to_string(),
        object_id,
        display_name,
        app_id,
        groups,
        roles: string_list(claims, "roles")?,
        scopes,
        app_only,
        version,
        expires_at,
    })
}

/// Ada, a user of tenant `t` with app `a`, for unit tests.
#[cfg(test)]
pub(crate) fn test_principal(oid: &str, groups: &[&str]) -> Principal {
    Principal {
        tenant_id: "t".into(),
        object_id: oid.into(),
        display_name: "Ada".into(),
        app_id: "a".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        roles: vec![],
        scopes: vec![],
        app_only: false,
        version: TokenVersion::V2,
        expires_at: 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_guest_upn_names_its_home_account() {
        use super::home_upn;
        let home = Some("ada@contoso.com".to_string());
        assert_eq!(home_upn("Ada@Contoso.com"), home);
        assert_eq!(
            home_upn("ada_contoso.com#EXT#@fabrikam.onmicrosoft.com"),
            home
        );
        assert_eq!(
            home_upn("ada_lovelace_contoso.com#EXT#@fabrikam.onmicrosoft.com"),
            Some("ada_lovelace@contoso.com".to_string())
        );
        for not_a_upn in [
            "",
            "ada",
            "0b6c1c9e-app",
            "#EXT#@fabrikam.com",
            "@contoso.com",
        ] {
            assert_eq!(home_upn(not_a_upn), None, "{not_a_upn}");
        }
    }

    use super::*;
    use serde_json::json;

    const TENANT: &str = "11111111-1111-1111-1111-111111111111";
    const OTHER: &str = "22222222-2222-2222-2222-222222222222";
    const NOW: u64 = 1_800_000_000;

    fn config() -> TrustConfig {
        TrustConfig {
            tenants: vec![TENANT.into()],
            audiences: vec![
                "api://airlock".into(),
                "c0ffee00-0000-0000-0000-000000000001".into(),
            ],
            clock_skew_seconds: 60,
            allow_app_only: false,
            groups_overage: OverageAction::Deny,
            issuers: Vec::new(),
        }
    }

    fn v1() -> Value {
        json!({
            "aud": "api://airlock", "iss": v1_issuer(TENANT), "iat": NOW - 10, "nbf": NOW - 10,
            "exp": NOW + 3600, "appid": "app-1", "groups": ["g1", "g2"], "name": "Ada",
            "oid": "oid-ada", "roles": ["Reader"], "scp": "mcp.call user_impersonation",
            "sub": "pairwise", "tid": TENANT, "unique_name": "ada@contoso.com",
            "upn": "ada@contoso.com", "ver": "1.0"
        })
    }

    fn v2() -> Value {
        json!({
            "aud": "c0ffee00-0000-0000-0000-000000000001", "iss": v2_issuer(TENANT),
            "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 3600, "azp": "app-2",
            "groups": ["g1"], "name": "Bob", "oid": "oid-bob",
            "preferred_username": "bob@contoso.com", "scp": "mcp.call", "sub": "pairwise",
            "tid": TENANT, "ver": "2.0"
        })
    }

    #[test]
    fn normalizes_v1_and_v2() {
        let a = principal(&v1(), &config(), NOW).unwrap();
        assert_eq!(a.tenant_id, TENANT);
        assert_eq!(a.object_id, "oid-ada");
        assert_eq!(a.display_name, "ada@contoso.com");
        assert_eq!(a.app_id, "app-1");
        assert_eq!(a.groups, vec!["g1", "g2"]);
        assert_eq!(a.roles, vec!["Reader"]);
        assert_eq!(a.scopes, vec!["mcp.call", "user_impersonation"]);
        assert_eq!(a.version, TokenVersion::V1);
        assert!(!a.app_only);

        let b = principal(&v2(), &config(), NOW).unwrap();
        assert_eq!(b.display_name, "bob@contoso.com");
        assert_eq!(b.app_id, "app-2");
        assert_eq!(b.version, TokenVersion::V2);
    }

    #[test]
    fn a_configured_other_issuer_is_trusted_for_its_tenant_only() {
        const MIRROR: &str = "https://idp.example.test/airlock";
        let mut trust = config();
        trust.issuers.push(OtherIssuer {
            issuer: MIRROR.into(),
            tenant: TENANT.into(),
            version: TokenVersion::V2,
        });
        let mut claims = v2();
        claims["iss"] = json!(MIRROR);
        let p = principal(&claims, &trust, NOW).unwrap();
        assert_eq!(
            (p.tenant_id.as_str(), p.version),
            (TENANT, TokenVersion::V2)
        );
        // Entra's own issuers stay trusted beside it.
        assert!(principal(&v2(), &trust, NOW).is_ok());
        // Its tokens must still name its tenant, and not by a prefix of its URL.
        claims["tid"] = json!(OTHER);
        assert!(matches!(
            principal(&claims, &trust, NOW),
            Err(ClaimsError::TenantMismatch { .. })
        ));
        claims["tid"] = json!(TENANT);
        claims["iss"] = json!(format!("{MIRROR}/"));
        assert!(matches!(
            principal(&claims, &trust, NOW),
            Err(ClaimsError::UntrustedIssuer(_))
        ));
        // Without the configuration, the same token is refused.
        claims["iss"] = json!(MIRROR);
        assert!(matches!(
            principal(&claims, &config(), NOW),
            Err(ClaimsError::UntrustedIssuer(_))
        ));
    }

    fn refused(mut claims: Value, edit: impl FnOnce(&mut Value)) -> ClaimsError {
        edit(&mut claims);
        principal(&claims, &config(), NOW).unwrap_err()
    }

    #[test]
    fn refuses_wrong_tenant_audience_and_time() {
        // A token of another tenant, even one validly signed by that tenant.
        assert!(matches!(
            refused(v2(), |c| {
                c["iss"] = json!(v2_issuer(OTHER));
                c["tid"] = json!(OTHER);
            }),
            ClaimsError::UntrustedIssuer(_)
        ));
        // tid disagreeing with the issuer.
        assert!(matches!(
            refused(v1(), |c| c["tid"] = json!(OTHER)),
            ClaimsError::TenantMismatch { .. }
        ));
        assert!(matches!(
            refused(v1(), |c| c["ver"] = json!("2.0")),
            ClaimsError::VersionMismatch { .. }
        ));
        assert_eq!(
            refused(v1(), |c| c["aud"] = json!("api://other")),
            ClaimsError::WrongAudience
        );
        assert_eq!(
            refused(v1(), |c| c["aud"] = json!(["x", "y"])),
            ClaimsError::WrongAudience
        );
        assert_eq!(
            refused(v1(), |c| c["exp"] = json!(NOW - 61)),
            ClaimsError::Expired
        );
        assert_eq!(
            refused(v1(), |c| c["nbf"] = json!(NOW + 61)),
            ClaimsError::NotYetValid
        );
        assert_eq!(
            refused(v1(), |c| c["iat"] = json!(NOW + 61)),
            ClaimsError::NotYetValid
        );
        // Within the skew both ways.
        let mut edge = v1();
        edge["exp"] = json!(NOW - 59);
        edge["nbf"] = json!(NOW + 59);
        assert!(principal(&edge, &config(), NOW).is_ok());
        assert!(matches!(
            refused(v1(), |c| c["iss"] = json!(
                "https://sts.windows.net/11111111-1111-1111-1111-111111111111"
            )),
            ClaimsError::UntrustedIssuer(_)
        ));
    }

    #[test]
    fn refuses_missing_or_mistyped_claims() {
        for name in ["iss", "tid", "aud", "exp", "oid"] {
            assert_eq!(
                refused(v1(), |c| {
                    c.as_object_mut().unwrap().remove(name);
                }),
                ClaimsError::Missing(name)
            );
        }
        assert_eq!(
            refused(v1(), |c| c["exp"] = json!("soon")),
            ClaimsError::WrongType("exp")
        );
        assert_eq!(
            refused(v1(), |c| c["groups"] = json!("g1")),
            ClaimsError::WrongType("groups")
        );
        assert_eq!(
            refused(v1(), |c| c["groups"] = json!([1])),
            ClaimsError::WrongType("groups")
        );
        assert_eq!(
            refused(v1(), |c| c["scp"] = json!(["a"])),
            ClaimsError::WrongType("scp")
        );
    }

    #[test]
    fn app_only_tokens_only_where_allowed() {
        let app = |c: &mut Value| {
            let o = c.as_object_mut().unwrap();
            o.remove("scp");
            o.insert("idtyp".into(), json!("app"));
        };
        assert_eq!(refused(v2(), app), ClaimsError::AppOnlyNotAllowed);
        let mut claims = v2();
        app(&mut claims);
        let allowed = TrustConfig {
            allow_app_only: true,
            ..config()
        };
        let p = principal(&claims, &allowed, NOW).unwrap();
        assert!(p.app_only);
        assert!(p.scopes.is_empty());
    }

    #[test]
    fn groups_overage_is_refused_with_a_reason() {
        let overage = |c: &mut Value| {
            let o = c.as_object_mut().unwrap();
            o.remove("groups");
            o.insert("_claim_names".into(), json!({"groups": "src1"}));
            o.insert(
                "_claim_sources".into(),
                json!({"src1": {"endpoint": "https://graph"}}),
            );
        };
        let err = refused(v1(), overage);
        assert_eq!(err, ClaimsError::GroupsOverage);
        assert!(err.to_string().contains("app roles"));
        let mut claims = v1();
        overage(&mut claims);
        let lenient = TrustConfig {
            groups_overage: OverageAction::IgnoreGroups,
            ..config()
        };
        assert!(principal(&claims, &lenient, NOW).unwrap().groups.is_empty());
        assert_eq!(
            refused(v1(), |c| c["hasgroups"] = json!(true)),
            ClaimsError::GroupsOverage
        );
    }
}
