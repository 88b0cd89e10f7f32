//! The audit trail: hash-chained records, one writer per chain ([`trail`]),
//! each cluster replica's chain head checkpointed in the API server
//! ([`checkpoints`]), and the `airlock audit` commands that read them
//! ([`cli`]).

pub mod checkpoints;
pub mod cli;
pub mod trail;
