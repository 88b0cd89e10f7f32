//! `make bench`: Airlock's figures, measured in one run on one machine.
//!
//! - tools/call throughput and p50/p99 latency: direct to the MCP server,
//!   through Envoy without the filter, through Envoy with the filter (allow
//!   path, warm token cache), and with a new token on every call (cold RS256);
//! - callgrind instruction counts of the filter's request path (native);
//! - time from `approve` to the held call's response;
//! - audit intake throughput of the approval service;
//! - the operator at scale: hundreds of McpServers and thousands of
//!   ApprovalRequests in a real API server — time to serve and to observe
//!   every server, and memory.
//!
//! The scale run comes first, on every core. Then the bench process (load
//! generator, upstream, approval service, issuer) is pinned to core 0 and
//! Envoy (one worker) to core 1.

mod approvals;
mod cpu;
mod load;
mod memory;
mod operator_scale;
mod policy_scale;
mod report;
mod upstream;

use airlock_operator::dev_issuer::DevIssuer;
use airlock_tests::envoy::{Envoy, EnvoyOptions};
use airlock_tests::gateway::{ENGINEERS, Gateway, Sidecar, filter_config, policies};
use airlock_tests::issuer::TENANT;
use anyhow::{Context, ensure};
use clap::Parser;
use load::{Load, Target, Tokens, Workload};
use report::{Path, Report};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Airlock's benchmarks; prints a Markdown report")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs the filter's request path natively (the target callgrind measures).
    RequestPath(RequestPathArgs),
    /// Only the operator scale run.
    Scale,
    /// Only judging one call against 1, 100 and 1,000 rules.
    Policy,
    /// Only the request path's cost without Envoy (seconds): callgrind
    /// counts natively and time per call in V8, for the before and after of
    /// a change to the filter's core.
    RequestCost,
    /// Only the filter's memory under many tokens and sessions (a minute).
    Memory,
}

#[derive(Debug, Clone, clap::Args)]
struct RequestPathArgs {
    /// Inputs written by the bench.
    #[arg(long)]
    inputs: std::path::PathBuf,
    /// Verify a fresh token each time (cold) instead of hitting the cache.
    #[arg(long)]
    cold: bool,
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Seconds each throughput run measures, after its warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Connection counts of the runs of allowed calls (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Calls of the cold-token run, each with a token never seen before.
    #[arg(long, default_value_t = 1000)]
    cold_calls: usize,
    /// Held calls approved one after another.
    #[arg(long, default_value_t = 200)]
    approvals: usize,
    /// Skip the callgrind counts (valgrind missing, or in a hurry).
    #[arg(long)]
    no_callgrind: bool,
    /// Keep callgrind's inputs and profiles here (for `callgrind_annotate DIR/warm.out`).
    #[arg(long)]
    callgrind_dir: Option<std::path::PathBuf>,
    /// McpServers (replicas 0) of the operator scale run.
    #[arg(long, default_value_t = 500)]
    scale_servers: usize,
    /// ApprovalRequests of the operator scale run.
    #[arg(long, default_value_t = 5000)]
    scale_requests: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 10)]
    scale_namespaces: usize,
    /// Skip the operator scale run.
    #[arg(long)]
    no_scale: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::RequestPath(args)) = &cli.command {
        let inputs = airlock_request_path::Inputs::read(&args.inputs)?;
        return airlock_request_path::run(&inputs, args.cold, args.iterations);
    }
    if let Some(Command::Policy) = &cli.command {
        println!("{}", policy_scale::markdown(&policy_scale::run()?));
        return Ok(());
    }
    if let Some(Command::RequestCost) = &cli.command {
        let issuer = DevIssuer::new(TENANT)?;
        let warm = issuer.mint(&airlock_tests::gateway::caller(&[ENGINEERS]))?;
        let cold = cold_tokens(&issuer, V8_COLD)?;
        let inputs = request_path_inputs(&issuer, warm, cold)?;
        println!("{}", request_cost(&inputs, &cli.run).markdown());
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cores >= 2,
        "the bench needs two cores (load on one, Envoy on the other); this machine has {cores}"
    );
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    if let Some(Command::Memory) = &cli.command {
        let upstream = upstream::Upstream::start()?;
        let report = runtime()?.block_on(memory::run(upstream.port))?;
        println!("{}", report.markdown());
        return Ok(());
    }
    let scale_only = matches!(cli.command, Some(Command::Scale));
    let scale = if cli.run.no_scale && !scale_only {
        None
    } else {
        let scale = operator_scale::Scale {
            servers: cli.run.scale_servers,
            requests: cli.run.scale_requests,
            namespaces: cli.run.scale_namespaces.max(1),
        };
        Some(runtime()?.block_on(operator_scale::run(scale))?)
    };
    if let (true, Some(scale)) = (scale_only, &scale) {
        println!("{}", scale.markdown());
        return Ok(());
    }
    // Before any thread of the data-path runs starts: they inherit it.
    cpu::pin_this_thread(0)?;
    runtime()?.block_on(run(&cli.run, scale))
}

