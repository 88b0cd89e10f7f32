//! Airlock's operator side: custom resources, the development token issuer,
//! and (in later work) the controllers, approval service and CLI.

pub mod crd;
pub mod dev_issuer;
