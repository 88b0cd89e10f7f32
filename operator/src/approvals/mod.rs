//! The approval service: one implementation, used by the operator in a
//! cluster and by `airlock up` on one machine.

pub mod approver_access;
pub mod gateway_identity;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod service;
pub mod store;
pub mod time;
