//! A closed-loop load generator: `connections` HTTP/1.1 keep-alive
//! connections, each sending the next request as soon as the previous answer
//! is read, on one thread and a single-threaded runtime (pinned with the rest
//! of the bench process). Latency is measured per request, after a warm-up.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Which bearer token each request carries.
pub enum Tokens {
    /// The same token on every request: the filter's warm cache.
    Same(String),
    /// Each token once, then stop: every verification is cold.
    EachOnce(Vec<String>),
    /// The same token on this many requests, then stop.
    SameFor(String, usize),
}

/// What to send, and where.
pub struct Target {
    pub port: u16,
    pub path: String,
    /// Request bodies, sent in turn: calls whose arguments differ from one
    /// request to the next, so no cache of whole decisions can flatter a figure.
    pub bodies: Vec<Bytes>,
    pub tokens: Tokens,
    /// A response counts as served only if its body contains this.
    pub expect: &'static str,
}

impl Target {
    fn request(&self, sent: &AtomicUsize) -> Option<Request<Full<Bytes>>> {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        let token = match &self.tokens {
            Tokens::Same(token) => token,
            Tokens::EachOnce(tokens) => tokens.get(n)?,
            Tokens::SameFor(token, count) => Some(token).filter(|_| n < *count)?,
        };
        let body = self.bodies.get(n % self.bodies.len().max(1))?.clone();
        Request::post(self.path.as_str())
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(body))
            .ok()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct Sample {
    /// Latencies of requests sent after the warm-up, sorted.
    pub latencies: Vec<Duration>,
    /// Requests completed in all, warm-up included.
    pub completed: u64,
    /// Time from the end of the warm-up to the last response.
    pub measured: Duration,
}

impl Sample {
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.measured.as_secs_f64().max(f64::EPSILON)
    }

    /// The `q` quantile (0..=1) of latency, in microseconds.
    pub fn quantile_micros(&self, q: f64) -> f64 {
        quantile_micros(&self.latencies, q)
    }
}

/// The `q` quantile (0..=1) of sorted durations, in microseconds.
pub fn quantile_micros(sorted: &[Duration], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let rank = ((last as f64 * q).round() as usize).min(last);
    sorted[rank].as_secs_f64() * 1e6
}

/// Runs the load on its own thread and returns what it measured. Any
/// failed request fails the run: a benchmark of refusals measures nothing.
pub fn run(target: Arc<Target>, load: Load) -> anyhow::Result<Sample> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let started = Instant::now();
            let warm_from = started + load.warmup;
            let until = warm_from + load.measure;
            let sent = Arc::new(AtomicUsize::new(0));
            let connections = (0..load.connections).map(|_| {
                let (target, sent) = (target.clone(), sent.clone());
                tokio::spawn(async move { connection(&target, &sent, warm_from, until).await })
            });
            let mut sample = Sample::default();
            let mut last = warm_from;
            for finished in futures::future::join_all(connections).await {
                let (latencies, completed, ended) = finished??;
                sample.latencies.extend(latencies);
                sample.completed += completed;
                last = last.max(ended);
            }
            sample.latencies.sort_unstable();
            sample.measured = last.saturating_duration_since(warm_from);
            Ok(sample)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))?
}

async fn connection(
    target: &Target,
    sent: &AtomicUsize,
    warm_from: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<Duration>, u64, Instant)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", target.port)).await?;
    stream.set_nodelay(true)?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(driver);
    let mut latencies = Vec::new();
    let mut completed = 0;
    let mut ended = warm_from;
    while Instant::now() < until {
        let Some(request) = target.request(sent) else {
            break;
        };
        sender.ready().await?;
        let start = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        ended = Instant::now();
        let served = status == hyper::StatusCode::OK
            && std::str::from_utf8(&body).is_ok_and(|b| b.contains(target.expect));
        if !served {
            anyhow::bail!(
                "{} answered {status}: {}",
                target.path,
                String::from_utf8_lossy(&body)
            );
        }
        completed += 1;
        if start >= warm_from {
            latencies.push(ended - start);
        }
    }
    Ok((latencies, completed, ended))
}

/// What each request of a run asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `tools/call` of `get_status`, allowed.
    Call,
    /// `tools/call` of `read_secret`, which policy denies (the filter answers).
    Denied,
    /// `tools/list`, the answer filtered to what the caller may call.
    ToolsList,
    /// `tools/call` of `echo`, answered as an SSE stream.
    Streamed,
    /// `initialize`, each answered with a new session.
    Initialize,
}

/// Distinct request bodies each run cycles through.
const VARIANTS: usize = 64;

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::Call => "tools/call",
            Workload::Denied => "tools/call, denied",
            Workload::ToolsList => "tools/list",
            Workload::Streamed => "tools/call, SSE answer",
            Workload::Initialize => "initialize",
        }
    }

    /// The request bodies: ids and arguments differ from one to the next.
    pub fn bodies(self) -> Vec<Bytes> {
        (0..VARIANTS)
            .map(|n| {
                let (method, params) = match self {
                    Workload::Call => (
                        "tools/call",
                        serde_json::json!({"name": "get_status", "arguments": {"service": format!("api-{n}")}}),
                    ),
                    Workload::Denied => (
                        "tools/call",
                        serde_json::json!({"name": "read_secret", "arguments": {"key": format!("key-{n}")}}),
                    ),
                    Workload::ToolsList => ("tools/list", serde_json::json!({})),
                    Workload::Streamed => (
                        "tools/call",
                        serde_json::json!({"name": "echo", "arguments": {"text": format!("hello {n}")}}),
                    ),
                    Workload::Initialize => (
                        "initialize",
                        serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                                           "clientInfo": {"name": "airlock-bench", "version": format!("{n}")}}),
                    ),
                };
                let body = serde_json::json!({"jsonrpc": "2.0", "id": n + 1, "method": method, "params": params});
                Bytes::from(body.to_string())
            })
            .collect()
    }

    /// What an answer of this workload contains, and a refusal (or, for
    /// `Denied`, a pass) does not.
    pub fn expect(self) -> &'static str {
        match self {
            Workload::Call | Workload::Streamed => r#""isError":false"#,
            Workload::Denied => r#""isError":true"#,
            Workload::ToolsList => r#""tools":["#,
            Workload::Initialize => r#""serverInfo""#,
        }
    }
}
