//! Read-modify-write of shared data, the one store every worker's VM sees.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Compare-and-set attempts before an update gives up.
const ATTEMPTS: usize = 8;

/// Applies `change` to the value under `key` (`None` while there is none)
/// with compare-and-set, again when another VM wrote in between; returns
/// what `change` returned, or `None` if the update kept losing races or
/// cannot be stored.
pub fn update<T>(key: &str, mut change: impl FnMut(Option<&[u8]>) -> (Vec<u8>, T)) -> Option<T> {
    for _ in 0..ATTEMPTS {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let (changed, result) = change(value.as_deref());
        match hostcalls::set_shared_data(key, Some(&changed), cas) {
            Ok(()) => return Some(result),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log::error!("airlock: cannot store {key}: {status:?}");
                return None;
            }
        }
    }
    log::error!("airlock: {key} kept changing under its update");
    None
}
