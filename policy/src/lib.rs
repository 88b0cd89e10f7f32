//! Airlock's pure core, shared by the proxy-wasm filter and the operator.
//!
//! Nothing here performs I/O or reads a clock: callers pass bytes, claims and
//! the current time in, and get decisions out. That keeps every rule of the
//! data path unit-testable natively and identical in both hosts.

pub mod audit;
pub mod canonical;
pub mod entra;
pub mod evaluate;
pub mod gateway;
pub mod json;
pub mod jwt;
pub mod mcp;
pub mod model;
pub mod replay;
pub mod rs256;
mod rule_index;
