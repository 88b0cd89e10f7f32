//! One approval's life, as plain data and transitions (no I/O).
//!
//! Rules enforced here, whatever store or API sits around them: only eligible
//! approvers decide; no self-approval unless the rule allows it; one deny
//! denies; approval needs every requirement's quorum of distinct approvers;
//! decided requests are final; expiry is computed here, not trusted from a
//! display; a grant is bound to who asked for exactly what, and spent once
//! (or within its window).

use airlock_policy::entra::{Principal, home_upn};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Where an approval stands. `Pending` and `InfoRequested` wait for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    InfoRequested,
    Approved,
    Denied,
    Expired,
    Executed,
    Cancelled,
}

impl State {
    pub fn waiting(self) -> bool {
        matches!(self, State::Pending | State::InfoRequested)
    }
}

/// What a grant is bound to: the caller, the client app and the exact call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub tid: String,
    pub oid: String,
    pub app_id: String,
    pub server: String,
    pub method: String,
    pub target: Option<String>,
    /// Digest of the canonical params without `_meta`.
    pub digest: String,
}

impl Binding {
    /// A stable key for finding identical asks.
    pub fn key(&self) -> String {
        airlock_policy::canonical::sha256_hex(
            serde_json::to_string(self).unwrap_or_default().as_bytes(),
        )
    }
}

/// One rule's demand: who may approve, how many, what the approval grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// `policy/rule`.
    pub rule: String,
    pub policy_version: String,
    pub approver_groups: Vec<String>,
    pub approver_users: Vec<String>,
    pub min_approvals: u32,
    pub allow_self_approval: bool,
}

impl Requirement {
    fn eligible(&self, approver: &Person) -> bool {
        self.approver_users.contains(&approver.oid)
            || approver
                .groups
                .iter()
                .any(|g| self.approver_groups.contains(g))
    }
}

/// Who someone is, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub tid: String,
    pub oid: String,
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Person {
    /// The same person: one account (tenant and object ID), or the same
    /// home UPN — a B2B guest's account in another tenant is another
    /// object ID but still the person who asked.
    pub fn same_person(&self, other: &Person) -> bool {
        (self.tid == other.tid && self.oid == other.oid)
            || home_upn(&self.name).is_some_and(|upn| home_upn(&other.name) == Some(upn))
    }
}

impl From<&Principal> for Person {
    fn from(p: &Principal) -> Person {
        Person {
            tid: p.tenant_id.clone(),
            oid: p.object_id.clone(),
            name: p.display_name.clone(),
            groups: p.groups.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
}

/// Which path a person acted through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The approval service's people's API, with an Entra token it verified.
    #[default]
    Service,
    /// The ApprovalRequest's status, written through the API server, whose
    /// admission policies vouched for who wrote it.
    Kubectl,
}

impl Verdict {
    /// As metrics and people read it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

impl Via {
    /// As the trail and the ApprovalRequest spell it.
    pub fn label(self) -> &'static str {
        match self {
            Via::Service => "service",
            Via::Kubectl => "kubectl",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub approver: Person,
    pub verdict: Verdict,
    pub reason: String,
    pub at: u64,
    #[serde(default)]
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remark {
    pub by: Person,
    pub message: String,
    pub at: u64,
    #[serde(default)]
    pub via: Via,
}

/// What an approver wrote into the record through the API server, which the
/// service has not judged yet: admission vouched for who wrote it, the
/// service's model decides whether it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    pub by: Person,
    pub act: Act,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Act {
    Decide { verdict: Verdict, reason: String },
    Ask { question: String },
}

/// An approval request and everything that happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: String,
    pub binding: Binding,
    pub requester: Person,
    pub requirements: Vec<Requirement>,
    /// One line for people.
    pub summary: String,
    /// Arguments as the policy allows them to be recorded.
    pub arguments: Option<Value>,
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    /// Seconds an approval lets identical calls through; `None` means once.
    pub grant_window: Option<u64>,
    pub state: State,
    pub created_at: u64,
    pub expires_at: u64,
    pub decisions: Vec<Decision>,
    pub conversation: Vec<Remark>,
    pub approved_at: Option<u64>,
    pub releases: u32,
    /// The key the gateway gave the last release, so that the same release
    /// asked again (its answer lost on the way back) is answered as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release: Option<String>,
    /// Bumped on every change; stores compare-and-set on it.
    pub version: u64,
    /// Written through the API server and not yet judged, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrivals: Vec<Arrival>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApprovalError {
    #[error("approval {id} is {state:?} and can no longer change")]
    Final { id: String, state: State },
    #[error("approval {0} has expired")]
    Expired(String),
    #[error("you are not an approver for this request")]
    NotAnApprover,
    #[error("you asked for this call, and the rule does not allow self-approval")]
    SelfApproval,
    #[error("you have already decided on this request")]
    AlreadyDecided,
    #[error("only the requester can answer")]
    NotTheRequester,
    #[error("no question is waiting for an answer")]
    NoQuestion,
    #[error("this approval does not cover this call (different caller, app or arguments)")]
    WrongCall,
    #[error("approval {id} is {state:?}: nothing to release")]
    NotApproved { id: String, state: State },
}

impl Approval {
    /// The state at `now`: waiting past `expires_at` is expired, a window
    /// grant past its window is spent.
    pub fn state_at(&self, now: u64) -> State {
        match self.state {
            s if s.waiting() && now >= self.expires_at => State::Expired,
            State::Approved => match (self.grant_window, self.approved_at) {
                (Some(window), Some(at)) if now >= at.saturating_add(window) => {
                    if self.releases > 0 {
                        State::Executed
                    } else {
                        State::Expired
                    }
                }
                _ => State::Approved,
            },
            s => s,
        }
    }