/// Every path's runs, at each connection count: allowed `tools/call`s; then,
/// where a path can serve them, the other workloads at [`OTHER_WORKLOADS_AT`].
const OTHER_WORKLOADS_AT: usize = 16;

async fn run(args: &RunArgs, scale: Option<operator_scale::ScaleReport>) -> anyhow::Result<()> {
    let upstream = upstream::Upstream::start()?;
    let mut connection_counts = args.connections.clone();
    connection_counts.sort_unstable();
    connection_counts.dedup();
    let mut report = Report::new(connection_counts.clone());
    report.scale = scale;
    let load = |connections: usize| Load {
        connections,
        warmup: Duration::from_secs(args.warmup_seconds),
        measure: Duration::from_secs(args.seconds),
    };
    let latency = load(1);

    // The gateway first: its issuer mints the token every path carries, so
    // each path sees the same request bytes.
    let sidecar = Sidecar {
        workers: 1,
        ..Sidecar::standard()?
    };
    let gateway = Gateway::launch_on(sidecar, upstream.port, Some(policies()), json!({})).await?;
    gateway.wait_until_ready().await?;
    let token = gateway.token(&[ENGINEERS])?;
    let measure = |path: Path,
                   workload: Workload,
                   port: u16,
                   pid: Option<u32>,
                   load: Load,
                   tokens: Tokens| {
        let target = Arc::new(Target {
            port,
            path: "/mcp".into(),
            bodies: workload.bodies(),
            tokens,
            expect: workload.expect(),
        });
        async move {
            eprintln!(
                "bench: {}, {}, {} connection(s)",
                path.label(),
                workload.label(),
                load.connections
            );
            let before = pid.map(cpu::process_time).transpose()?;
            let sample = tokio::task::spawn_blocking(move || load::run(target, load)).await??;
            let cpu = match (pid, before) {
                (Some(pid), Some(before)) => Some(cpu::process_time(pid)? - before),
                _ => None,
            };
            anyhow::Ok((path, workload, load.connections, sample, cpu))
        }
    };
    // Each path's runs: every connection count for calls, then `others`.
    let runs = |others: &'static [Workload]| {
        connection_counts
            .iter()
            .map(|&connections| (Workload::Call, load(connections)))
            .chain(others.iter().map(|&w| (w, load(OTHER_WORKLOADS_AT))))
            .collect::<Vec<_>>()
    };

    for (workload, load) in runs(&[]) {
        let tokens = Tokens::Same(token.clone());
        report.data_path(measure(Path::Direct, workload, upstream.port, None, load, tokens).await?);
    }
    // Plain Envoy; Envoy hosting a filter that does nothing (the V8 floor);
    // and what a platform team would assemble without Airlock, on the same keys.
    let noop = noop_filter()?;
    let peers = [
        (Path::Envoy, &[Workload::ToolsList, Workload::Streamed][..]),
        (Path::NoopFilter, &[][..]),
        (Path::NativePeer, &[Workload::Streamed][..]),
    ];
    for (path, others) in peers {
        let mut options = EnvoyOptions::plain(upstream.port);
        match path {
            Path::NoopFilter => {
                options = EnvoyOptions::with_filter(upstream.port, noop.clone(), json!({}));
            }
            Path::NativePeer => {
                options.native_filters = native_peer_filters(&gateway.issuer.jwks_path);
                options.clusters.push(("jwks".into(), gateway.issuer.port));
            }
            _ => {}
        }
        options.concurrency = 1;
        let envoy = Envoy::start(options).await?;
        cpu::pin_process(envoy.pid(), 1)?;
        for (workload, load) in runs(others) {
            let tokens = Tokens::Same(token.clone());
            let row = measure(path, workload, envoy.port, Some(envoy.pid()), load, tokens).await?;
            report.data_path(row);
        }
    }
    let envoy = &gateway.envoy;
    cpu::pin_process(envoy.pid(), 1)?;
    let port = envoy.port;
    for (workload, load) in runs(&[Workload::Denied, Workload::ToolsList, Workload::Streamed]) {
        let tokens = Tokens::Same(token.clone());
        let row = measure(
            Path::Filter,
            workload,
            port,
            Some(envoy.pid()),
            load,
            tokens,
        )
        .await?;
        report.data_path(row);
    }
    eprintln!("bench: minting {} tokens for the cold run", args.cold_calls);
    let cold = cold_tokens(&gateway.issuer.issuer, args.cold_calls)?;
    let cold_load = Load {
        warmup: Duration::ZERO,
        measure: Duration::from_secs(600),
        ..latency
    };
    let row = measure(
        Path::FilterCold,
        Workload::Call,
        port,
        Some(envoy.pid()),
        cold_load,
        Tokens::EachOnce(cold.clone()),
    )
    .await?;
    report.data_path(row);
    report.audit_dropped = envoy.stat("wasmcustom.airlock.audit.dropped").await?;

    let inputs = request_path_inputs(&gateway.issuer.issuer, token.clone(), cold)?;
    report.request_cost = Some(request_cost(&inputs, args));
    report.memory = Some(memory::run(upstream.port).await?);

    eprintln!("bench: approving {} held calls", args.approvals);
    report.approvals = approvals::approve_to_response(&gateway, args.approvals).await?;
    eprintln!("bench: judging one call against many rules");
    report.policy = policy_scale::run()?;
    eprintln!("bench: audit intake");
    let event = approvals::last_event(&gateway.approvals.audit_log)?;
    report.intake = Some(
        approvals::audit_intake(
            &gateway.approvals.url,
            &event,
            256,
            4,
            Duration::from_secs(args.seconds.min(5)),
        )
        .await?,
    );
    drop(upstream);
    println!("{}", report.render());
    Ok(())
}

