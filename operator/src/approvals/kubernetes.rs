//! Approvals as `ApprovalRequest` resources: the API server (etcd) is the
//! durable record, `resourceVersion` the compare-and-set, and a watch tells
//! every replica of the service when another writer moved an approval.
//!
//! The service's model maps onto the resource field by field: what is fixed
//! when the call is held goes in the immutable spec, what happens afterwards
//! (phase, decisions, conversation, releases) in the status subresource.

use super::model::{
    Act, Approval, Arrival, Binding, Decision, Person, Remark, Requirement, State, Verdict, Via,
};
use super::store::{Store, StoreError};
use crate::crd::{
    self, Actor, ApprovalRequest, ApprovalRequestSpec, ApprovalRequestStatus, HeldCall, Phase,
    Requester, RequiredApproval,
};
use airlock_policy::audit::{parse_rfc3339, rfc3339};
use futures::{Stream, StreamExt};
use kube::api::{Api, ListParams, PartialObjectMeta, PostParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};

/// Label holding a digest of the binding, so identical asks are found with a
/// label selector instead of a scan (the full binding is compared after).
const BINDING_LABEL: &str = "mcp.airlock.dev/binding";
/// Label holding a digest of the requester's tenant and object ID.
const REQUESTER_LABEL: &str = "mcp.airlock.dev/requester";
/// 128 bits of a SHA-256: a label value may not exceed 63 characters.
const LABEL_DIGEST_LENGTH: usize = 32;
const PAGE: u32 = 500;

/// Which namespace each ApprovalRequest lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// All of them in this one.
    Namespace(String),
    /// Each in the namespace of the McpServer it holds a call for, so a
    /// team's approvers are granted rights there and see only that team's
    /// recorded arguments.
    ServerNamespace,
}

/// ApprovalRequests in the API server.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
    placement: Placement,
    /// Announces each request held and each change of its phase as an Event
    /// on it, when set.
    recorder: Option<Recorder>,
    /// Every request the store may hold: one namespace's, or all.
    api: Api<ApprovalRequest>,
    /// The same resources, names and versions only: all a watch needs.
    metadata: Api<PartialObjectMeta<ApprovalRequest>>,
    /// The tenant of the people the API server authenticates: what an
    /// approver writes through it is recorded under this tenant.
    approvers_tenant: String,
}

impl KubeStore {
    pub fn new(client: kube::Client, placement: Placement) -> KubeStore {
        let (api, metadata) = match &placement {
            Placement::Namespace(namespace) => (
                Api::namespaced(client.clone(), namespace),
                Api::namespaced(client.clone(), namespace),
            ),
            Placement::ServerNamespace => (Api::all(client.clone()), Api::all(client.clone())),
        };
        KubeStore {
            client,
            placement,
            recorder: None,
            api,
            metadata,
            approvers_tenant: String::new(),
        }
    }

    /// Records decisions written through the API server under `tenant`.
    pub fn with_approvers_tenant(mut self, tenant: &str) -> KubeStore {
        self.approvers_tenant = tenant.to_string();
        self
    }

    /// Also records an Event on each request when it is held and whenever
    /// its phase changes, as `instance` of the operator.
    pub fn announcing(mut self, instance: &str) -> KubeStore {
        let reporter = Reporter {
            controller: "airlock-approvals".into(),
            instance: Some(instance.to_string()),
        };
        self.recorder = Some(Recorder::new(self.client.clone(), reporter));
        self
    }