    /// Brings the stored state up to date; true if it changed.
    pub fn settle(&mut self, now: u64) -> bool {
        let state = self.state_at(now);
        let changed = state != self.state;
        self.state = state;
        changed
    }

    fn open(&mut self, now: u64) -> Result<(), ApprovalError> {
        self.settle(now);
        match self.state {
            s if s.waiting() => Ok(()),
            State::Expired => Err(ApprovalError::Expired(self.id.clone())),
            state => Err(ApprovalError::Final {
                id: self.id.clone(),
                state,
            }),
        }
    }

    fn is_requester(&self, who: &Person) -> bool {
        who.same_person(&self.requester)
    }

    /// The rules `person` is an approver of (their groups or users).
    pub fn requirements_for(&self, person: &Person) -> Vec<Requirement> {
        self.requirements
            .iter()
            .filter(|r| r.eligible(person))
            .cloned()
            .collect()
    }

    /// The requirements `approver` may decide for; refuses ineligible and self approvals.
    fn decidable(&self, approver: &Person) -> Result<Vec<usize>, ApprovalError> {
        let eligible: Vec<usize> = self
            .requirements
            .iter()
            .enumerate()
            .filter(|(_, r)| r.eligible(approver))
            .map(|(i, _)| i)
            .collect();
        if eligible.is_empty() {
            return Err(ApprovalError::NotAnApprover);
        }
        let allowed: Vec<usize> = eligible
            .into_iter()
            .filter(|i| !self.is_requester(approver) || self.requirements[*i].allow_self_approval)
            .collect();
        if allowed.is_empty() {
            return Err(ApprovalError::SelfApproval);
        }
        Ok(allowed)
    }

    /// Records a decision. One deny denies; approval completes when every
    /// requirement has its quorum of distinct eligible approvers.
    pub fn decide(
        &mut self,
        approver: &Principal,
        verdict: Verdict,
        reason: &str,
        now: u64,
    ) -> Result<(), ApprovalError> {
        self.decide_as(&approver.into(), verdict, reason, Via::Service, now)
    }