/// Envoy's native filters checking what a token-and-group gate checks:
/// `jwt_authn` verifying the RS256 signature against the issuer's key set
/// (fetched and cached by Envoy, verified tokens cached), the v2 issuer and
/// the audience, with the token read from the `Authorization` header only
/// and left in place; then `rbac` allowing the engineers group from the
/// verified payload. No MCP awareness: every method and tool passes.
fn native_peer_filters(jwks_path: &str) -> Vec<serde_json::Value> {
    vec![
        json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"entra": {
                    "issuer": airlock_policy::entra::v2_issuer(TENANT),
                    "audiences": [airlock_tests::issuer::AUDIENCE],
                    "remote_jwks": {
                        "http_uri": {"uri": format!("http://issuer{jwks_path}"), "cluster": "jwks", "timeout": "5s"},
                        "cache_duration": "300s",
                    },
                    "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                    "forward": true,
                    "payload_in_metadata": "entra",
                    "jwt_cache_config": {"jwt_cache_size": 1024},
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "entra"}}],
            },
        }),
        json!({
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"engineers": {
                    "permissions": [{"any": true}],
                    "principals": [{"metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": "entra"}, {"key": "groups"}],
                        "value": {"list_match": {"one_of": {"string_match": {"exact": ENGINEERS}}}},
                    }}],
                }}},
            },
        }),
    ]
}

/// The do-nothing module `make bench` builds beside the filter.
fn noop_filter() -> anyhow::Result<std::path::PathBuf> {
    let path = airlock_tests::paths::repo_root()
        .join("target/wasm32-wasip1/wasm/airlock_noop_filter.wasm");
    ensure!(
        path.is_file(),
        "{} is missing: run `make bench`, which builds it",
        path.display()
    );
    Ok(path)
}

/// `count` tokens of callers the filter has not seen: each costs a full verification.
fn cold_tokens(issuer: &DevIssuer, count: usize) -> anyhow::Result<Vec<String>> {
    (0..count)
        .map(|i| {
            let mut request = airlock_tests::gateway::caller(&[ENGINEERS]);
            request.oid = format!("oid-cold-{i}");
            Ok(issuer.mint(&request)?)
        })
        .collect()
}

