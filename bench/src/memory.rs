//! The filter's memory under many callers: a gateway whose token cache holds
//! [`TOKEN_CACHE`] entries is sent ten times that many distinct valid tokens,
//! then [`SESSIONS`] `initialize` calls, each opening a session the filter
//! binds to its caller. The filter's VM memory (the
//! `airlock.vm_memory_bytes` gauge, summed over the worker's VM and the main
//! thread's: wasm memory only grows, so it is the high-water mark), the
//! token caches' entries and Envoy's resident memory
//! are read after each step. The caches evict, so both must level off.

use crate::load::{self, Load, Target, Tokens, Workload};
use airlock_tests::gateway::{ENGINEERS, Gateway, Sidecar, policies};
use anyhow::Context;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The token cache's capacity for this run (the default is 1,024).
pub const TOKEN_CACHE: usize = 100;
pub const SESSIONS: usize = 10_000;
/// What the filter's VMs may hold after every step: about 3 MiB at rest,
/// the token cache (measured at 10–14 KiB an entry, the token and what was
/// decoded from it) and, should the approval service stop taking them, the
/// audit queue's 10,000 events of about 1 KiB (docs/BENCHMARKS.md).
pub const VM_BOUND_MIB: f64 = 16.0;

/// One reading, after a step.
pub struct Reading {
    pub after: String,
    pub vm_bytes: i64,
    pub token_cache_entries: i64,
    pub envoy_rss_kib: u64,
}

pub struct MemoryReport {
    pub readings: Vec<Reading>,
}

impl MemoryReport {
    pub fn markdown(&self) -> String {
        let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
        let mut out = format!(
            "\n### Memory under many callers\n\nOne worker; the token cache configured for {TOKEN_CACHE} entries.\n\n| after | VM memory | token cache entries | Envoy RSS |\n|---|---:|---:|---:|\n"
        );
        for reading in &self.readings {
            out.push_str(&format!(
                "| {} | {:.1} MiB | {} | {:.1} MiB |\n",
                reading.after,
                mib(reading.vm_bytes as f64),
                reading.token_cache_entries,
                reading.envoy_rss_kib as f64 / 1024.0,
            ));
        }
        if let Some(last) = self.readings.last() {
            let vm = mib(last.vm_bytes as f64);
            let verdict = match vm <= VM_BOUND_MIB {
                true => "within",
                false => "**over**",
            };
            out.push_str(&format!(
                "\nVM memory {vm:.1} MiB: {verdict} the documented bound of {VM_BOUND_MIB} MiB.\n"
            ));
        }
        out
    }
}

pub async fn run(upstream_port: u16) -> anyhow::Result<MemoryReport> {
    let sidecar = Sidecar {
        workers: 1,
        ..Sidecar::standard()?
    };
    let gateway = Gateway::launch_on(
        sidecar,
        upstream_port,
        Some(policies()),
        json!({"tokenCacheEntries": TOKEN_CACHE}),
    )
    .await?;
    gateway.wait_until_ready().await?;
    let token = gateway.token(&[ENGINEERS])?;
    eprintln!(
        "bench: minting {} tokens for the memory run",
        10 * TOKEN_CACHE
    );
    let distinct = crate::cold_tokens(&gateway.issuer.issuer, 10 * TOKEN_CACHE)?;
    let mut readings = Vec::new();
    let steps = [
        (
            "200 calls, one token".to_string(),
            Workload::Call,
            Tokens::SameFor(token.clone(), 200),
        ),
        (
            format!("{} distinct valid tokens (10× the cache)", distinct.len()),
            Workload::Call,
            Tokens::EachOnce(distinct),
        ),
        (
            format!("{SESSIONS} sessions opened"),
            Workload::Initialize,
            Tokens::SameFor(token.clone(), SESSIONS),
        ),
        // Session bindings live in Envoy's shared data, in buckets that
        // evict: the next ones must not need more.
        (
            format!("{SESSIONS} sessions more"),
            Workload::Initialize,
            Tokens::SameFor(token.clone(), SESSIONS),
        ),
    ];
    for (after, workload, tokens) in steps {
        eprintln!("bench: memory, {after}");
        let target = Arc::new(Target {
            port: gateway.envoy.port,
            path: "/mcp".into(),
            bodies: workload.bodies(),
            tokens,
            expect: workload.expect(),
        });
        let until_done = Load {
            connections: 4,
            warmup: Duration::ZERO,
            measure: Duration::from_secs(600),
        };
        tokio::task::spawn_blocking(move || load::run(target, until_done)).await??;
        readings.push(read(&gateway, after).await?);
    }
    Ok(MemoryReport { readings })
}

/// The gauges after the filter's next tick (every 500 ms) has set them.
async fn read(gateway: &Gateway, after: String) -> anyhow::Result<Reading> {
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let envoy = &gateway.envoy;
    let vm_bytes = envoy
        .defined_stat("wasmcustom.airlock.vm_memory_bytes")
        .await?
        .context("the filter reports no airlock.vm_memory_bytes")?;
    Ok(Reading {
        after,
        vm_bytes,
        token_cache_entries: envoy.stat("wasmcustom.airlock.token_cache_entries").await?,
        envoy_rss_kib: crate::cpu::memory(envoy.pid())?.1,
    })
}
