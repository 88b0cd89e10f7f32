//! Session bindings in Envoy shared data, visible to every worker's VM.

use crate::shared;
use airlock_policy::entra::Principal;
use airlock_policy::gateway::session::{Bucket, Ownership, bucket_key, bucket_of};
use proxy_wasm::hostcalls;

fn read(session_id: &str) -> Bucket {
    match hostcalls::get_shared_data(&bucket_key(bucket_of(session_id))) {
        Ok((bytes, _)) => Bucket::decode(bytes.as_deref()),
        Err(_) => Bucket::default(),
    }
}

pub fn ownership(session_id: &str, principal: &Principal) -> Ownership {
    read(session_id).ownership(session_id, principal)
}

/// Applies `change` to the session's bucket; `None` if it could not be stored.
fn update<T>(session_id: &str, mut change: impl FnMut(&mut Bucket) -> T) -> Option<T> {
    shared::update(&bucket_key(bucket_of(session_id)), |bytes| {
        let mut bucket = Bucket::decode(bytes);
        let result = change(&mut bucket);
        (bucket.encode(), result)
    })
}

/// Binds a new session to its opener; false if it belongs to someone else or
/// could not be stored.
pub fn bind(session_id: &str, principal: &Principal) -> bool {
    update(session_id, |bucket| bucket.bind(session_id, principal)).unwrap_or(false)
}

pub fn unbind(session_id: &str) {
    update(session_id, |bucket| bucket.unbind(session_id));
}
