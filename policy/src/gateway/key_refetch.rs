//! Key rotation without refusals: a token whose `kid` is not among its
//! tenant's published keys waits while the keys are refetched, then is
//! judged on the fresh set.
//!
//! An issuer may publish a key and sign with it at once. Refusing such a
//! token until the next scheduled refresh would turn every caller away for
//! minutes; refetching on every unknown `kid` would let anyone make the
//! gateway hammer the issuer with made-up ones. So refetches asked for by
//! unknown kids happen at most once per interval, tokens that arrive while
//! one is due or in flight wait for it (a bounded number, for a bounded
//! time), and a `kid` still unknown after it is refused with the reason.
//!
//! The state of one tenant's last refetch is shared by every VM of an Envoy
//! as a [`Refetch`] (in shared data, written with compare-and-set): streams
//! ask for one, the elected leader fetches and records that it is done.

use super::reply::{Reply, unauthorized};

/// The last refetch of a tenant's keys asked for by an unknown `kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// Asked for at this time (milliseconds since the epoch); not done yet.
    Asked { at_ms: u64 },
    /// Finished at `at_ms`: the keys were fetched (and published), or the
    /// fetch failed.
    Done { at_ms: u64, fetched: bool },
}

impl Refetch {
    /// The shared-data form: `asked:<ms>` or `done:<ms>:<fetched|failed>`.
    pub fn encode(&self) -> String {
        match self {
            Refetch::Asked { at_ms } => format!("asked:{at_ms}"),
            Refetch::Done { at_ms, fetched } => {
                format!(
                    "done:{at_ms}:{}",
                    if *fetched { "fetched" } else { "failed" }
                )
            }
        }
    }

    /// `None` for anything [`Refetch::encode`] does not write.
    pub fn decode(text: &str) -> Option<Refetch> {
        let mut parts = text.split(':');
        let refetch = match (parts.next()?, parts.next()?.parse().ok()?, parts.next()) {
            ("asked", at_ms, None) => Refetch::Asked { at_ms },
            ("done", at_ms, Some("fetched")) => Refetch::Done {
                at_ms,
                fetched: true,
            },
            ("done", at_ms, Some("failed")) => Refetch::Done {
                at_ms,
                fetched: false,
            },
            _ => return None,
        };
        parts.next().is_none().then_some(refetch)
    }

    /// Whether the leader still has to fetch: asked for and not done.
    pub fn pending(last: Option<Refetch>) -> bool {
        matches!(last, Some(Refetch::Asked { .. }))
    }

    /// Whether a fetch that began at `started_ms` answers this ask: it was
    /// asked for before the fetch began, so the fetch saw what the issuer
    /// published by then.
    pub fn answered_by(&self, started_ms: u64) -> bool {
        matches!(self, Refetch::Asked { at_ms } if *at_ms <= started_ms)
    }
}

/// How unknown kids are handled: the configuration's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefetchRules {
    /// Least time between two refetches asked for by unknown kids.
    pub interval_ms: u64,
    /// Longest a token waits for a refetch.
    pub wait_ms: u64,
}

/// What becomes of a token whose `kid` is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownKid {
    /// Wait for the refetch; `ask` says to record one (none is due or in
    /// flight yet), writing this [`Refetch`].
    Wait {
        ask: Option<Refetch>,
    },
    Refuse(KeyRefusal),
}

/// Why a token with an unknown `kid` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The keys were fetched (recently, or while the token waited) and the
    /// `kid` is not among them.
    NotPublished {
        tenant: String,
        kid: String,
        fetched_ago_ms: u64,
        next_refetch_in_ms: u64,
    },
    /// The last refetch failed: whether the key exists is unknown.
    RefetchFailed {
        tenant: String,
        kid: String,
        retry_in_ms: u64,
    },
    /// The refetch did not finish within the wait.
    TimedOut {
        tenant: String,
        kid: String,
        waited_ms: u64,
    },
    /// Too many calls already wait for refetched keys.
    TooManyWaiting { tenant: String, limit: usize },
}

