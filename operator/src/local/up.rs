//! `airlock up`: the development issuer (unless a real tenant is trusted),
//! the approval service on the SQLite store, Envoy running the filter with
//! the configuration the operator renders, and optionally the demo server.

use super::{Endpoints, LOCAL_AUDIENCE, LOCAL_TENANT, StateDir, policy_files};
use crate::approvals::service::{Api, ApprovalService, Catalog, GatewayCredentials, ServiceConfig};
use crate::approvals::store::SqliteStore;
use crate::audit::trail::AuditLog;
use crate::dev_issuer::DevIssuer;
use crate::render::envoy::{self, Bootstrap, Cluster, FilterModule, MemoryPressure};
use airlock_policy::entra::{OtherIssuer, TokenVersion, TrustConfig};
use airlock_policy::gateway::config::{
    DEFAULT_JWKS_MIN_REFRESH_SECONDS, FilterConfig, Governed, PolicyDocument,
};
use anyhow::{Context, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// Options of `airlock up`.
#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("server").required(true).args(["demo", "upstream"]))]
pub struct UpArgs {
    /// Put the demo MCP server (get_status, deploy_model, update_runtime_config, read_secret) behind the gateway.
    #[arg(long)]
    pub demo: bool,
    /// Put this MCP server behind the gateway: its Streamable HTTP URL, e.g. http://127.0.0.1:3000/mcp.
    #[arg(long)]
    pub upstream: Option<String>,
    /// ApprovalPolicy YAML, as `kubectl apply` takes it (repeatable; multi-document files welcome).
    #[arg(long = "policy")]
    pub policies: Vec<PathBuf>,
    /// The server's name, as policies select it.
    #[arg(long, default_value = "local")]
    pub name: String,
    /// The server's namespace: policies apply to servers of their own namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A label of the server, `key=value`, for policies' `matchLabels` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Gateway port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8421)]
    pub port: u16,
    /// Approval service port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub approvals_port: u16,
    /// Trust this Entra tenant (v1 and v2 issuers, Entra's JWKS) instead of the development issuer.
    #[arg(long, requires = "audience")]
    pub tenant: Option<String>,
    /// The audience (application ID URI or client id) tokens must carry, with --tenant.
    #[arg(long, requires = "tenant")]
    pub audience: Option<String>,
    /// Fetch the tenant's signing keys from this URL instead of Entra's (a mirror, a test issuer).
    #[arg(long, requires = "tenant")]
    pub jwks_url: Option<String>,
    /// Also trust tokens whose `iss` is this URL, when the issuer behind --jwks-url is not Entra's
    /// (its tokens still carry Entra's claims: tid, oid, groups).
    #[arg(long, requires = "jwks_url")]
    pub issuer: Option<String>,
    /// The Envoy binary (default: .tools/bin/envoy, then envoy on PATH).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// The filter module (default: target/wasm32-wasip1/wasm/airlock_filter.wasm).
    #[arg(long)]
    pub filter: Option<PathBuf>,
    /// Where local state lives: approvals, audit log, issuer key, run files.
    #[arg(long, default_value = ".airlock")]
    pub state_dir: PathBuf,
    /// Longest a call is held waiting for approval before the caller is told to retry.
    #[arg(long, default_value_t = 50)]
    pub max_hold_seconds: u64,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("a label is key=value, not {text:?}")),
    }
}

fn first_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

fn find_envoy(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from(".tools/bin/envoy")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("envoy")));
    }
    first_existing(&candidates)
        .context("no Envoy found: run `make setup` in the repository root, or pass --envoy PATH")
}

fn find_filter(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/wasm32-wasip1/wasm/airlock_filter.wasm"));
    if !path.is_file() {
        bail!(
            "the filter module {} is missing: run `make wasm` in the repository root, or pass --filter PATH",
            path.display()
        );
    }
    // Envoy resolves the path itself, from its own working directory.
    Ok(std::fs::canonicalize(&path)?)
}

