//! The filter's request path without Envoy: the same policy core functions
//! the filter calls for one allowed `tools/call`, in the same order (route,
//! bearer token, verify or cache hit, classify, judge, audit event).
//!
//! `make bench` runs it two ways. Natively under callgrind, whose instruction
//! counts are repeatable whatever else the machine does ([`run`]). And
//! compiled to wasm under Node's V8 — the engine Envoy embeds — timed per
//! call as the minimum over batches, which steal time and neighbours can
//! only lengthen ([`time`], the `airlock-request-path` command): the cost of
//! the module's own work in V8, apart from Envoy's host calls around it.

use airlock_policy::audit::rfc3339;
use airlock_policy::gateway::auth::{KeyRing, TokenCache, authenticate};
use airlock_policy::gateway::config::{FilterConfig, NamedPolicy, compile_all};
use airlock_policy::gateway::identity_headers;
use airlock_policy::gateway::judge::{Answering, judge};
use airlock_policy::gateway::record::{Seen, judged_events};
use airlock_policy::gateway::request::{bearer_token, route};
use airlock_policy::json::Limits;
use airlock_policy::jwt::JwkSet;
use airlock_policy::mcp::{ProtocolVersion, RequestContext, classify};
use airlock_policy::model::CompiledPolicy;
use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The callgrind pattern that collects only inside [`request_path`].
pub const COLLECT: &str = "*request_path::request_path*";

/// What the measured process needs, prepared by the bench (minting RSA
/// tokens under valgrind would take long and is not what is measured).
pub struct Inputs {
    pub config: Value,
    pub policies: Value,
    pub jwks: Value,
    pub tenant: String,
    pub warm: String,
    pub cold: Vec<String>,
}

impl Inputs {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let document = json!({
            "config": self.config, "policies": self.policies, "jwks": self.jwks,
            "tenant": self.tenant, "warm": self.warm, "cold": self.cold,
        });
        Ok(std::fs::write(path, document.to_string())?)
    }

    pub fn read(path: &Path) -> anyhow::Result<Inputs> {
        let mut document: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        let mut take = |field: &str| document.get_mut(field).map(Value::take);
        Ok(Inputs {
            config: take("config").context("config")?,
            policies: take("policies").context("policies")?,
            jwks: take("jwks").context("jwks")?,
            tenant: serde_json::from_value(take("tenant").context("tenant")?)?,
            warm: serde_json::from_value(take("warm").context("warm")?)?,
            cold: serde_json::from_value(take("cold").context("cold")?)?,
        })
    }
}

struct Core {
    config: FilterConfig,
    policies: Vec<CompiledPolicy>,
    keys: KeyRing,
    tokens: TokenCache,
}

const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_status","arguments":{"service":"api"}}}"#;

/// One allowed `tools/call`, as the filter handles it; returns the bytes it
/// would queue for the audit trail, so nothing is optimized away.
#[inline(never)]
fn request_path(core: &mut Core, authorization: &str, now: u64) -> anyhow::Result<usize> {
    let routed = route(&core.config, "POST", "/mcp").map_err(|r| anyhow::anyhow!("{r:?}"))?;
    let token = bearer_token(&[authorization])
        .map_err(anyhow::Error::msg)?
        .context("no token")?;
    let principal = authenticate(&core.config, &core.keys, &mut core.tokens, token, now)?;
    let context = RequestContext {
        protocol_version: Some(ProtocolVersion::V2025_06_18),
        method_header: None,
        name_header: None,
        limits: Some(Limits {
            max_bytes: core.config.max_body_bytes,
            ..Limits::default()
        }),
    };
    let envelope = classify(BODY, &context)?;
    let judged = judge(&envelope, &core.policies, &principal, Answering::JsonRpc);
    let headers = identity_headers(&principal, judged.action, None);
    let seen = Seen {
        time: rfc3339(now),
        server: &core.config.server,
        principal: Some(&principal),
        session: None,
        protocol_version: Some("2025-06-18"),
    };
    let mut queued = routed.forward_path.len() + headers.len();
    for event in judged_events(&seen, &envelope, &judged, &core.policies).events {
        queued += event.to_line()?.len();
    }
    Ok(queued)
}

impl Core {
    fn new(inputs: &Inputs) -> anyhow::Result<Core> {
        let named: Vec<NamedPolicy> = serde_json::from_value(inputs.policies.clone())?;
        let mut keys = KeyRing::default();
        keys.set(
            &inputs.tenant,
            JwkSet::from_json(inputs.jwks.to_string().as_bytes())?,
        );
        Ok(Core {
            config: FilterConfig::from_json(inputs.config.to_string().as_bytes())?,
            policies: compile_all(&named)?,
            keys,
            tokens: TokenCache::new(1024),
        })
    }
}

fn now() -> anyhow::Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `iterations` requests, each with the cached token or (cold) a token of
/// its own; the first, uncounted, fills the cache. What callgrind measures.
pub fn run(inputs: &Inputs, cold: bool, iterations: usize) -> anyhow::Result<()> {
    let mut core = Core::new(inputs)?;
    let now = now()?;
    let warm = bearer(&inputs.warm);
    request_path(&mut core, &warm, now)?;
    let mut queued = 0;
    for i in 0..iterations {
        let authorization = match cold {
            true => bearer(inputs.cold.get(i).context("too few cold tokens")?),
            false => warm.clone(),
        };
        queued += request_path(&mut core, &authorization, now)?;
    }
    println!("{iterations} requests, {queued} audit bytes");
    Ok(())
}

/// Time per request, warm and cold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub warm: Duration,
    pub cold: Duration,
}

/// Requests per timed batch.
const BATCH: usize = 20;

/// The minimum over batches of the mean time per request: cached-token
/// requests for `warm_batches` batches, then every cold token once.
pub fn time(inputs: &Inputs, warm_batches: usize) -> anyhow::Result<Timing> {
    let mut core = Core::new(inputs)?;
    let now = now()?;
    let warm = bearer(&inputs.warm);
    let cold: Vec<String> = inputs.cold.iter().map(|t| bearer(t)).collect();
    anyhow::ensure!(cold.len() >= BATCH, "at least {BATCH} cold tokens");
    // The first request fills the cache and lets the engine compile the path.
    request_path(&mut core, &warm, now)?;
    let mut batch = |tokens: &mut dyn Iterator<Item = &String>| -> anyhow::Result<Duration> {
        let start = Instant::now();
        for token in tokens {
            std::hint::black_box(request_path(&mut core, token, now)?);
        }
        Ok(start.elapsed() / BATCH as u32)
    };
    let mut best_warm = Duration::MAX;
    for _ in 0..warm_batches {
        best_warm = best_warm.min(batch(&mut std::iter::repeat_n(&warm, BATCH))?);
    }
    let mut best_cold = Duration::MAX;
    for tokens in cold.chunks_exact(BATCH) {
        best_cold = best_cold.min(batch(&mut tokens.iter())?);
    }
    Ok(Timing {
        warm: best_warm,
        cold: best_cold,
    })
}
