//! `kubectl airlock revoke` and `lift`: a Revocation resource, which people
//! can list and GitOps can see; the operator hands it to every gateway it
//! reaches within seconds.

use super::refusal;
use crate::approvals::time::now_seconds;
use crate::crd::{Revocation, RevocationSpec, RevokedUser};
use airlock_policy::audit::rfc3339;
use kube::api::{Api, DeleteParams, PostParams};

/// Options of `revoke`.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// The person's Entra object ID.
    #[arg(long, required_unless_present = "session", conflicts_with = "session")]
    pub user: Option<String>,
    /// Only in this tenant (default: the object ID in any tenant).
    #[arg(long, requires = "user")]
    pub tenant: Option<String>,
    /// One MCP session (`Mcp-Session-Id`).
    #[arg(long)]
    pub session: Option<String>,
    /// Why; the refused caller is told.
    #[arg(long)]
    pub reason: String,
    /// For this long (`30m`, `12h`, `7d`); default: until lifted.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
}

pub async fn revoke(
    client: &kube::Client,
    namespace: &str,
    args: &RevokeArgs,
) -> anyhow::Result<String> {
    let expires_at = match &args.duration {
        Some(text) => {
            let seconds = airlock_policy::model::parse_duration(text)
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!("--for {text:?} is not a duration like 30m, 12h or 7d")
                })?;
            Some(rfc3339(now_seconds().saturating_add(seconds)))
        }
        None => None,
    };
    let mut revocation = Revocation::new(
        "",
        RevocationSpec {
            user: args.user.as_ref().map(|oid| RevokedUser {
                oid: oid.clone(),
                tenant: args.tenant.clone(),
            }),
            session: args.session.clone(),
            reason: args.reason.clone(),
            expires_at: expires_at.clone(),
        },
    );
    revocation.metadata.name = None;
    revocation.metadata.generate_name = Some("revoke-".into());
    let created = Api::<Revocation>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &revocation)
        .await
        .map_err(refusal)?;
    let name = created.metadata.name.unwrap_or_default();
    let whom = match (&args.user, &args.session) {
        (Some(oid), _) => format!("user {oid}"),
        (_, Some(session)) => format!("session {session}"),
        _ => String::new(),
    };
    let until = expires_at.map_or("until lifted".to_string(), |at| format!("until {at}"));
    Ok(format!(
        "revocation {namespace}/{name}: {whom} is cut off {until} (lift it with `kubectl airlock lift {name} -n {namespace}`)"
    ))
}

pub async fn lift(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    Api::<Revocation>::namespaced(client.clone(), namespace)
        .delete(name, &DeleteParams::default())
        .await
        .map_err(refusal)?;
    Ok(format!("revocation {namespace}/{name} lifted"))
}
