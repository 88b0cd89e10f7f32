//! The Envoy bootstrap Airlock runs: one listener in front of the MCP server,
//! the filter (V8, fail closed) configured with the gateway's plugin
//! configuration, and the clusters the filter calls out to. `airlock up`
//! renders it for a local Envoy; the test harness renders the same.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An upstream Envoy reaches: a host and port, over TLS or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// TLS with SNI and the system's CA bundle (Entra's JWKS endpoint).
    pub tls: bool,
}

impl Cluster {
    /// A plain-HTTP cluster on 127.0.0.1.
    pub fn loopback(name: &str, port: u16) -> Cluster {
        Cluster {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            tls: false,
        }
    }
}

/// The proxy-wasm module and its plugin configuration.
#[derive(Debug, Clone)]
pub struct FilterModule {
    pub path: PathBuf,
    pub config: Value,
}

#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Listener port on 127.0.0.1; 0 picks a free one.
    pub listen_port: u16,
    /// The MCP server; routes go to it.
    pub upstream: Cluster,
    pub filter: Option<FilterModule>,
    /// More clusters the filter calls out to (JWKS, approval service).
    pub clusters: Vec<Cluster>,
}

/// CA bundle for TLS clusters (Debian's location).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn address(host: &str, port: u16) -> Value {
    json!({"socket_address": {"address": host, "port_value": port}})
}

fn render_cluster(cluster: &Cluster) -> Value {
    let literal = cluster.host.parse::<std::net::IpAddr>().is_ok();
    let mut rendered = json!({
        "name": cluster.name,
        "type": if literal { "STATIC" } else { "LOGICAL_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": cluster.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(&cluster.host, cluster.port)}}]}],
        },
    });
    if cluster.tls {
        rendered["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": cluster.host,
                "common_tls_context": {"validation_context": {"trusted_ca": {"filename": CA_BUNDLE}}},
            },
        });
    }
    rendered
}

impl Bootstrap {
    pub fn render(&self) -> Value {
        let mut http_filters = Vec::new();
        if let Some(filter) = &self.filter {
            http_filters.push(json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "airlock",
                        "root_id": "airlock",
                        // A crashed or unloadable VM refuses; it never lets traffic bypass it.
                        "failure_policy": "FAIL_CLOSED",
                        // Lets the filter stop on headers and still receive the body to judge.
                        "allow_on_headers_stop_iteration": true,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": filter.config.to_string(),
                        },
                        "vm_config": {
                            "vm_id": "airlock",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": filter.path}},
                        },
                    },
                },
            }));
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let clusters: Vec<Value> = std::iter::once(&self.upstream)
            .chain(&self.clusters)
            .map(render_cluster)
            .collect();
        json!({
            "admin": {"address": address("127.0.0.1", 0)},
            "static_resources": {
                "listeners": [{
                    "name": "mcp",
                    "address": address("127.0.0.1", self.listen_port),
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
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": self.upstream.name, "timeout": "0s"}}],
                            }]},
                            "http_filters": http_filters,
                        },
                    }]}],
                }],
                "clusters": clusters,
            },
        })
    }
}

/// The command-line arguments that run `config` with `concurrency` workers,
/// writing the admin address to `admin_address_path`.
pub fn arguments(config: &Path, concurrency: u32, admin_address_path: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        config.display().to_string(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "warn".into(),
        "--admin-address-path".into(),
        admin_address_path.display().to_string(),
    ]
}

/// Waits until a starting Envoy serves: returns its admin URL and the port
/// its listener bound. `alive` fails when the process has exited.
pub async fn wait_until_serving(
    admin_address_path: &Path,
    mut alive: impl FnMut() -> anyhow::Result<()>,
    timeout: Duration,
) -> anyhow::Result<(String, u16)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let http = reqwest::Client::new();
    loop {
        alive()?;
        let admin = std::fs::read_to_string(admin_address_path).unwrap_or_default();
        if !admin.trim().is_empty() {
            let admin_url = format!("http://{}", admin.trim());
            let listeners = http
                .get(format!("{admin_url}/listeners?format=json"))
                .send()
                .await;
            if let Ok(response) = listeners
                && let Ok(listeners) = response.json::<Value>().await
                && let Some(port) = listeners["listener_statuses"][0]["local_address"]
                    ["socket_address"]["port_value"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
            {
                return Ok((admin_url, port));
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("Envoy did not start serving within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_clusters_resolve_by_name_and_verify_the_server() {
        let bootstrap = Bootstrap {
            listen_port: 8421,
            upstream: Cluster::loopback("upstream", 9000),
            filter: None,
            clusters: vec![Cluster {
                name: "jwks".into(),
                host: "login.microsoftonline.com".into(),
                port: 443,
                tls: true,
            }],
        };
        let rendered = bootstrap.render();
        let clusters = &rendered["static_resources"]["clusters"];
        assert_eq!(clusters[0]["type"], "STATIC");
        assert!(clusters[0].get("transport_socket").is_none());
        assert_eq!(clusters[1]["type"], "LOGICAL_DNS");
        assert_eq!(
            clusters[1]["transport_socket"]["typed_config"]["sni"],
            "login.microsoftonline.com"
        );
        let listener = &rendered["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 8421);
        assert_eq!(
            listener["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
    }
}
