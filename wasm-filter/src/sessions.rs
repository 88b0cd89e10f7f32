//! Session bindings in Envoy shared data, visible to every worker's VM.

use airlock_policy::entra::Principal;
use airlock_policy::gateway::session::{Bucket, Ownership, bucket_key, bucket_of};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Compare-and-set attempts before a binding update gives up.
const ATTEMPTS: usize = 8;

fn read(session_id: &str) -> (Bucket, Option<u32>) {
    match hostcalls::get_shared_data(&bucket_key(bucket_of(session_id))) {
        Ok((bytes, cas)) => (Bucket::decode(bytes.as_deref()), cas),
        Err(_) => (Bucket::default(), None),
    }
}

pub fn ownership(session_id: &str, principal: &Principal) -> Ownership {
    read(session_id).0.ownership(session_id, principal)
}

/// Applies `change` to the session's bucket with compare-and-set; returns
/// what `change` returned, or `None` if the update kept losing races.
fn update<T>(session_id: &str, mut change: impl FnMut(&mut Bucket) -> T) -> Option<T> {
    let key = bucket_key(bucket_of(session_id));
    for _ in 0..ATTEMPTS {
        let (mut bucket, cas) = read(session_id);
        let result = change(&mut bucket);
        match hostcalls::set_shared_data(&key, Some(&bucket.encode()), cas) {
            Ok(()) => return Some(result),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log::error!("airlock: cannot store session binding: {status:?}");
                return None;
            }
        }
    }
    None
}

/// Binds a new session to its opener; false if it belongs to someone else or
/// could not be stored.
pub fn bind(session_id: &str, principal: &Principal) -> bool {
    update(session_id, |bucket| bucket.bind(session_id, principal)).unwrap_or(false)
}

pub fn unbind(session_id: &str) {
    update(session_id, |bucket| bucket.unbind(session_id));
}