/// What the request path runs on: the bench gateway's configuration,
/// policies and keys, a token for the cache and tokens for none.
fn request_path_inputs(
    issuer: &DevIssuer,
    warm: String,
    cold: Vec<String>,
) -> anyhow::Result<airlock_request_path::Inputs> {
    Ok(airlock_request_path::Inputs {
        config: filter_config(&airlock_tests::issuer::jwks_path(), json!({})),
        policies: policies(),
        jwks: issuer.jwks()?,
        tenant: TENANT.into(),
        warm,
        cold,
    })
}

const CALLGRIND_WARM: usize = 1000;
const CALLGRIND_COLD: usize = 20;
/// Cold tokens the V8 timing spends (in batches of 20) when no Envoy run
/// minted them.
const V8_COLD: usize = 1000;

/// Callgrind's counts (unless `--no-callgrind`) and the V8 timing, each
/// with why it is missing if it could not be measured.
fn request_cost(inputs: &airlock_request_path::Inputs, args: &RunArgs) -> report::RequestCost {
    let callgrind = match args.no_callgrind {
        true => Err("--no-callgrind".into()),
        false => callgrind(inputs, args.callgrind_dir.as_deref()).map_err(|e| format!("{e:#}")),
    };
    report::RequestCost {
        callgrind,
        v8: v8_timing(inputs).map_err(|e| format!("{e:#}")),
    }
}

/// The request path built for wasm32-wasip1 (`make bench` builds it with
/// the filter's profile), timed under Node's V8.
fn v8_timing(
    inputs: &airlock_request_path::Inputs,
) -> anyhow::Result<airlock_request_path::Timing> {
    let root = airlock_tests::paths::repo_root();
    let module = root.join("target/wasm32-wasip1/wasm/airlock-request-path.wasm");
    ensure!(
        module.is_file(),
        "{} is missing: run `make bench`, which builds it",
        module.display()
    );
    let dir = tempfile::tempdir()?;
    inputs.write(&dir.path().join("inputs.json"))?;
    eprintln!("bench: the request path in V8");
    let output = std::process::Command::new("node")
        .arg("--no-warnings")
        .arg(root.join("bench/request-path/v8.mjs"))
        .arg(&module)
        .arg(dir.path())
        .arg("inputs.json")
        .output()
        .context("running node (Node.js 20 or newer)")?;
    ensure!(
        output.status.success(),
        "the request path in V8 failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let timing: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("the request path in V8 printed no timing")?;
    let nanos = |field: &str| {
        timing
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .map(Duration::from_nanos)
            .with_context(|| format!("no {field} in {timing}"))
    };
    Ok(airlock_request_path::Timing {
        warm: nanos("warm_ns")?,
        cold: nanos("cold_ns")?,
    })
}

/// Instructions per request of the request path, warm and cold: each count
/// is (instructions over N requests − over none) / N, so setup cancels out.
fn callgrind(
    inputs: &airlock_request_path::Inputs,
    keep: Option<&std::path::Path>,
) -> anyhow::Result<report::Callgrind> {
    let scratch = tempfile::tempdir()?;
    let dir = match keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir
        }
        None => scratch.path(),
    };
    let path = dir.join("inputs.json");
    inputs.write(&path)?;
    let count = |cold: bool, iterations: usize| -> anyhow::Result<u64> {
        let name = match (cold, iterations) {
            (_, 0) => "baseline",
            (true, _) => "cold",
            (false, _) => "warm",
        };
        eprintln!("bench: callgrind, {iterations} {name} request(s)");
        let output = std::process::Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--collect-atstart=no")
            .arg(format!(
                "--toggle-collect={}",
                airlock_request_path::COLLECT
            ))
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join(format!("{name}.out")).display()
            ))
            .arg(std::env::current_exe()?)
            .args(["request-path", "--inputs"])
            .arg(&path)
            .args(["--iterations", &iterations.to_string()])
            .args(cold.then_some("--cold"))
            .output()
            .context("running valgrind (Debian package valgrind)")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.success(), "valgrind failed:\n{stderr}");
        stderr
            .lines()
            .find_map(|l| {
                l.split_once("Collected :")
                    .map(|(_, n)| n.trim().parse::<u64>())
            })
            .context("callgrind printed no count")?
            .context("callgrind's count")
    };
    let baseline = count(false, 0)?;
    let per = |total: u64, n: usize| total.saturating_sub(baseline) / n as u64;
    Ok(report::Callgrind {
        warm: per(count(false, CALLGRIND_WARM)?, CALLGRIND_WARM),
        cold: per(count(true, CALLGRIND_COLD)?, CALLGRIND_COLD),
    })
}