    /// An Event on `resource` saying what became of it.
    async fn announce(&self, resource: &ApprovalRequest, approval: &Approval) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let phase = Phase::from(approval.state);
        let type_ = match phase {
            Phase::Denied | Phase::Expired | Phase::Cancelled => EventType::Warning,
            _ => EventType::Normal,
        };
        let reason = format!("{phase:?}");
        crate::events::publish(
            recorder,
            resource,
            type_,
            &reason,
            "Approval",
            &approval.summary,
        )
        .await;
    }

    /// The namespace a request for `server` (`namespace/name`) is kept in.
    fn namespace_for(&self, server: &str) -> String {
        match &self.placement {
            Placement::Namespace(namespace) => namespace.clone(),
            Placement::ServerNamespace => server
                .split_once('/')
                .map(|(ns, _)| ns)
                .unwrap_or_default()
                .to_string(),
        }
    }

    fn in_namespace(&self, namespace: &str) -> Api<ApprovalRequest> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The request named `id`, wherever it is kept.
    async fn find(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        if !valid_name(id) {
            return Ok(None);
        }
        match &self.placement {
            Placement::Namespace(_) => Ok(self.api.get_opt(id).await?),
            Placement::ServerNamespace => {
                let params = ListParams::default().fields(&format!("metadata.name={id}"));
                Ok(self.api.list(&params).await?.items.into_iter().next())
            }
        }
    }

    async fn all(&self, selector: Option<&str>) -> Result<Vec<Approval>, StoreError> {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(selector) = selector {
            params = params.labels(selector);
        }
        let mut approvals = Vec::new();
        loop {
            let page = self.api.list(&params).await?;
            for resource in &page.items {
                // One unreadable record must not hide every other one (from
                // the sweeper, from lists): it is logged, and skipped.
                match from_resource(resource, &self.approvers_tenant) {
                    Ok(approval) => approvals.push(approval),
                    Err(e) => super::service::log_error(&format!("skipping {e}")),
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        approvals.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(approvals)
    }
}

fn label_digest(text: &str) -> String {
    let digest = airlock_policy::canonical::sha256_hex(text.as_bytes());
    let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
    hex.chars().take(LABEL_DIGEST_LENGTH).collect()
}

fn binding_label(binding: &Binding) -> String {
    label_digest(&binding.key())
}

fn requester_label(tid: &str, oid: &str) -> String {
    label_digest(&format!("{tid}/{oid}"))
}

/// A Kubernetes object name (DNS-1123 subdomain). Anything else is refused
/// before it reaches a URL: `x/status` would otherwise name a subresource.
fn valid_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

impl Store for KubeStore {
    async fn insert(&self, approval: &Approval) -> Result<(), StoreError> {
        let resource = to_resource(approval)?;
        let api = self.in_namespace(&self.namespace_for(&approval.binding.server));
        let created = api.create(&PostParams::default(), &resource).await?;
        // The API server ignores status on create; write it so `kubectl get`
        // shows the phase at once. Losing the race to another writer is fine:
        // its status is newer.
        let mut with_status = created;
        with_status.status = resource.status;
        let written = match api
            .replace_status(&approval.id, &PostParams::default(), &with_status)
            .await
        {
            Err(e) if !conflict(&e) => Err(e.into()),
            _ => Ok(()),
        };
        self.announce(&with_status, approval).await;
        written
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        self.find(id)
            .await?
            .map(|resource| from_resource(&resource, &self.approvers_tenant))
            .transpose()
    }

    async fn latest_for(&self, binding: &Binding) -> Result<Option<Approval>, StoreError> {
        let selector = format!("{BINDING_LABEL}={}", binding_label(binding));
        Ok(self
            .all(Some(&selector))
            .await?
            .into_iter()
            .rfind(|approval| approval.binding == *binding))
    }

    async fn by_requester(&self, tid: &str, oid: &str) -> Result<Vec<Approval>, StoreError> {
        let selector = format!("{REQUESTER_LABEL}={}", requester_label(tid, oid));
        let mut approvals = self.all(Some(&selector)).await?;
        approvals.retain(|a| a.requester.tid == tid && a.requester.oid == oid);
        Ok(approvals)
    }

    async fn update(&self, approval: &Approval, expected: u64) -> Result<bool, StoreError> {
        let Some(mut current) = self.find(&approval.id).await? else {
            return Ok(false);
        };
        let api = self.in_namespace(&current.metadata.namespace.clone().unwrap_or_default());
        if from_resource(&current, &self.approvers_tenant)?.version != expected {
            return Ok(false);
        }
        let wanted = to_resource(approval)?;
        if wanted.spec != current.spec {
            return Err(StoreError::Immutable(approval.id.clone()));
        }
        let phase_before = current.status.as_ref().map(|s| s.phase);
        let conditions = current
            .status
            .take()
            .map(|status| status.conditions)
            .unwrap_or_default();
        current.status = wanted.status.map(|status| ApprovalRequestStatus {
            conditions,
            ..status
        });
        // `current` carries the resourceVersion read above: if anyone wrote
        // since, the API server refuses with a conflict.
        match api
            .replace_status(&approval.id, &PostParams::default(), &current)
            .await
        {
            Ok(written) => {
                if phase_before != Some(Phase::from(approval.state)) {
                    self.announce(&written, approval).await;
                }
                Ok(true)
            }
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<Approval>, StoreError> {
        self.all(None).await
    }

    fn changes(&self) -> impl Stream<Item = String> + Send + 'static {
        watcher(self.metadata.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .filter_map(|event| async move {
                match event {
                    Ok(meta) => meta.metadata.name,
                    Err(e) => {
                        super::service::log_error(&format!("watching ApprovalRequests: {e}"));
                        None
                    }
                }
            })
    }
}

fn seconds(text: &str, field: &str, id: &str) -> Result<u64, StoreError> {
    parse_rfc3339(text).ok_or_else(|| StoreError::Unreadable {
        id: id.to_string(),
        reason: format!("{field} {text:?} is not an RFC 3339 time"),
    })
}

fn number<T: TryFrom<i64>>(value: i64, field: &str, id: &str) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Unreadable {
        id: id.to_string(),
        reason: format!("{field} {value} is out of range"),
    })
}

fn wide<T: TryInto<i64>>(value: T, field: &str, id: &str) -> Result<i64, StoreError> {
    value.try_into().map_err(|_| StoreError::Unreadable {
        id: id.to_string(),
        reason: format!("{field} does not fit a Kubernetes integer"),
    })
}

fn actor(person: &Person) -> Actor {
    Actor {
        user: person.name.clone(),
        uid: person.oid.clone(),
        tenant: person.tid.clone(),
        groups: person.groups.clone(),
    }
}

fn person(actor: &Actor) -> Person {
    Person {
        tid: actor.tenant.clone(),
        oid: actor.uid.clone(),
        name: actor.user.clone(),
        groups: actor.groups.clone(),
    }
}

/// Someone the API server authenticated, as admission let them write
/// themselves down: everything but the tenant, which is the cluster's.
fn approver(actor: &Actor, tenant: &str) -> Person {
    Person {
        tid: tenant.to_string(),
        ..person(actor)
    }
}

impl From<State> for Phase {
    fn from(state: State) -> Phase {
        match state {
            State::Pending => Phase::Pending,
            State::InfoRequested => Phase::InfoRequested,
            State::Approved => Phase::Approved,
            State::Denied => Phase::Denied,
            State::Expired => Phase::Expired,
            State::Executed => Phase::Executed,
            State::Cancelled => Phase::Cancelled,
        }
    }
}

impl From<Phase> for State {
    fn from(phase: Phase) -> State {
        match phase {
            Phase::Pending => State::Pending,
            Phase::InfoRequested => State::InfoRequested,
            Phase::Approved => State::Approved,
            Phase::Denied => State::Denied,
            Phase::Expired => State::Expired,
            Phase::Executed => State::Executed,
            Phase::Cancelled => State::Cancelled,
        }
    }
}

impl From<Via> for crd::Via {
    fn from(via: Via) -> crd::Via {
        match via {
            Via::Service => crd::Via::Service,
            Via::Kubectl => crd::Via::Kubectl,
        }
    }
}

impl From<crd::Via> for Via {
    fn from(via: crd::Via) -> Via {
        match via {
            crd::Via::Service => Via::Service,
            crd::Via::Kubectl => Via::Kubectl,
        }
    }
}

impl From<Verdict> for crd::Verdict {
    fn from(verdict: Verdict) -> crd::Verdict {
        match verdict {
            Verdict::Approve => crd::Verdict::Approve,
            Verdict::Deny => crd::Verdict::Deny,
        }
    }
}

impl From<crd::Verdict> for Verdict {
    fn from(verdict: crd::Verdict) -> Verdict {
        match verdict {
            crd::Verdict::Approve => Verdict::Approve,
            crd::Verdict::Deny => Verdict::Deny,
        }
    }
}

fn to_resource(approval: &Approval) -> Result<ApprovalRequest, StoreError> {
    let id = approval.id.as_str();
    let requirements = approval
        .requirements
        .iter()
        .map(|r| {
            Ok(RequiredApproval {
                rule: r.rule.clone(),
                policy_version: r.policy_version.clone(),
                approver_groups: r.approver_groups.clone(),
                approver_users: r.approver_users.clone(),
                min_approvals: number(i64::from(r.min_approvals), "minApprovals", id)?,
                allow_self_approval: r.allow_self_approval,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let binding = &approval.binding;
    let spec = ApprovalRequestSpec {
        server: binding.server.clone(),
        requester: Requester {
            tid: binding.tid.clone(),
            oid: binding.oid.clone(),
            name: approval.requester.name.clone(),
            app_id: binding.app_id.clone(),
            groups: approval.requester.groups.clone(),
        },
        call: HeldCall {
            method: binding.method.clone(),
            target: binding.target.clone(),
            arguments_digest: binding.digest.clone(),
            arguments: approval.arguments.clone(),
            session_id: approval.session_id.clone(),
            protocol_version: approval.protocol_version.clone(),
        },
        requirements,
        summary: approval.summary.clone(),
        requested_at: rfc3339(approval.created_at),
        expires_at: rfc3339(approval.expires_at),
        grant_window_seconds: approval
            .grant_window
            .map(|w| wide(w, "grantWindowSeconds", id))
            .transpose()?,
    };
    let status = ApprovalRequestStatus {
        phase: approval.state.into(),
        decisions: approval
            .decisions
            .iter()
            .map(|d| crd::Decision {
                by: actor(&d.approver),
                verdict: d.verdict.into(),
                reason: d.reason.clone(),
                time: Some(rfc3339(d.at)),
                via: d.via.into(),
            })
            .collect(),
        conversation: approval
            .conversation
            .iter()
            .map(|r| crd::Remark {
                by: actor(&r.by),
                message: r.message.clone(),
                time: Some(rfc3339(r.at)),
                via: r.via.into(),
            })
            .collect(),
        approved_at: approval.approved_at.map(rfc3339),
        releases: i64::from(approval.releases),
        last_release: approval.last_release.clone(),
        approvals_needed: wide(approval.approvals_needed(), "approvalsNeeded", id)?,
        revision: wide(approval.version, "revision", id)?,
        conditions: Vec::new(),
    };
    let mut resource = ApprovalRequest::new(id, spec);
    resource.metadata.labels = Some(
        [
            (BINDING_LABEL.to_string(), binding_label(binding)),
            (
                REQUESTER_LABEL.to_string(),
                requester_label(&binding.tid, &binding.oid),
            ),
        ]
        .into(),
    );
    resource.status = Some(status);
    Ok(resource)
}

/// The service's model of `resource`, to show it: what approvers wrote
/// through the API server and the service has not judged yet is left out.
pub fn model_of(resource: &ApprovalRequest) -> Result<Approval, StoreError> {
    let mut approval = from_resource(resource, "")?;
    approval.arrivals.clear();
    Ok(approval)
}

/// The service's model of `resource`; what approvers wrote through the API
/// server (no time yet) arrives to be judged, as people of `approvers_tenant`.
fn from_resource(
    resource: &ApprovalRequest,
    approvers_tenant: &str,
) -> Result<Approval, StoreError> {
    let id = resource.metadata.name.clone().unwrap_or_default();
    let spec = &resource.spec;
    let status = resource.status.clone().unwrap_or_default();
    let requirements = spec
        .requirements
        .iter()
        .map(|r| {
            Ok(Requirement {
                rule: r.rule.clone(),
                policy_version: r.policy_version.clone(),
                approver_groups: r.approver_groups.clone(),
                approver_users: r.approver_users.clone(),
                min_approvals: number(i64::from(r.min_approvals), "minApprovals", &id)?,
                allow_self_approval: r.allow_self_approval,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // What carries no time yet was written through the API server since the
    // service last counted: questions first, as an approver asks before
    // deciding.
    let mut arrivals = Vec::new();
    let mut conversation = Vec::new();
    for remark in &status.conversation {
        match &remark.time {
            Some(time) => conversation.push(Remark {
                by: person(&remark.by),
                message: remark.message.clone(),
                at: seconds(time, "remark time", &id)?,
                via: remark.via.into(),
            }),
            None => arrivals.push(Arrival {
                by: approver(&remark.by, approvers_tenant),
                act: Act::Ask {
                    question: remark.message.clone(),
                },
            }),
        }
    }
    let mut decisions = Vec::new();
    for decision in &status.decisions {
        match &decision.time {
            Some(time) => decisions.push(Decision {
                approver: person(&decision.by),
                verdict: decision.verdict.into(),
                reason: decision.reason.clone(),
                at: seconds(time, "decision time", &id)?,
                via: decision.via.into(),
            }),
            None => arrivals.push(Arrival {
                by: approver(&decision.by, approvers_tenant),
                act: Act::Decide {
                    verdict: decision.verdict.into(),
                    reason: decision.reason.clone(),
                },
            }),
        }
    }
    Ok(Approval {
        binding: Binding {
            tid: spec.requester.tid.clone(),
            oid: spec.requester.oid.clone(),
            app_id: spec.requester.app_id.clone(),
            server: spec.server.clone(),
            method: spec.call.method.clone(),
            target: spec.call.target.clone(),
            digest: spec.call.arguments_digest.clone(),
        },
        requester: Person {
            tid: spec.requester.tid.clone(),
            oid: spec.requester.oid.clone(),
            name: spec.requester.name.clone(),
            groups: spec.requester.groups.clone(),
        },
        requirements,
        summary: spec.summary.clone(),
        arguments: spec.call.arguments.clone(),
        session_id: spec.call.session_id.clone(),
        protocol_version: spec.call.protocol_version.clone(),
        grant_window: spec
            .grant_window_seconds
            .map(|w| number(w, "grantWindowSeconds", &id))
            .transpose()?,
        state: status.phase.into(),
        created_at: seconds(&spec.requested_at, "requestedAt", &id)?,
        expires_at: seconds(&spec.expires_at, "expiresAt", &id)?,
        decisions,
        conversation,
        approved_at: status
            .approved_at
            .as_deref()
            .map(|t| seconds(t, "approvedAt", &id))
            .transpose()?,
        releases: number(status.releases, "releases", &id)?,
        last_release: status.last_release.clone(),
        version: number(status.revision, "revision", &id)?,
        arrivals,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::model::tests::{approval, person};

    #[test]
    fn an_approval_survives_the_trip_through_the_resource() {
        let mut a = approval(2, false, Some(600));
        a.arguments = Some(serde_json::json!({"model": "m-7", "replicas": 3}));
        a.session_id = Some("s-1".into());
        a.ask(&person("lea", &["leads"]), "which model?", 200)
            .unwrap();
        a.answer(&person("ada", &[]), "m-7", 201).unwrap();
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 202)
            .unwrap();
        a.decide(&person("max", &["leads"]), Verdict::Approve, "ok", 203)
            .unwrap();
        a.consume(&a.binding.clone(), Some("release-1"), 204)
            .unwrap();
        let resource = to_resource(&a).unwrap();
        assert_eq!(
            resource.status.as_ref().map(|s| s.phase),
            Some(Phase::Approved)
        );
        assert_eq!(from_resource(&resource, "t").unwrap(), a);
    }

    #[test]
    fn what_carries_no_time_yet_arrives_to_be_judged() {
        let mut resource = to_resource(&approval(1, false, None)).unwrap();
        let lea = Actor {
            user: "lea@contoso.com".into(),
            uid: "lea".into(),
            tenant: String::new(),
            groups: vec!["leads".into()],
        };
        let status = resource.status.as_mut().unwrap();
        status.decisions.push(crd::Decision {
            by: lea.clone(),
            verdict: crd::Verdict::Approve,
            reason: "checked".into(),
            time: None,
            via: crd::Via::Kubectl,
        });
        let mut a = from_resource(&resource, "t").unwrap();
        assert!(a.decisions.is_empty());
        assert_eq!(a.arrivals.len(), 1);
        a.take_in(300);
        let written = to_resource(&a).unwrap().status.unwrap();
        assert_eq!(written.phase, Phase::Approved);
        assert_eq!(
            written.decisions[0].by,
            Actor {
                tenant: "t".into(),
                ..lea
            }
        );
        assert_eq!(written.decisions[0].via, crd::Via::Kubectl);
        assert_eq!(
            written.decisions[0].time.as_deref(),
            Some(rfc3339(300).as_str())
        );
    }

    #[test]
    fn an_unreadable_resource_names_the_field() {
        let mut resource = to_resource(&approval(1, false, None)).unwrap();
        resource.spec.expires_at = "tomorrow".into();
        let error = from_resource(&resource, "t").unwrap_err().to_string();
        assert!(
            error.contains("ar-1") && error.contains("expiresAt"),
            "{error}"
        );
    }

    #[test]
    fn only_object_names_reach_the_api() {
        assert!(valid_name("ar-0123abcd"));
        for bad in ["", "ar-1/status", "../ar-1", "AR-1", "-ar", "ar-", "ar 1"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
