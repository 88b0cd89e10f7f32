//! Holding a call for approval: what the gateway does with each answer of the
//! approval service. Anything but a clear answer fails closed.
//!
//! Ask → (approved: release) | (waiting: long-poll until the hold deadline)
//! → approved: spend the grant (`consume`) and only then forward the call;
//! denied / expired / spent: refuse; still waiting at the deadline: refuse,
//! naming the request so the caller can retry once it is approved.
//!
//! A long-poll or a release nobody answered (a replica died under it) is
//! sent again, a few times: a release carries the gateway's key for it, so
//! the service answers a release it already made as before, and spends the
//! grant once whichever attempt reached it.

use super::reply::{Refusal, codes};
use crate::model::Action;
use serde_json::Value;

/// Where a hold stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Asking,
    /// Long-polling; `failures` counts long-polls in a row that got no answer.
    Waiting {
        id: String,
        failures: u32,
    },
    /// Spending the grant; `failures` counts releases in a row that got no answer.
    Releasing {
        id: String,
        failures: u32,
    },
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Long-poll the request for up to `wait` seconds; `failures` long-polls
    /// in a row have gone unanswered so far.
    Poll {
        id: String,
        wait: u64,
        failures: u32,
    },
    /// Spend the grant; `failures` releases in a row have gone unanswered so far.
    Consume {
        id: String,
        failures: u32,
    },
    /// Forward the held call upstream, byte for byte.
    Release {
        id: String,
    },
    Refuse(Refusal),
}

/// Longest single long-poll; a hold is a series of these up to its deadline.
pub const POLL_SECONDS: u64 = 20;

/// Unanswered long-polls, or releases, in a row a hold rides out: the
/// request is durable in the service's store and any replica answers for
/// it, so a replica that dies under a call costs a retry, not the call.
/// Only a release (never a refusal turned into a pass) follows a clear
/// `approved`.
pub const UNANSWERED_RETRIES: u32 = 3;

fn refusal(code: i64, reason: String, rule: Option<&str>, approval: Option<&str>) -> Refusal {
    Refusal {
        code,
        reason,
        decision: Action::RequireApproval.to_string(),
        rule: rule.map(str::to_string),
        approval: approval.map(str::to_string),
    }
}

fn unavailable(detail: &str, rule: Option<&str>, approval: Option<&str>) -> Next {
    Next::Refuse(refusal(
        codes::APPROVAL_UNAVAILABLE,
        format!(
            "This call needs approval, and the approval service is unavailable ({detail}), so Airlock refused it."
        ),
        rule,
        approval,
    ))
}

fn denial_reason(view: &Value) -> String {
    let decisions = view.get("decisions").and_then(Value::as_array);
    decisions
        .and_then(|d| {
            d.iter()
                .find(|d| d.get("verdict").and_then(Value::as_str) == Some("deny"))
        })
        .map(|d| {
            let who = d
                .pointer("/approver/name")
                .and_then(Value::as_str)
                .unwrap_or("an approver");
            let why = d.get("reason").and_then(Value::as_str).unwrap_or_default();
            if why.is_empty() {
                format!("{who} denied it")
            } else {
                format!("{who} denied it: {why}")
            }
        })
        .unwrap_or_else(|| "it was denied".into())
}