    fn decide_as(
        &mut self,
        approver: &Person,
        verdict: Verdict,
        reason: &str,
        via: Via,
        now: u64,
    ) -> Result<(), ApprovalError> {
        self.open(now)?;
        self.decidable(approver)?;
        if self
            .decisions
            .iter()
            .any(|d| d.approver.same_person(approver))
        {
            return Err(ApprovalError::AlreadyDecided);
        }
        self.decisions.push(Decision {
            approver: approver.clone(),
            verdict,
            reason: reason.to_string(),
            at: now,
            via,
        });
        if verdict == Verdict::Deny {
            self.state = State::Denied;
        } else if self.requirements.iter().all(|r| self.quorum(r)) {
            self.state = State::Approved;
            self.approved_at = Some(now);
        }
        self.version += 1;
        Ok(())
    }

    fn quorum(&self, requirement: &Requirement) -> bool {
        self.eligible_approvals(requirement) >= requirement.min_approvals as usize
    }

    /// Distinct approvals that count toward `requirement`.
    fn eligible_approvals(&self, requirement: &Requirement) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Approve)
            .filter(|d| {
                let groups_match = d
                    .approver
                    .groups
                    .iter()
                    .any(|g| requirement.approver_groups.contains(g));
                let self_ok =
                    requirement.allow_self_approval || !d.approver.same_person(&self.requester);
                (groups_match || requirement.approver_users.contains(&d.approver.oid)) && self_ok
            })
            .count()
    }

    /// Approvals still missing, over every requirement; none once decided.
    pub fn approvals_needed(&self) -> u64 {
        if !self.state.waiting() {
            return 0;
        }
        self.requirements
            .iter()
            .map(|r| (r.min_approvals as usize).saturating_sub(self.eligible_approvals(r)) as u64)
            .sum()
    }

    /// An approver asks the requester for more context.
    pub fn ask(
        &mut self,
        approver: &Principal,
        question: &str,
        now: u64,
    ) -> Result<(), ApprovalError> {
        self.ask_as(&approver.into(), question, Via::Service, now)
    }

    fn ask_as(
        &mut self,
        approver: &Person,
        question: &str,
        via: Via,
        now: u64,
    ) -> Result<(), ApprovalError> {
        self.open(now)?;
        self.decidable(approver)?;
        self.conversation.push(Remark {
            by: approver.clone(),
            message: question.to_string(),
            at: now,
            via,
        });
        self.state = State::InfoRequested;
        self.version += 1;
        Ok(())
    }

    /// The requester answers a question; the request waits for decisions again.
    pub fn answer(
        &mut self,
        requester: &Principal,
        text: &str,
        now: u64,
    ) -> Result<(), ApprovalError> {
        self.open(now)?;
        let requester = Person::from(requester);
        if !self.is_requester(&requester) {
            return Err(ApprovalError::NotTheRequester);
        }
        if self.state != State::InfoRequested {
            return Err(ApprovalError::NoQuestion);
        }
        self.conversation.push(Remark {
            by: requester,
            message: text.to_string(),
            at: now,
            via: Via::Service,
        });
        self.state = State::Pending;
        self.version += 1;
        Ok(())
    }

    /// Judges what arrived through the API server, in order, by the same
    /// rules and the service's clock as the people's API: each either counts
    /// (and is recorded at `now`) or is refused and dropped from the record,
    /// with the reason. The arrivals are gone afterwards.
    pub fn take_in(&mut self, now: u64) -> Vec<(Arrival, Result<(), ApprovalError>)> {
        std::mem::take(&mut self.arrivals)
            .into_iter()
            .map(|arrival| {
                let judged = match &arrival.act {
                    Act::Decide { verdict, reason } => {
                        self.decide_as(&arrival.by, *verdict, reason, Via::Kubectl, now)
                    }
                    Act::Ask { question } => self.ask_as(&arrival.by, question, Via::Kubectl, now),
                };
                (arrival, judged)
            })
            .collect()
    }

    /// The caller went away while its call was held: no decision may
    /// follow, and no retry finds this request.
    pub fn cancel(&mut self, now: u64) -> Result<(), ApprovalError> {
        self.open(now)?;
        self.state = State::Cancelled;
        self.version += 1;
        Ok(())
    }

