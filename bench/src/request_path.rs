//! The filter's request path in native code, for callgrind: the same policy
//! core functions the filter calls for one allowed `tools/call`, in the same
//! order (route, bearer token, verify or cache hit, classify, judge, audit
//! event), without Envoy and V8 around them. Instruction counts here are
//! repeatable whatever else the machine does; they count native x86
//! instructions, not the module's under V8.

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
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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

    fn read(path: &Path) -> anyhow::Result<Inputs> {
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

#[derive(Debug, Clone, clap::Args)]
pub struct RequestPathArgs {
    /// Inputs written by the bench.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Verify a fresh token each time (cold) instead of hitting the cache.
    #[arg(long)]
    pub cold: bool,
    #[arg(long, default_value_t = 1000)]
    pub iterations: usize,
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
        queued += serde_json::to_string(&event)?.len();
    }
    Ok(queued)
}

pub fn run(args: &RequestPathArgs) -> anyhow::Result<()> {
    let inputs = Inputs::read(&args.inputs)?;
    let named: Vec<NamedPolicy> = serde_json::from_value(inputs.policies)?;
    let mut keys = KeyRing::default();
    keys.set(
        &inputs.tenant,
        JwkSet::from_json(inputs.jwks.to_string().as_bytes())?,
    );
    let mut core = Core {
        config: FilterConfig::from_json(inputs.config.to_string().as_bytes())?,
        policies: compile_all(&named)?,
        keys,
        tokens: TokenCache::new(1024),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let warm = format!("Bearer {}", inputs.warm);
    // The first call fills the cache; the measured ones hit it (or, cold, miss it).
    request_path(&mut core, &warm, now)?;
    let mut queued = 0;
    for i in 0..args.iterations {
        let authorization = match args.cold {
            true => format!(
                "Bearer {}",
                inputs.cold.get(i).context("too few cold tokens")?
            ),
            false => warm.clone(),
        };
        queued += request_path(&mut core, &authorization, now)?;
    }
    println!("{} requests, {queued} audit bytes", args.iterations);
    Ok(())
}