async fn listen(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole gateway, running. Dropping it stops everything.
pub struct Running {
    pub endpoints: Endpoints,
    /// `namespace/name` of the one server.
    pub server: String,
    pub policies: Vec<String>,
    envoy: tokio::process::Child,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state: StateDir,
    /// Held while running: see [`StateDir::lock`].
    _lock: std::fs::File,
}

impl Running {
    pub async fn start(args: &UpArgs) -> anyhow::Result<Running> {
        let state = StateDir::new(&args.state_dir);
        let lock = state.lock()?;
        if args.port != 0 {
            // Envoy would fail on it too, but only with a line in its log.
            std::net::TcpListener::bind(("127.0.0.1", args.port)).with_context(|| {
                format!(
                    "port {} on 127.0.0.1 is taken (another gateway?): stop that, or choose --port",
                    args.port
                )
            })?;
        }
        let envoy_binary = find_envoy(args.envoy.as_deref())?;
        let filter = find_filter(args.filter.as_deref())?;
        let server = format!("{}/{}", args.namespace, args.name);
        let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
        let loaded = policy_files::load(&args.policies, &args.namespace)?;
        let policies: Vec<_> = loaded.into_iter().map(|(policy, _)| policy).collect();
        let governed = Governed {
            name: server.clone(),
            labels,
            ..Governed::default()
        };
        let governing = PolicyDocument::for_server(&governed, &policies, &[]);
        let mut tasks = Vec::new();

        // Whose tokens are trusted, and where their keys are.
        let (tenant, audience, jwks_url, issuer_url) = match (&args.tenant, &args.audience) {
            (Some(tenant), Some(audience)) => {
                let url = args.jwks_url.clone().unwrap_or_else(|| {
                    format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
                });
                (tenant.clone(), audience.clone(), url, None)
            }
            _ => {
                let issuer = Arc::new(DevIssuer::persistent(LOCAL_TENANT, &state.issuer_key())?);
                let (address, task) = issuer.serve(listen(0).await?)?;
                tasks.push(task);
                let url = format!("http://{address}/{LOCAL_TENANT}/discovery/v2.0/keys");
                (
                    LOCAL_TENANT.to_string(),
                    LOCAL_AUDIENCE.to_string(),
                    url.clone(),
                    Some(url),
                )
            }
        };
        let trust = TrustConfig {
            clock_skew_seconds: 120,
            issuers: args
                .issuer
                .iter()
                .map(|issuer| OtherIssuer {
                    issuer: issuer.clone(),
                    tenant: tenant.clone(),
                    version: TokenVersion::V2,
                })
                .collect(),
            ..TrustConfig::tenant(&tenant, &audience)
        };

        // The approval service.
        let credential = random_secret();
        let catalog = Catalog::new(vec![governed], policies).map_err(anyhow::Error::msg)?;
        let service = ApprovalService::new(
            SqliteStore::open(&state.approvals_db())?,
            ServiceConfig {
                trust: trust.clone(),
                // One machine, one development audience: the people's API
                // takes the same tokens `airlock token` mints for calls.
                people: trust.clone(),
                approver_access: None,
                notifier: None,
                jwks: vec![(tenant.clone(), jwks_url.clone())],
                gateway_credentials: GatewayCredentials::Shared(credential.clone()),
                max_pending_per_principal: 20,
                jwks_min_refresh: Duration::from_secs(if issuer_url.is_some() {
                    5
                } else {
                    DEFAULT_JWKS_MIN_REFRESH_SECONDS
                }),
            },
            catalog,
            AuditLog::open(&state.audit_log())?,
        )
        .map_err(anyhow::Error::msg)?;
        let approvals_listener = listen(args.approvals_port).await?;
        let approvals_address = approvals_listener.local_addr()?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = service
                .serve(vec![(Api::All, approvals_listener.into())])
                .await
            {
                eprintln!("approval service stopped: {e}");
            }
        }));

        // The MCP server behind the gateway.
        let (upstream, upstream_path) = match &args.upstream {
            Some(url) => Cluster::for_url("upstream", url)?,
            None => {
                let listener = listen(0).await?;
                let port = listener.local_addr()?.port();
                tasks.push(crate::demo_server::serve(
                    listener,
                    crate::demo_server::Hosts::Loopback,
                ));
                (Cluster::loopback("upstream", port), "/mcp".to_string())
            }
        };

        // Envoy with the filter, configured as the operator configures a sidecar.
        let (jwks, jwks_path) = Cluster::for_url("jwks", &jwks_url)?;
        let approvals = Cluster::loopback("approvals", approvals_address.port()).retried();
        let filter_config = json!({
            "server": server,
            "mcpPath": upstream_path,
            "auth": trust,
            "jwks": [{"tenant": tenant, "cluster": "jwks", "path": jwks_path, "authority": jwks.host}],
            "approvals": {"cluster": approvals.name, "holdCluster": approvals.retrying_name(),
                "authority": "airlock-approvals", "credential": credential},
            "maxHoldSeconds": args.max_hold_seconds,
        });
        FilterConfig::from_json(filter_config.to_string().as_bytes())?;
        let bootstrap = Bootstrap {
            listen_port: args.port,
            in_pod: None,
            upstream,
            filter: Some(FilterModule {
                path: filter,
                config: filter_config,
            }),
            clusters: vec![jwks, approvals],
            memory: MemoryPressure::Unwatched,
        };
        let run = state.run_dir();
        let config_path = run.join("envoy.json");
        let admin_path = run.join("envoy-admin-address");
        let _ = std::fs::remove_file(&admin_path);
        std::fs::write(&config_path, bootstrap.render().to_string())?;
        let log = std::fs::File::create(run.join("envoy.log"))?;
        let mut envoy = tokio::process::Command::new(&envoy_binary)
            .args(envoy::arguments(&config_path, 2, &admin_path))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", envoy_binary.display()))?;
        let log_path = run.join("envoy.log");
        let (envoy_admin, port) = envoy::wait_until_serving(
            &admin_path,
            || match envoy.try_wait()? {
                Some(status) => bail!(
                    "Envoy exited ({status}); see {}:\n{}",
                    log_path.display(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ),
                None => Ok(()),
            },
            Duration::from_secs(60),
        )
        .await?;

        let endpoints = Endpoints {
            gateway: format!("http://127.0.0.1:{port}{upstream_path}"),
            approvals: format!("http://{approvals_address}"),
            issuer: issuer_url,
            audit_log: state.audit_log(),
            envoy_admin,
            tenant,
            audience,
        };
        std::fs::write(
            state.endpoints_file(),
            serde_json::to_string_pretty(&endpoints)?,
        )?;
        Ok(Running {
            endpoints,
            server,
            policies: governing.policies.iter().map(|p| p.name.clone()).collect(),
            envoy,
            tasks,
            state,
            _lock: lock,
        })
    }

    /// What a person needs to start using it.
    pub fn describe(&self) -> String {
        let e = &self.endpoints;
        let policies = if self.policies.is_empty() {
            "none: every call is denied".to_string()
        } else {
            self.policies.join(", ")
        };
        let mut text = format!(
            "Airlock is up for MCP server {}.\n  gateway (MCP endpoint):  {}\n  approval service:        {}\n",
            self.server, e.gateway, e.approvals
        );
        if let Some(issuer) = &e.issuer {
            text.push_str(&format!("  development issuer:      {issuer}\n"));
        }
        text.push_str(&format!(
            "  audit log:               {}\n  Envoy admin:             {}\n  policies in force:       {policies}\n  trusted tenant:          {} (audience {})\nEndpoints are in {}. Stop with Ctrl-C.\n",
            e.audit_log.display(),
            e.envoy_admin,
            e.tenant,
            e.audience,
            self.state.endpoints_file().display()
        ));
        if e.issuer.is_some() {
            text.push_str(
                "Mint a development token: airlock token --user ada --groups engineers\n",
            );
        }
        text
    }

    /// Resolves when Envoy exits on its own (it should not).
    pub async fn envoy_exited(&mut self) -> anyhow::Result<()> {
        let status = self.envoy.wait().await?;
        bail!("Envoy exited unexpectedly ({status})")
    }

    /// Stops Envoy and every server, and removes the endpoints file.
    pub async fn stop(mut self) {
        let _ = self.envoy.kill().await;
        let _ = std::fs::remove_file(self.state.endpoints_file());
        // Dropping `self` aborts the servers' tasks.
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs until Ctrl-C or SIGTERM, then stops everything.
pub async fn run(args: &UpArgs) -> anyhow::Result<()> {
    let mut running = Running::start(args).await?;
    print!("{}", running.describe());
    let outcome = tokio::select! {
        requested = crate::shutdown::requested() => requested.map_err(anyhow::Error::from),
        exited = running.envoy_exited() => exited,
    };
    eprintln!("stopping");
    running.stop().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_at_the_equals_sign() {
        assert_eq!(parse_label("team=ml"), Ok(("team".into(), "ml".into())));
        assert!(parse_label("=ml").is_err());
    }
}