    /// Spends the grant for one release of `binding`'s call, which the
    /// gateway named `key`. The release of `key` asked again changes nothing
    /// and succeeds: the gateway lost the first answer, and the grant it
    /// spent then is the one this call goes through on.
    pub fn consume(
        &mut self,
        binding: &Binding,
        key: Option<&str>,
        now: u64,
    ) -> Result<(), ApprovalError> {
        if key.is_some() && key == self.last_release.as_deref() {
            return match *binding == self.binding {
                true => Ok(()),
                false => Err(ApprovalError::WrongCall),
            };
        }
        self.settle(now);
        if self.state != State::Approved {
            return Err(ApprovalError::NotApproved {
                id: self.id.clone(),
                state: self.state,
            });
        }
        if *binding != self.binding {
            return Err(ApprovalError::WrongCall);
        }
        self.releases += 1;
        self.last_release = key.map(str::to_string);
        if self.grant_window.is_none() {
            self.state = State::Executed;
        }
        self.version += 1;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use airlock_policy::entra::TokenVersion;

    pub(crate) fn person(oid: &str, groups: &[&str]) -> Principal {
        Principal {
            tenant_id: "t".into(),
            object_id: oid.into(),
            display_name: format!("{oid}@contoso.com"),
            app_id: "app".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            roles: vec![],
            scopes: vec![],
            app_only: false,
            version: TokenVersion::V2,
            expires_at: 0,
        }
    }

    pub(crate) fn binding() -> Binding {
        Binding {
            tid: "t".into(),
            oid: "ada".into(),
            app_id: "app".into(),
            server: "ml/model-server".into(),
            method: "tools/call".into(),
            target: Some("deploy_model".into()),
            digest: "sha256:aa".into(),
        }
    }

    pub(crate) fn approval(min: u32, allow_self: bool, window: Option<u64>) -> Approval {
        Approval {
            id: "ar-1".into(),
            binding: binding(),
            requester: (&person("ada", &["eng"])).into(),
            requirements: vec![Requirement {
                rule: "ml/ops/deploy".into(),
                policy_version: "1".into(),
                approver_groups: vec!["leads".into()],
                approver_users: vec![],
                min_approvals: min,
                allow_self_approval: allow_self,
            }],
            summary: "ada wants to deploy_model".into(),
            arguments: None,
            session_id: None,
            protocol_version: None,
            grant_window: window,
            state: State::Pending,
            created_at: 100,
            expires_at: 1000,
            decisions: vec![],
            conversation: vec![],
            approved_at: None,
            releases: 0,
            last_release: None,
            version: 0,
            arrivals: vec![],
        }
    }

    #[test]
    fn quorum_of_distinct_eligible_approvers() {
        let mut a = approval(2, false, None);
        assert_eq!(a.approvals_needed(), 2);
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 200)
            .unwrap();
        assert_eq!(a.state, State::Pending);
        assert_eq!(a.approvals_needed(), 1);
        assert_eq!(
            a.decide(&person("lea", &["leads"]), Verdict::Approve, "again", 201),
            Err(ApprovalError::AlreadyDecided)
        );
        assert_eq!(
            a.decide(&person("eve", &["eng"]), Verdict::Approve, "me too", 202),
            Err(ApprovalError::NotAnApprover)
        );
        a.decide(&person("max", &["leads"]), Verdict::Approve, "ok", 203)
            .unwrap();
        assert_eq!(a.state, State::Approved);
        assert_eq!(a.approvals_needed(), 0);
        assert_eq!(a.version, 2);
        assert!(matches!(
            a.decide(&person("kim", &["leads"]), Verdict::Deny, "late", 204),
            Err(ApprovalError::Final {
                state: State::Approved,
                ..
            })
        ));
    }

    #[test]
    fn one_deny_denies_and_is_final() {
        let mut a = approval(2, false, None);
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 200)
            .unwrap();
        a.decide(&person("max", &["leads"]), Verdict::Deny, "not today", 201)
            .unwrap();
        assert_eq!(a.state, State::Denied);
        assert!(a.consume(&binding(), None, 202).is_err());
    }

