//! Kubernetes Events, recorded one way wherever the operator writes them.

use kube::runtime::events::{Event, EventType, Recorder};

/// Records an Event on `object`; failing to is logged, never fatal (the
/// object's status or phase says the same).
pub async fn publish<K: kube::Resource<DynamicType = ()>>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        // The API server caps an Event's note at 1 KiB.
        note: Some(note.chars().take(1024).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        crate::log::error("events", &format!("recording a {reason} event: {e}"));
    }
}