/// The next step after the approval service answered `status` with `body`
/// (`None`: no answer at all). `remaining` is what is left of the hold, in seconds.
pub fn on_answer(
    stage: &Stage,
    status: Option<u16>,
    body: &[u8],
    remaining: u64,
    rule: Option<&str>,
) -> Next {
    let answered = status.is_some_and(|s| s < 500);
    if !answered && remaining > 0 {
        match stage {
            Stage::Waiting { id, failures } if *failures < UNANSWERED_RETRIES => {
                return Next::Poll {
                    id: id.clone(),
                    wait: remaining.min(POLL_SECONDS),
                    failures: failures + 1,
                };
            }
            Stage::Releasing { id, failures } if *failures < UNANSWERED_RETRIES => {
                return Next::Consume {
                    id: id.clone(),
                    failures: failures + 1,
                };
            }
            _ => {}
        }
    }
    let Some(status) = status else {
        return unavailable("no answer", rule, None);
    };
    let view: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = view
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("refused");
    let known_id = match stage {
        Stage::Asking => None,
        Stage::Waiting { id, .. } | Stage::Releasing { id, .. } => Some(id.as_str()),
    };
    match (stage, status) {
        (Stage::Asking, 403) => {
            return Next::Refuse(refusal(
                codes::DENIED,
                format!("Airlock denied this call: {message}"),
                rule,
                None,
            ));
        }
        (Stage::Asking, 429) => {
            return Next::Refuse(refusal(
                codes::APPROVAL_PENDING,
                format!("Airlock did not ask for approval: {message}"),
                rule,
                None,
            ));
        }
        // 403: the caller was cut off (revoked) since the call was held.
        (Stage::Releasing { id, .. }, 403 | 409) => {
            return Next::Refuse(refusal(
                codes::APPROVAL_REFUSED,
                format!("Approval {id} cannot release this call: {message}"),
                rule,
                Some(id),
            ));
        }
        (_, 200 | 201) => {}
        (_, status) => return unavailable(&format!("HTTP {status}: {message}"), rule, known_id),
    }
    let (Some(id), Some(state)) = (
        view.get("id").and_then(Value::as_str),
        view.get("state").and_then(Value::as_str),
    ) else {
        return unavailable("an unreadable answer", rule, known_id);
    };
    if known_id.is_some_and(|known| known != id) {
        return unavailable("an answer about another request", rule, known_id);
    }
    let id = id.to_string();
    match (stage, state) {
        (Stage::Releasing { .. }, "approved" | "executed") => Next::Release { id },
        (Stage::Releasing { .. }, _) => {
            unavailable("an unexpected release answer", rule, Some(&id))
        }
        (_, "approved") => Next::Consume { id, failures: 0 },
        (_, "pending" | "info_requested") if remaining > 0 => Next::Poll {
            wait: remaining.min(POLL_SECONDS),
            id,
            failures: 0,
        },
        (_, "pending" | "info_requested") => Next::Refuse(refusal(
            codes::APPROVAL_PENDING,
            format!(
                "This call is waiting for human approval (request {id}). It was not run. \
                 Once it is approved, send the same call again and it will go through."
            ),
            rule,
            Some(&id),
        )),
        (_, "denied") => Next::Refuse(refusal(
            codes::APPROVAL_REFUSED,
            format!(
                "Approval request {id} was denied: {}. The call was not run.",
                denial_reason(&view)
            ),
            rule,
            Some(&id),
        )),
        (_, "expired") => Next::Refuse(refusal(
            codes::APPROVAL_REFUSED,
            format!(
                "Approval request {id} expired before anyone approved it. The call was not run."
            ),
            rule,
            Some(&id),
        )),
        (_, other) => Next::Refuse(refusal(
            codes::APPROVAL_REFUSED,
            format!("Approval request {id} is {other}; it cannot release this call."),
            rule,
            Some(&id),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(stage: &Stage, status: u16, body: Value, remaining: u64) -> Next {
        on_answer(
            stage,
            Some(status),
            body.to_string().as_bytes(),
            remaining,
            Some("ns/p/r"),
        )
    }

    fn releasing(failures: u32) -> Stage {
        Stage::Releasing {
            id: "ar-1".into(),
            failures,
        }
    }

    fn refused_code(next: Next) -> i64 {
        match next {
            Next::Refuse(r) => r.code,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_happy_path() {
        let waiting = Stage::Waiting {
            id: "ar-1".into(),
            failures: 0,
        };
        assert_eq!(
            answer(
                &Stage::Asking,
                201,
                json!({"id": "ar-1", "state": "pending"}),
                50
            ),
            Next::Poll {
                id: "ar-1".into(),
                wait: 20,
                failures: 0
            }
        );
        assert_eq!(
            answer(&waiting, 200, json!({"id": "ar-1", "state": "pending"}), 7),
            Next::Poll {
                id: "ar-1".into(),
                wait: 7,
                failures: 0
            }
        );
        assert_eq!(
            answer(&waiting, 200, json!({"id": "ar-1", "state": "approved"}), 7),
            Next::Consume {
                id: "ar-1".into(),
                failures: 0
            }
        );
        assert_eq!(
            answer(
                &releasing(0),
                200,
                json!({"id": "ar-1", "state": "executed"}),
                7
            ),
            Next::Release { id: "ar-1".into() }
        );
        // A retry after approval: the ask finds the grant.
        assert_eq!(
            answer(
                &Stage::Asking,
                200,
                json!({"id": "ar-1", "state": "approved"}),
                50
            ),
            Next::Consume {
                id: "ar-1".into(),
                failures: 0
            }
        );
    }

    #[test]
    fn a_long_poll_nobody_answers_is_retried_a_few_times_then_refused() {
        let mut stage = Stage::Waiting {
            id: "ar-1".into(),
            failures: 0,
        };
        for failed in 1..=UNANSWERED_RETRIES {
            // A replica that died mid-poll: no answer, or a 503 from the proxy.
            let status = if failed % 2 == 0 { Some(503) } else { None };
            let next = on_answer(&stage, status, b"", 30, None);
            assert_eq!(
                next,
                Next::Poll {
                    id: "ar-1".into(),
                    wait: 20,
                    failures: failed
                }
            );
            stage = Stage::Waiting {
                id: "ar-1".into(),
                failures: failed,
            };
        }
        assert_eq!(
            refused_code(on_answer(&stage, None, b"", 30, None)),
            codes::APPROVAL_UNAVAILABLE
        );
        // Out of time: no retry.
        let fresh = Stage::Waiting {
            id: "ar-1".into(),
            failures: 0,
        };
        assert_eq!(
            refused_code(on_answer(&fresh, None, b"", 0, None)),
            codes::APPROVAL_UNAVAILABLE
        );
        // An answer that is not a failure of the service is judged as before.
        assert_eq!(
            refused_code(answer(
                &fresh,
                404,
                json!({"message": "no such approval"}),
                30
            )),
            codes::APPROVAL_UNAVAILABLE
        );
    }

    #[test]
    fn a_release_nobody_answers_is_sent_again_a_few_times_then_refused() {
        for failed in 1..=UNANSWERED_RETRIES {
            let status = if failed % 2 == 0 { Some(503) } else { None };
            assert_eq!(
                on_answer(&releasing(failed - 1), status, b"", 30, None),
                Next::Consume {
                    id: "ar-1".into(),
                    failures: failed
                }
            );
        }
        assert_eq!(
            refused_code(on_answer(
                &releasing(UNANSWERED_RETRIES),
                None,
                b"",
                30,
                None
            )),
            codes::APPROVAL_UNAVAILABLE
        );
        assert_eq!(
            refused_code(on_answer(&releasing(0), None, b"", 0, None)),
            codes::APPROVAL_UNAVAILABLE
        );
        // The answer to a release sent again is judged like the first.
        assert_eq!(
            answer(
                &releasing(2),
                200,
                json!({"id": "ar-1", "state": "executed"}),
                7
            ),
            Next::Release { id: "ar-1".into() }
        );
        assert_eq!(
            refused_code(answer(&releasing(2), 409, json!({"message": "spent"}), 7)),
            codes::APPROVAL_REFUSED
        );
    }

    #[test]
    fn everything_else_refuses() {
        let waiting = Stage::Waiting {
            id: "ar-1".into(),
            failures: 0,
        };
        let denied = answer(
            &waiting,
            200,
            json!({"id": "ar-1", "state": "denied",
            "decisions": [{"approver": {"name": "lea"}, "verdict": "deny", "reason": "not now"}]}),
            7,
        );
        match &denied {
            Next::Refuse(r) => {
                assert_eq!(r.code, codes::APPROVAL_REFUSED);
                assert!(r.reason.contains("lea denied it: not now"), "{}", r.reason);
                assert_eq!(r.approval.as_deref(), Some("ar-1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused_code(answer(
                &waiting,
                200,
                json!({"id": "ar-1", "state": "expired"}),
                7
            )),
            codes::APPROVAL_REFUSED
        );
        let pending = answer(&waiting, 200, json!({"id": "ar-1", "state": "pending"}), 0);
        match pending {
            Next::Refuse(r) => {
                assert_eq!(r.code, codes::APPROVAL_PENDING);
                assert!(r.reason.contains("ar-1") && r.reason.contains("send the same call again"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused_code(on_answer(&Stage::Asking, None, b"", 50, None)),
            codes::APPROVAL_UNAVAILABLE
        );
        assert_eq!(
            refused_code(answer(&Stage::Asking, 500, json!({}), 50)),
            codes::APPROVAL_UNAVAILABLE
        );
        assert_eq!(
            refused_code(answer(&Stage::Asking, 200, json!("garbage"), 50)),
            codes::APPROVAL_UNAVAILABLE
        );
        assert_eq!(
            refused_code(answer(
                &Stage::Asking,
                403,
                json!({"message": "policy denies"}),
                50
            )),
            codes::DENIED
        );
        assert_eq!(
            refused_code(answer(
                &Stage::Asking,
                429,
                json!({"message": "too many"}),
                50
            )),
            codes::APPROVAL_PENDING
        );
        assert_eq!(
            refused_code(answer(
                &waiting,
                200,
                json!({"id": "ar-2", "state": "approved"}),
                7
            )),
            codes::APPROVAL_UNAVAILABLE
        );
        let spent = answer(&releasing(0), 409, json!({"message": "executed"}), 7);
        assert_eq!(refused_code(spent), codes::APPROVAL_REFUSED);
        let revoked = answer(
            &releasing(0),
            403,
            json!({"message": "access revoked by ml/r: laptop stolen"}),
            7,
        );
        match revoked {
            Next::Refuse(refusal) => {
                assert_eq!(refusal.code, codes::APPROVAL_REFUSED);
                assert!(
                    refusal.reason.contains("laptop stolen"),
                    "{}",
                    refusal.reason
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