    #[test]
    fn no_self_approval_unless_allowed() {
        let ada_lead = person("ada", &["eng", "leads"]);
        let mut a = approval(1, false, None);
        assert_eq!(
            a.decide(&ada_lead, Verdict::Approve, "mine", 200),
            Err(ApprovalError::SelfApproval)
        );
        let mut allowed = approval(1, true, None);
        allowed
            .decide(&ada_lead, Verdict::Approve, "mine", 200)
            .unwrap();
        assert_eq!(allowed.state, State::Approved);
    }

    #[test]
    fn one_person_counts_once_whichever_account_they_use() {
        let mut a = approval(2, false, None);
        let mut guest = person("ada-guest", &["leads"]);
        guest.tenant_id = "fabrikam".into();
        guest.display_name = "ADA_contoso.com#EXT#@fabrikam.onmicrosoft.com".into();
        assert_eq!(
            a.decide(&guest, Verdict::Approve, "mine, as a guest", 200),
            Err(ApprovalError::SelfApproval)
        );
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 201)
            .unwrap();
        let mut lea_guest = person("lea-guest", &["leads"]);
        lea_guest.tenant_id = "fabrikam".into();
        lea_guest.display_name = "lea_contoso.com#EXT#@fabrikam.onmicrosoft.com".into();
        assert_eq!(
            a.decide(&lea_guest, Verdict::Approve, "again", 202),
            Err(ApprovalError::AlreadyDecided)
        );
        assert_eq!(a.approvals_needed(), 1);
    }

    #[test]
    fn every_requirement_must_be_met() {
        let mut a = approval(1, false, None);
        a.requirements.push(Requirement {
            rule: "sec/p/r".into(),
            policy_version: "3".into(),
            approver_groups: vec!["security".into()],
            approver_users: vec![],
            min_approvals: 1,
            allow_self_approval: false,
        });
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 200)
            .unwrap();
        assert_eq!(a.state, State::Pending);
        a.decide(&person("sam", &["security"]), Verdict::Approve, "ok", 201)
            .unwrap();
        assert_eq!(a.state, State::Approved);
    }

    #[test]
    fn expiry_is_enforced() {
        let mut a = approval(1, false, None);
        assert_eq!(a.state_at(999), State::Pending);
        assert_eq!(a.state_at(1000), State::Expired);
        assert_eq!(
            a.decide(&person("lea", &["leads"]), Verdict::Approve, "late", 1000),
            Err(ApprovalError::Expired("ar-1".into()))
        );
    }

    #[test]
    fn a_once_grant_releases_exactly_one_matching_call() {
        let mut a = approval(1, false, None);
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 200)
            .unwrap();
        let mut other = binding();
        other.digest = "sha256:bb".into();
        assert_eq!(a.consume(&other, None, 201), Err(ApprovalError::WrongCall));
        let mut someone_else = binding();
        someone_else.oid = "eve".into();
        assert_eq!(
            a.consume(&someone_else, None, 201),
            Err(ApprovalError::WrongCall)
        );
        a.consume(&binding(), None, 202).unwrap();
        assert_eq!(a.state, State::Executed);
        assert!(matches!(
            a.consume(&binding(), None, 203),
            Err(ApprovalError::NotApproved { .. })
        ));
    }

    #[test]
    fn a_cancelled_request_takes_no_decision_and_releases_nothing() {
        let mut a = approval(1, false, None);
        a.cancel(150).unwrap();
        assert_eq!(a.state, State::Cancelled);
        assert!(matches!(
            a.decide(&person("lea", &["leads"]), Verdict::Approve, "late", 160),
            Err(ApprovalError::Final { .. })
        ));
        assert!(a.consume(&binding(), Some("k"), 160).is_err());
        // Only a waiting request is cancelled: a decided one stays decided.
        let mut decided = approval(1, false, None);
        decided
            .decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 150)
            .unwrap();
        assert!(decided.cancel(160).is_err());
        assert_eq!(decided.state, State::Approved);
    }

    #[test]
    fn a_release_asked_again_is_answered_again_and_spends_nothing() {
        let mut a = approval(1, false, None);
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 200)
            .unwrap();
        a.consume(&binding(), Some("k1"), 201).unwrap();
        let spent = a.clone();
        // The gateway lost the answer and asks again for the same release.
        a.consume(&binding(), Some("k1"), 202).unwrap();
        assert_eq!(a, spent, "nothing changed");
        // Another call presenting the same approval is refused, as is the
        // same key for another call or without a key.
        assert!(matches!(
            a.consume(&binding(), Some("k2"), 202),
            Err(ApprovalError::NotApproved { .. })
        ));
        let mut other = binding();
        other.digest = "sha256:bb".into();
        assert_eq!(
            a.consume(&other, Some("k1"), 202),
            Err(ApprovalError::WrongCall)
        );
        assert!(a.consume(&binding(), None, 202).is_err());
        assert_eq!(a.releases, 1);
    }

    #[test]
    fn a_window_grant_releases_until_the_window_ends() {
        let mut a = approval(1, false, Some(60));
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "ok", 200)
            .unwrap();
        a.consume(&binding(), None, 210).unwrap();
        a.consume(&binding(), None, 250).unwrap();
        assert_eq!(a.state, State::Approved);
        assert!(a.consume(&binding(), None, 260).is_err());
        assert_eq!(a.state, State::Executed);
    }

    fn arrival(oid: &str, groups: &[&str], act: Act) -> Arrival {
        Arrival {
            by: (&person(oid, groups)).into(),
            act,
        }
    }

    fn approve(reason: &str) -> Act {
        Act::Decide {
            verdict: Verdict::Approve,
            reason: reason.into(),
        }
    }

    #[test]
    fn what_arrives_through_the_api_server_is_judged_by_the_same_rules() {
        let mut a = approval(2, false, None);
        a.arrivals = vec![
            arrival("lea", &["leads"], approve("ok")),
            arrival("lea", &["leads"], approve("twice")),
            arrival("ada", &["leads"], approve("mine")),
            arrival("eve", &["eng"], approve("me too")),
            arrival(
                "max",
                &["leads"],
                Act::Ask {
                    question: "which model?".into(),
                },
            ),
        ];
        let judged: Vec<_> = a.take_in(300).into_iter().map(|(_, j)| j).collect();
        assert_eq!(
            judged,
            vec![
                Ok(()),
                Err(ApprovalError::AlreadyDecided),
                Err(ApprovalError::SelfApproval),
                Err(ApprovalError::NotAnApprover),
                Ok(()),
            ]
        );
        assert!(a.arrivals.is_empty());
        assert_eq!(a.decisions.len(), 1);
        assert_eq!((a.decisions[0].via, a.decisions[0].at), (Via::Kubectl, 300));
        assert_eq!(a.state, State::InfoRequested);
        assert_eq!(a.approvals_needed(), 1);

        a.arrivals = vec![arrival("max", &["leads"], approve("fine"))];
        a.take_in(301);
        assert_eq!(a.state, State::Approved);
        assert_eq!(a.approved_at, Some(301));
    }

    #[test]
    fn an_arrival_after_the_deadline_never_counts() {
        let mut a = approval(1, false, None);
        a.arrivals = vec![arrival("lea", &["leads"], approve("late"))];
        let judged = a.take_in(1000);
        assert_eq!(judged[0].1, Err(ApprovalError::Expired("ar-1".into())));
        assert!(a.decisions.is_empty());
        assert_eq!(a.state, State::Expired);
    }

    #[test]
    fn approvers_ask_and_requesters_answer() {
        let mut a = approval(1, false, None);
        assert_eq!(
            a.answer(&person("ada", &[]), "early", 150),
            Err(ApprovalError::NoQuestion)
        );
        a.ask(&person("lea", &["leads"]), "which model?", 200)
            .unwrap();
        assert_eq!(a.state, State::InfoRequested);
        assert_eq!(
            a.answer(&person("eve", &[]), "me", 201),
            Err(ApprovalError::NotTheRequester)
        );
        a.answer(&person("ada", &[]), "model-7, canary first", 202)
            .unwrap();
        assert_eq!(a.state, State::Pending);
        assert_eq!(a.conversation.len(), 2);
        a.decide(&person("lea", &["leads"]), Verdict::Approve, "fine", 203)
            .unwrap();
        assert_eq!(a.state, State::Approved);
    }
}
