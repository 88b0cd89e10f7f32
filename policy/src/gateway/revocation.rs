//! Revocations: a person or one MCP session cut off from the servers a
//! revocation reaches, until it is lifted or runs out — their next request
//! is refused, and a call of theirs already held is refused, not released,
//! even if it is approved afterwards.

use crate::entra::Principal;
use serde::{Deserialize, Serialize};

/// One revocation, as gateways and the approval service receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revocation {
    /// `namespace/name` of the Revocation resource: what the refusal names.
    pub name: String,
    /// The person's Entra object ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    /// Their tenant; absent: the object ID in any tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// An MCP session ID (`Mcp-Session-Id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default)]
    pub reason: String,
    /// Seconds since the epoch when it runs out; absent: until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl Revocation {
    /// Whether it cuts off `principal` (in `session`, if any) at `now`.
    pub fn covers(&self, principal: &Principal, session: Option<&str>, now: u64) -> bool {
        if self.until.is_some_and(|until| now >= until) {
            return false;
        }
        let person = self.oid.as_deref() == Some(principal.object_id.as_str())
            && self
                .tenant
                .as_deref()
                .is_none_or(|tenant| tenant == principal.tenant_id);
        let in_session = self.session.is_some() && self.session.as_deref() == session;
        person || in_session
    }

    /// What the refused caller is told.
    pub fn refusal(&self) -> String {
        let reason = if self.reason.is_empty() {
            "no reason given"
        } else {
            &self.reason
        };
        format!("access revoked by {}: {reason}", self.name)
    }
}

/// The first of `revocations` that cuts off `principal` at `now`.
pub fn revoked<'r>(
    revocations: &'r [Revocation],
    principal: &Principal,
    session: Option<&str>,
    now: u64,
) -> Option<&'r Revocation> {
    revocations
        .iter()
        .find(|r| r.covers(principal, session, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entra::TokenVersion;

    fn ada(tenant: &str) -> Principal {
        Principal {
            tenant_id: tenant.into(),
            object_id: "oid-ada".into(),
            display_name: "ada@contoso.com".into(),
            app_id: "app".into(),
            groups: vec![],
            roles: vec![],
            scopes: vec![],
            app_only: false,
            version: TokenVersion::V2,
            expires_at: 0,
        }
    }

    fn revocation() -> Revocation {
        Revocation {
            name: "ml/ada".into(),
            oid: Some("oid-ada".into()),
            tenant: None,
            session: None,
            reason: "laptop stolen".into(),
            until: None,
        }
    }

    #[test]
    fn a_person_is_cut_off_in_every_session_until_it_runs_out() {
        let mut r = revocation();
        assert!(r.covers(&ada("t"), None, 100));
        assert!(r.covers(&ada("t"), Some("s-1"), 100));
        r.tenant = Some("other".into());
        assert!(!r.covers(&ada("t"), None, 100));
        r.tenant = Some("t".into());
        r.until = Some(200);
        assert!(r.covers(&ada("t"), None, 199));
        assert!(!r.covers(&ada("t"), None, 200));
        assert_eq!(r.refusal(), "access revoked by ml/ada: laptop stolen");
    }

    #[test]
    fn a_session_is_cut_off_alone() {
        let session = Revocation {
            oid: None,
            session: Some("s-1".into()),
            ..revocation()
        };
        assert!(session.covers(&ada("t"), Some("s-1"), 0));
        assert!(!session.covers(&ada("t"), Some("s-2"), 0));
        assert!(!session.covers(&ada("t"), None, 0));
        let nobody = Revocation {
            oid: None,
            ..revocation()
        };
        assert!(revoked(&[nobody, session.clone()], &ada("t"), None, 0).is_none());
        assert_eq!(
            revoked(std::slice::from_ref(&session), &ada("t"), Some("s-1"), 0),
            Some(&session)
        );
    }
}