fn seconds_up(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl KeyRefusal {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyRefusal::NotPublished { .. } => "unknown_key",
            KeyRefusal::RefetchFailed { .. } | KeyRefusal::TimedOut { .. } => "keys_unavailable",
            KeyRefusal::TooManyWaiting { .. } => "key_waiters_full",
        }
    }

    pub fn message(&self) -> String {
        match self {
            KeyRefusal::NotPublished {
                tenant,
                kid,
                fetched_ago_ms,
                next_refetch_in_ms,
            } => format!(
                "the token's signing key {kid:?} is not among tenant {tenant}'s published keys, \
                 fetched {} s ago; the next refetch is allowed in {} s",
                fetched_ago_ms / 1000,
                seconds_up(*next_refetch_in_ms)
            ),
            KeyRefusal::RefetchFailed {
                tenant,
                kid,
                retry_in_ms,
            } => format!(
                "the token's signing key {kid:?} is not among tenant {tenant}'s keys held here, \
                 and refetching them failed; retry in {} s",
                seconds_up(*retry_in_ms)
            ),
            KeyRefusal::TimedOut {
                tenant,
                kid,
                waited_ms,
            } => format!(
                "the token's signing key {kid:?} is not among tenant {tenant}'s keys held here, \
                 and refetching them took longer than {} s; retry shortly",
                seconds_up(*waited_ms)
            ),
            KeyRefusal::TooManyWaiting { tenant, limit } => format!(
                "{limit} calls already wait for tenant {tenant}'s signing keys to be refetched; \
                 retry shortly"
            ),
        }
    }

    /// A key that is not published is the token's fault (401); the others
    /// say nothing about the token, so the gateway is unavailable (503).
    pub fn reply(&self, resource_metadata: &str) -> Reply {
        let retry_after = |ms: u64| seconds_up(ms).max(1).to_string();
        match self {
            KeyRefusal::NotPublished { .. } => unauthorized(&self.message(), resource_metadata),
            KeyRefusal::RefetchFailed { retry_in_ms, .. } => {
                Reply::http_error(503, "keys_unavailable", &self.message())
                    .with_header("retry-after", retry_after(*retry_in_ms))
            }
            KeyRefusal::TimedOut { .. } | KeyRefusal::TooManyWaiting { .. } => {
                Reply::http_error(503, "keys_unavailable", &self.message())
                    .with_header("retry-after", "1".into())
            }
        }
    }
}

/// The refusal of a `kid` still unknown after a refetch done at `done_ms`.
fn after_refetch(
    rules: RefetchRules,
    done_ms: u64,
    fetched: bool,
    tenant: &str,
    kid: &str,
    now_ms: u64,
) -> KeyRefusal {
    let since = now_ms.saturating_sub(done_ms);
    let remaining = rules.interval_ms.saturating_sub(since);
    let (tenant, kid) = (tenant.to_string(), kid.to_string());
    if fetched {
        KeyRefusal::NotPublished {
            tenant,
            kid,
            fetched_ago_ms: since,
            next_refetch_in_ms: remaining,
        }
    } else {
        KeyRefusal::RefetchFailed {
            tenant,
            kid,
            retry_in_ms: remaining,
        }
    }
}

/// A token's `kid` is unknown at `now_ms`, and `last` is the tenant's last
/// refetch: wait for one, or refuse because one just happened.
pub fn on_unknown_kid(
    rules: RefetchRules,
    last: Option<Refetch>,
    tenant: &str,
    kid: &str,
    now_ms: u64,
) -> UnknownKid {
    let ask = Some(Refetch::Asked { at_ms: now_ms });
    match last {
        None => UnknownKid::Wait { ask },
        Some(Refetch::Asked { .. }) => UnknownKid::Wait { ask: None },
        Some(Refetch::Done { at_ms, fetched }) => {
            let since = now_ms.saturating_sub(at_ms);
            if since >= rules.interval_ms {
                return UnknownKid::Wait { ask };
            }
            UnknownKid::Refuse(after_refetch(rules, at_ms, fetched, tenant, kid, now_ms))
        }
    }
}

