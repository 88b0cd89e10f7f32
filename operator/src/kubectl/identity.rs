//! Who the API server says the caller is.

pub use crate::approvals::approver_access::ObjectIdField;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use kube::api::{Api, PostParams};

/// The caller as the API server authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub object_id: String,
    pub groups: Vec<String>,
}

impl Caller {
    /// From the API server's user info, reading the object ID from `field`.
    pub fn from_user_info(user: &UserInfo, field: &ObjectIdField) -> Result<Caller, String> {
        let username = user.username.clone().unwrap_or_default();
        let object_id = match field {
            ObjectIdField::Uid => user.uid.clone(),
            ObjectIdField::Username => user.username.clone(),
            ObjectIdField::Extra(key) => user
                .extra
                .as_ref()
                .and_then(|extra| extra.get(key))
                .and_then(|values| match values.as_slice() {
                    [one] => Some(one.clone()),
                    _ => None,
                }),
        }
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            format!(
                "the API server gives {username} no Entra object ID ({}); approvers sign in with their Entra identity",
                match field {
                    ObjectIdField::Extra(key) => format!("extra[{key:?}]"),
                    ObjectIdField::Uid => "uid".into(),
                    ObjectIdField::Username => "username".into(),
                }
            )
        })?;
        Ok(Caller {
            username,
            object_id,
            groups: user.groups.clone().unwrap_or_default(),
        })
    }
}

/// Asks the API server who the caller is.
pub async fn whoami(client: &kube::Client, field: &ObjectIdField) -> anyhow::Result<Caller> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| anyhow::anyhow!("asking the API server who you are: {e}"))?;
    let user = review
        .status
        .and_then(|status| status.user_info)
        .unwrap_or_default();
    Caller::from_user_info(&user, field).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn aks_user(oids: &[&str]) -> UserInfo {
        UserInfo {
            username: Some("lea@contoso.com".into()),
            groups: Some(vec!["leads".into(), "system:authenticated".into()]),
            extra: Some(BTreeMap::from([(
                "oid".to_string(),
                oids.iter().map(|o| o.to_string()).collect(),
            )])),
            uid: None,
        }
    }

    #[test]
    fn the_object_id_comes_from_the_configured_field() {
        let aks = "extra:oid".parse().unwrap();
        let caller = Caller::from_user_info(&aks_user(&["oid-lea"]), &aks).unwrap();
        assert_eq!(caller.object_id, "oid-lea");
        assert_eq!(caller.username, "lea@contoso.com");
        assert_eq!(caller.groups.len(), 2);
        let by_name = Caller::from_user_info(&aks_user(&[]), &ObjectIdField::Username).unwrap();
        assert_eq!(by_name.object_id, "lea@contoso.com");
    }

    #[test]
    fn no_single_object_id_is_refused() {
        let aks = "extra:oid".parse().unwrap();
        for oids in [&[][..], &["a", "b"][..]] {
            let refused = Caller::from_user_info(&aks_user(oids), &aks).unwrap_err();
            assert!(refused.contains("no Entra object ID"), "{refused}");
        }
        assert!(Caller::from_user_info(&aks_user(&["x"]), &ObjectIdField::Uid).is_err());
    }
}
