//! Airlock's integration and end-to-end tests: one binary, one module per area.

mod adversarial;
mod approvals_api;
mod approvals_tls;
mod audit;
mod chart;
mod clients;
mod conformance;
mod filter;
mod gateway_credential;
mod harness_cluster;
mod harness_envoy;
mod harness_issuer;
mod harness_node;
mod hold;
mod key_rotation;
mod local;
mod policy_sync;
mod policy_test;
mod readme;
mod releases;
mod stores;
