//! Binding MCP sessions to the principal that opened them.
//!
//! A session id proves nothing about who presents it: the MCP specification
//! tells servers not to authenticate by session. The gateway records the
//! owner (tenant + object id) when a session is created — from the
//! `Mcp-Session-Id` of an initialize response, or the legacy SSE `endpoint`
//! event — and refuses the session to anyone else. Bindings live in a fixed
//! number of bounded buckets, so memory stays bounded however many sessions
//! come and go.

use crate::entra::Principal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Buckets the bindings are spread over (each stored as one shared-data entry).
pub const BUCKETS: usize = 64;
/// Bindings kept per bucket; the least recently bound is evicted first.
pub const PER_BUCKET: usize = 256;

/// Who owns a session: `tid/oid`.
pub fn owner(principal: &Principal) -> String {
    format!("{}/{}", principal.tenant_id, principal.object_id)
}

fn digest(session_id: &str) -> [u8; 32] {
    Sha256::digest(session_id.as_bytes()).into()
}

/// The bucket a session id belongs to.
pub fn bucket_of(session_id: &str) -> usize {
    usize::from(digest(session_id)[0]) % BUCKETS
}

/// The shared-data key of a bucket.
pub fn bucket_key(bucket: usize) -> String {
    format!("airlock/sessions/{bucket}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// (hex digest of the session id, owner, sequence of binding)
    entries: Vec<(String, String, u64)>,
}

/// What the gateway knows about a presented session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Bound to this principal.
    Owner,
    /// Bound to someone else.
    Other,
    /// Not bound (never seen, evicted, or the gateway restarted).
    Unknown,
}

impl Bucket {
    /// Reads a stored bucket; an unreadable one counts as empty.
    pub fn decode(bytes: Option<&[u8]>) -> Bucket {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn ownership(&self, session_id: &str, principal: &Principal) -> Ownership {
        let key = hex::encode(digest(session_id));
        match self.entries.iter().find(|(k, _, _)| *k == key) {
            Some((_, who, _)) if *who == owner(principal) => Ownership::Owner,
            Some(_) => Ownership::Other,
            None => Ownership::Unknown,
        }
    }

    /// Binds an unbound session; a session bound to someone keeps its owner.
    /// Returns false when the session already belongs to another principal.
    pub fn bind(&mut self, session_id: &str, principal: &Principal) -> bool {
        match self.ownership(session_id, principal) {
            Ownership::Owner => true,
            Ownership::Other => false,
            Ownership::Unknown => {
                let next = self
                    .entries
                    .iter()
                    .map(|(_, _, n)| n + 1)
                    .max()
                    .unwrap_or(0);
                if self.entries.len() >= PER_BUCKET
                    && let Some(oldest) = self
                        .entries
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, _, n))| *n)
                        .map(|(i, _)| i)
                {
                    self.entries.remove(oldest);
                }
                self.entries
                    .push((hex::encode(digest(session_id)), owner(principal), next));
                true
            }
        }
    }

    pub fn unbind(&mut self, session_id: &str) {
        let key = hex::encode(digest(session_id));
        self.entries.retain(|(k, _, _)| *k != key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The session id a legacy SSE `endpoint` event announces (`…?session_id=X`
/// in the Python SDK, `…?sessionId=X` in the TypeScript SDK).
pub fn legacy_endpoint_session(event: &str) -> Option<String> {
    match super::sse::parse_event(event) {
        (Some("endpoint"), Some(data)) => legacy_query_session(data.trim().split_once('?')?.1),
        _ => None,
    }
}

/// The session id in a legacy message POST's query string.
pub fn legacy_query_session(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "session_id" || name == "sessionId").then(|| value.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(oid: &str) -> Principal {
        crate::entra::test_principal(oid, &[])
    }

    #[test]
    fn a_session_belongs_to_its_opener() {
        let mut bucket = Bucket::default();
        assert_eq!(bucket.ownership("s1", &who("ada")), Ownership::Unknown);
        assert!(bucket.bind("s1", &who("ada")));
        assert_eq!(bucket.ownership("s1", &who("ada")), Ownership::Owner);
        assert_eq!(bucket.ownership("s1", &who("bob")), Ownership::Other);
        assert!(!bucket.bind("s1", &who("bob")), "no takeover");
        let stored = Bucket::decode(Some(&bucket.encode()));
        assert_eq!(stored.ownership("s1", &who("ada")), Ownership::Owner);
        bucket.unbind("s1");
        assert_eq!(bucket.ownership("s1", &who("ada")), Ownership::Unknown);
        assert!(Bucket::decode(Some(b"garbage")).is_empty());
    }

    #[test]
    fn buckets_are_bounded() {
        let mut bucket = Bucket::default();
        for i in 0..PER_BUCKET + 10 {
            bucket.bind(&format!("s{i}"), &who("ada"));
        }
        assert_eq!(bucket.len(), PER_BUCKET);
        assert_eq!(
            bucket.ownership("s0", &who("ada")),
            Ownership::Unknown,
            "oldest evicted"
        );
        assert_eq!(
            bucket.ownership(&format!("s{}", PER_BUCKET + 9), &who("ada")),
            Ownership::Owner
        );
        assert!(bucket_of("anything") < BUCKETS);
    }

    #[test]
    fn reads_legacy_session_ids() {
        assert_eq!(
            legacy_endpoint_session("event: endpoint\ndata: /messages/?session_id=abc123\n\n"),
            Some("abc123".into())
        );
        assert_eq!(
            legacy_endpoint_session("event: endpoint\ndata: /message?sessionId=xyz\n\n"),
            Some("xyz".into())
        );
        assert_eq!(
            legacy_endpoint_session("event: message\ndata: /m?session_id=1\n\n"),
            None
        );
        assert_eq!(legacy_query_session("a=1&session_id=q"), Some("q".into()));
        assert_eq!(legacy_query_session("a=1"), None);
    }
}