/// A waiting token's `kid` is still unknown at `now_ms` (the token began
/// waiting at `since_ms`): `None` to keep waiting, or the refusal.
pub fn after_waiting(
    rules: RefetchRules,
    last: Option<Refetch>,
    tenant: &str,
    kid: &str,
    since_ms: u64,
    now_ms: u64,
) -> Option<KeyRefusal> {
    match last {
        Some(Refetch::Done { at_ms, fetched }) => {
            Some(after_refetch(rules, at_ms, fetched, tenant, kid, now_ms))
        }
        // Asked for and not done, or the record is gone: wait out the wait.
        _ => {
            let waited = now_ms.saturating_sub(since_ms);
            (waited >= rules.wait_ms).then(|| KeyRefusal::TimedOut {
                tenant: tenant.into(),
                kid: kid.into(),
                waited_ms: waited,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: RefetchRules = RefetchRules {
        interval_ms: 30_000,
        wait_ms: 5_000,
    };

    fn unknown(last: Option<Refetch>, now_ms: u64) -> UnknownKid {
        on_unknown_kid(RULES, last, "t1", "k9", now_ms)
    }

    #[test]
    fn records_round_trip_and_anything_else_is_no_record() {
        for refetch in [
            Refetch::Asked { at_ms: 17 },
            Refetch::Done {
                at_ms: 18,
                fetched: true,
            },
            Refetch::Done {
                at_ms: 0,
                fetched: false,
            },
        ] {
            assert_eq!(Refetch::decode(&refetch.encode()), Some(refetch));
        }
        for garbage in [
            "",
            "asked",
            "asked:x",
            "asked:1:fetched",
            "done:1",
            "done:1:maybe",
            "done:1:fetched:2",
            "later:1",
        ] {
            assert_eq!(Refetch::decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn the_first_unknown_kid_asks_for_a_refetch_and_waits() {
        assert_eq!(
            unknown(None, 1_000),
            UnknownKid::Wait {
                ask: Some(Refetch::Asked { at_ms: 1_000 })
            }
        );
    }

    #[test]
    fn while_a_refetch_is_due_or_in_flight_more_tokens_wait_without_asking() {
        assert_eq!(
            unknown(Some(Refetch::Asked { at_ms: 1_000 }), 1_200),
            UnknownKid::Wait { ask: None }
        );
    }

    #[test]
    fn within_the_interval_of_a_done_refetch_an_unknown_kid_is_refused_at_once() {
        let refused = unknown(
            Some(Refetch::Done {
                at_ms: 1_000,
                fetched: true,
            }),
            11_000,
        );
        let UnknownKid::Refuse(refusal) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(refusal.reason(), "unknown_key");
        assert_eq!(
            refusal.message(),
            "the token's signing key \"k9\" is not among tenant t1's published keys, fetched 10 s ago; the next refetch is allowed in 20 s"
        );
        let reply = refusal.reply("http://x/.well-known/oauth-protected-resource");
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|h| h.contains("resource_metadata"))
        );
    }

    #[test]
    fn after_the_interval_an_unknown_kid_asks_again() {
        assert_eq!(
            unknown(
                Some(Refetch::Done {
                    at_ms: 1_000,
                    fetched: true
                }),
                31_000
            ),
            UnknownKid::Wait {
                ask: Some(Refetch::Asked { at_ms: 31_000 })
            }
        );
    }

    #[test]
    fn a_failed_refetch_refuses_as_unavailable_not_as_a_bad_token() {
        let UnknownKid::Refuse(refusal) = unknown(
            Some(Refetch::Done {
                at_ms: 1_000,
                fetched: false,
            }),
            2_500,
        ) else {
            panic!()
        };
        assert_eq!(refusal.reason(), "keys_unavailable");
        let reply = refusal.reply("m");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("29"));
        assert!(refusal.message().contains("refetching them failed"));
    }

    #[test]
    fn a_waiting_token_keeps_waiting_until_the_refetch_is_done_or_the_wait_is_up() {
        let asked = Some(Refetch::Asked { at_ms: 1_000 });
        assert_eq!(after_waiting(RULES, asked, "t1", "k9", 1_000, 5_999), None);
        let timed_out = after_waiting(RULES, asked, "t1", "k9", 1_000, 6_000);
        assert!(
            matches!(
                timed_out,
                Some(KeyRefusal::TimedOut {
                    waited_ms: 5_000,
                    ..
                })
            ),
            "{timed_out:?}"
        );
        assert_eq!(timed_out.map(|r| r.reply("m").status), Some(503));
        // A record another writer removed does not make the wait endless.
        assert!(after_waiting(RULES, None, "t1", "k9", 1_000, 7_000).is_some());
    }

    #[test]
    fn a_waiting_token_whose_kid_is_still_unknown_after_the_refetch_is_refused() {
        let done = Some(Refetch::Done {
            at_ms: 1_400,
            fetched: true,
        });
        let refusal = after_waiting(RULES, done, "t1", "k9", 1_000, 1_500);
        assert!(
            matches!(
                &refusal,
                Some(KeyRefusal::NotPublished {
                    fetched_ago_ms: 100,
                    next_refetch_in_ms: 29_900,
                    ..
                })
            ),
            "{refusal:?}"
        );
        let failed = Some(Refetch::Done {
            at_ms: 1_400,
            fetched: false,
        });
        assert_eq!(
            after_waiting(RULES, failed, "t1", "k9", 1_000, 1_500).map(|r| r.reason()),
            Some("keys_unavailable")
        );
    }

    #[test]
    fn a_fetch_answers_only_the_asks_made_before_it_began() {
        let asked = Refetch::Asked { at_ms: 1_000 };
        assert!(asked.answered_by(1_000));
        assert!(!asked.answered_by(999));
        let done = Refetch::Done {
            at_ms: 1_000,
            fetched: true,
        };
        assert!(!done.answered_by(2_000));
        assert!(Refetch::pending(Some(asked)));
        assert!(!Refetch::pending(Some(done)));
        assert!(!Refetch::pending(None));
    }

    #[test]
    fn too_many_waiting_is_unavailable_with_a_short_retry() {
        let refusal = KeyRefusal::TooManyWaiting {
            tenant: "t1".into(),
            limit: 64,
        };
        assert_eq!(refusal.reason(), "key_waiters_full");
        let reply = refusal.reply("m");
        assert_eq!(
            (reply.status, reply.header("retry-after")),
            (503, Some("1"))
        );
    }
}
