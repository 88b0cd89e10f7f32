//! Airlock's operator side: custom resources, the approval service, the
//! controllers and what they render, the development token issuer, and the
//! `airlock` CLI with its local mode.

pub mod admission;
pub mod approvals;
pub mod audit;
pub mod controllers;
pub mod crd;
pub mod demo_server;
pub mod dev_issuer;
pub mod events;
pub mod filter_install;
pub mod kubectl;
pub mod local;
pub mod log;
pub mod present;
pub mod reference;
pub mod render;
pub mod run;
pub mod shutdown;
pub mod tls;
