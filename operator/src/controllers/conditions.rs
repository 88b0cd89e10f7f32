//! Standard `metav1.Condition`s: a transition time that changes only when
//! the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition `type_` with `status`, keeping `previous`'s transition time
/// when its status is the same.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let first = condition("Ready", false, "Starting", "", Some(1), &[]);
        let same = condition(
            "Ready",
            false,
            "Starting",
            "still",
            Some(2),
            std::slice::from_ref(&first),
        );
        assert_eq!(same.last_transition_time, first.last_transition_time);
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition(
            "Ready",
            true,
            "Available",
            "",
            Some(2),
            std::slice::from_ref(&first),
        );
        assert_eq!(flipped.status, "True");
    }
}
