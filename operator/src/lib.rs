//! Airlock's operator side: custom resources, the approval service, the
//! development token issuer, and (in later work) the controllers and CLI.

pub mod approvals;
pub mod crd;
pub mod demo_server;
pub mod dev_issuer;
pub mod local;
pub mod render;
pub mod shutdown;
