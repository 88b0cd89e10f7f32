//! Who may approve, as the cluster says: the same RBAC verb `approve` on an
//! ApprovalPolicy that admission checks for `kubectl airlock`, asked of the
//! API server (a SubjectAccessReview) for a person who decides through the
//! people's API with an Entra token — mapped to the user the API server
//! would see for them (AKS: username = UPN, `extra["oid"]`, groups).

use super::model::Requirement;
use airlock_policy::entra::Principal;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::str::FromStr;

/// Where the API server's user info holds the Entra object ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectIdField {
    /// `extra[KEY]` (AKS with Entra ID: `extra:oid`).
    Extra(String),
    Uid,
    Username,
}

impl FromStr for ObjectIdField {
    type Err = String;

    fn from_str(text: &str) -> Result<ObjectIdField, String> {
        match text {
            "uid" => Ok(ObjectIdField::Uid),
            "username" => Ok(ObjectIdField::Username),
            _ => match text.strip_prefix("extra:") {
                Some(key) if !key.is_empty() => Ok(ObjectIdField::Extra(key.to_string())),
                _ => Err(format!("{text:?}: expected extra:KEY, uid or username")),
            },
        }
    }
}

impl std::fmt::Display for ObjectIdField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectIdField::Extra(key) => write!(f, "extra:{key}"),
            ObjectIdField::Uid => f.write_str("uid"),
            ObjectIdField::Username => f.write_str("username"),
        }
    }
}

/// Asks the API server whether a person holds `approve` on a rule's policy.
#[derive(Clone)]
pub struct ApproverAccess {
    client: kube::Client,
    object_id: ObjectIdField,
}

/// The rule's `(namespace, policy)`, from `namespace/policy/rule`.
fn policy_of(requirement: &Requirement) -> Option<(&str, &str)> {
    let mut parts = requirement.rule.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(namespace), Some(policy)) if !namespace.is_empty() && !policy.is_empty() => {
            Some((namespace, policy))
        }
        _ => None,
    }
}

impl ApproverAccess {
    pub fn new(client: kube::Client, object_id: ObjectIdField) -> ApproverAccess {
        ApproverAccess { client, object_id }
    }

    /// The user the API server would see for `who`.
    fn subject(&self, who: &Principal) -> SubjectAccessReviewSpec {
        let mut spec = SubjectAccessReviewSpec {
            user: Some(who.display_name.clone()),
            groups: Some(who.groups.clone()),
            ..SubjectAccessReviewSpec::default()
        };
        match &self.object_id {
            ObjectIdField::Extra(key) => {
                spec.extra = Some(BTreeMap::from([(key.clone(), vec![who.object_id.clone()])]))
            }
            ObjectIdField::Uid => spec.uid = Some(who.object_id.clone()),
            ObjectIdField::Username => spec.user = Some(who.object_id.clone()),
        }
        spec
    }

    /// Of `requirements`, those whose policy grants `who` the verb `approve`.
    pub async fn granted<'r>(
        &self,
        who: &Principal,
        requirements: &'r [Requirement],
    ) -> Result<Vec<&'r Requirement>, kube::Error> {
        let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let mut granted = Vec::new();
        for requirement in requirements {
            let Some((namespace, policy)) = policy_of(requirement) else {
                continue;
            };
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some("mcp.airlock.dev".into()),
                        resource: Some("approvalpolicies".into()),
                        namespace: Some(namespace.into()),
                        name: Some(policy.into()),
                        verb: Some("approve".into()),
                        ..ResourceAttributes::default()
                    }),
                    ..self.subject(who)
                },
                ..SubjectAccessReview::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await?;
            if answer.status.is_some_and(|s| s.allowed) {
                granted.push(requirement);
            }
        }
        Ok(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_fields_parse_and_print_alike() {
        for text in ["extra:oid", "uid", "username"] {
            assert_eq!(text.parse::<ObjectIdField>().unwrap().to_string(), text);
        }
        for bad in ["extra:", "groups", ""] {
            assert!(bad.parse::<ObjectIdField>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rule_names_its_policy() {
        let requirement = |rule: &str| Requirement {
            rule: rule.into(),
            policy_version: "1".into(),
            approver_groups: vec![],
            approver_users: vec![],
            min_approvals: 1,
            allow_self_approval: false,
        };
        assert_eq!(
            policy_of(&requirement("ml/models/deploy")),
            Some(("ml", "models"))
        );
        assert_eq!(policy_of(&requirement("models")), None);
        assert_eq!(policy_of(&requirement("/models/deploy")), None);
    }
}
