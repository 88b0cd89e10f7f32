//! The Envoy bootstrap Airlock runs: one listener in front of the MCP server,
//! the filter (V8, fail closed) configured with the gateway's plugin
//! configuration, and the clusters the filter calls out to. `airlock up`
//! renders it for a local Envoy, the test harness renders the same, and the
//! operator renders it for each McpServer's sidecar (with [`InPod`]).

use airlock_policy::gateway::config::CLOCK_CLUSTER;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An upstream Envoy reaches: a host and port, over TLS or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// TLS with SNI, the server's certificate checked for the host's name
    /// (not only its chain) against the system's CA bundle (Entra's JWKS
    /// endpoint) or [`Cluster::trusted_ca`].
    pub tls: bool,
    /// The CAs to trust instead of the system's bundle: the operator's own,
    /// for the approval service.
    pub trusted_ca: Option<WatchedTrust>,
    /// Also reachable as [`Cluster::retrying_name`]: an internal listener
    /// whose route retries, with backoff, a request that never reached a
    /// peer (connect failure, refused stream, reset before the request was
    /// sent) — safe for any method. The filter's own calls have no retries:
    /// without this, a replica that just died, or a Service endpoint not
    /// yet removed, fails a call at once. Envoy's main thread has no
    /// internal listeners, so only streams use it.
    pub retried: bool,
    /// A credential Envoy itself sets on every request to this cluster.
    pub credential: Option<FileCredential>,
}

/// A credential kept in a file that Envoy sets as `header` on every request
/// to a cluster, replacing whatever the request carried. The wasm sandbox
/// cannot read files, and should not hold the credential anyway: Envoy
/// reads it through a file-based SDS secret, re-read whenever something in
/// the file's directory is moved — a kubelet-projected token is renewed by
/// swapping a `..data` symlink, so the next request carries the new one.
/// Without the file, requests to the cluster are refused (401) by Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCredential {
    pub header: String,
    /// The credential itself, e.g. a projected ServiceAccount token.
    pub file: PathBuf,
    /// Where [`FileCredential::sds_document`] is placed for Envoy to read.
    pub sds_file: PathBuf,
}

/// CAs kept in a file that Envoy re-reads, through a file-based SDS
/// validation context, whenever something in the file's directory is moved
/// — a ConfigMap volume is updated by swapping a `..data` symlink — so a CA
/// rotation reaches running sidecars without restarting them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedTrust {
    /// The CA bundle (PEM).
    pub ca_file: PathBuf,
    /// Where [`WatchedTrust::sds_document`] is placed for Envoy to read.
    pub sds_file: PathBuf,
}

/// The SDS secret name of a cluster's trusted CAs.
const TRUST_SECRET: &str = "trusted-ca";

impl WatchedTrust {
    /// The SDS document naming the bundle's file, to be written at
    /// [`WatchedTrust::sds_file`].
    pub fn sds_document(&self) -> Value {
        json!({"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": TRUST_SECRET,
            "validation_context": {"trusted_ca": {"filename": self.ca_file}},
        }]})
    }
}

/// The SDS secret name of a cluster's credential.
const CREDENTIAL_SECRET: &str = "credential";

impl FileCredential {
    /// The SDS document naming the credential's file, to be written at
    /// [`FileCredential::sds_file`].
    pub fn sds_document(&self) -> Value {
        json!({"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": CREDENTIAL_SECRET,
            "generic_secret": {"secret": {"filename": self.file}},
        }]})
    }

    /// The upstream HTTP filters that set the credential, ending in the codec.
    fn upstream_filters(&self) -> Value {
        let watched = self.file.parent().unwrap_or(Path::new("/"));
        json!([{
            "name": "envoy.filters.http.credential_injector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                // Whatever the filter or a caller put in the header is replaced.
                "overwrite": true,
                "credential": {
                    "name": "envoy.http.injected_credentials.generic",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                        "header": self.header,
                        "credential": {"name": CREDENTIAL_SECRET, "sds_config": {"path_config_source": {
                            "path": self.sds_file, "watched_directory": {"path": watched}}}},
                    },
                },
            },
        }, {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
        }])
    }
}

/// A URL that cannot name an Envoy cluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{url}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl Cluster {
    /// The cluster named `name` that reaches `url`'s host, and the path (with
    /// any query) to request on it.
    pub fn for_url(name: &str, url: &str) -> Result<(Cluster, String), UrlError> {
        let error = |reason: &str| UrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| error("not a URL"))?;
        let tls = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(error("the scheme is not http or https")),
        };
        let host = parsed.host_str().ok_or_else(|| error("names no host"))?;
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| error("names no port"))?;
        let path = match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_string(),
        };
        let cluster = Cluster {
            name: name.to_string(),
            host: host.to_string(),
            port,
            tls,
            trusted_ca: None,
            retried: false,
            credential: None,
        };
        Ok((cluster, path))
    }

    /// A plain-HTTP cluster on 127.0.0.1.
    pub fn loopback(name: &str, port: u16) -> Cluster {
        Cluster {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            tls: false,
            trusted_ca: None,
            retried: false,
            credential: None,
        }
    }

    /// This cluster, and a second one that retries requests that never
    /// reached a peer.
    pub fn retried(self) -> Cluster {
        Cluster {
            retried: true,
            ..self
        }
    }

    /// This cluster, trusting only the CAs in `trust` for its server's certificate.
    pub fn trusting(self, trust: WatchedTrust) -> Cluster {
        Cluster {
            trusted_ca: Some(trust),
            ..self
        }
    }

    /// This cluster, with `credential` set on every request to it.
    pub fn with_credential(self, credential: FileCredential) -> Cluster {
        Cluster {
            credential: Some(credential),
            ..self
        }
    }

    /// The name of the retrying cluster, when this one has one.
    pub fn retrying_name(&self) -> Option<String> {
        self.retried.then(|| format!("{}_retried", self.name))
    }
}

/// Retries of a [`Cluster::retried`]: a few seconds of backoff in all,
/// enough for kube-proxy to drop a dead endpoint.
fn retry_policy() -> Value {
    json!({"retry_on": "connect-failure,refused-stream,reset-before-request",
        "num_retries": 5, "retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}})
}

/// The proxy-wasm module and its plugin configuration.
#[derive(Debug, Clone)]
pub struct FilterModule {
    pub path: PathBuf,
    pub config: Value,
}

/// How a sidecar's Envoy differs from a local one: it serves on the pod's
/// address, and its admin interface is a Unix socket, never TCP — the MCP
/// container shares the pod's network namespace and could otherwise reach
/// it. A second listener serves only readiness and Prometheus stats, from
/// that socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPod {
    pub admin_socket: PathBuf,
    pub stats_port: u16,
}

/// The paths the stats listener serves from the admin interface.
pub const READY_PATH: &str = "/ready";
pub const STATS_PATH: &str = "/stats/prometheus";

/// The filter's metrics name what they count in the last part of their name
/// (`airlock.requests.Deny`); these tags make it a label instead
/// (`airlock_requests{decision="Deny"}`), so a dashboard
/// sums and splits one series.
fn filter_stats_tags() -> Value {
    let tag = |name: &str, metric: &str| json!({"tag_name": name, "regex": format!("^wasmcustom\\.airlock\\.{metric}(\\.([^.]+))$")});
    json!([
        tag("decision", "requests"),
        tag("reason", "token_failures"),
        tag("action", "dry_run"),
    ])
}

#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Listener port (on 127.0.0.1, or on every address in a pod); 0 picks a free one.
    pub listen_port: u16,
    /// Set for a sidecar; `None` for a local Envoy with its admin on 127.0.0.1.
    pub in_pod: Option<InPod>,
    /// The MCP server; routes go to it.
    pub upstream: Cluster,
    pub filter: Option<FilterModule>,
    /// More clusters the filter calls out to (JWKS, approval service).
    pub clusters: Vec<Cluster>,
    pub memory: MemoryPressure,
}

/// What tells Envoy that its memory is running out, so that it refuses new
/// requests (503 `envoy overloaded`) and lets the calls under way finish,
/// instead of growing until the kernel kills it mid-call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryPressure {
    /// Nothing: `airlock up` on a workstation, where no limit is set.
    Unwatched,
    /// Usage against the container's cgroup memory limit: a sidecar.
    Cgroup,
    /// A file holding the pressure, from 0 to 1 (Envoy's injected
    /// resource): how the tests apply pressure.
    File(PathBuf),
}

/// Pressure from which Envoy returns freed memory to the system.
const SHRINK_HEAP_AT: f64 = 0.90;
/// Pressure from which Envoy refuses new requests.
const STOP_ACCEPTING_AT: f64 = 0.95;

impl MemoryPressure {
    /// The bootstrap's `overload_manager`, if anything is watched.
    fn overload_manager(&self) -> Option<Value> {
        let (name, config) = match self {
            MemoryPressure::Unwatched => return None,
            MemoryPressure::Cgroup => (
                "envoy.resource_monitors.cgroup_memory",
                json!({"@type": "type.googleapis.com/envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig"}),
            ),
            MemoryPressure::File(path) => (
                "envoy.resource_monitors.injected_resource",
                json!({"@type": "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
                    "filename": path}),
            ),
        };
        let action = |action: &str, at: f64| json!({"name": action, "triggers": [{"name": name, "threshold": {"value": at}}]});
        Some(json!({
            "refresh_interval": "0.25s",
            "resource_monitors": [{"name": name, "typed_config": config}],
            "actions": [
                action("envoy.overload_actions.shrink_heap", SHRINK_HEAP_AT),
                action("envoy.overload_actions.stop_accepting_requests", STOP_ACCEPTING_AT),
            ],
        }))
    }
}

/// CA bundle for TLS clusters (Debian's location).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn address(host: &str, port: u16) -> Value {
    json!({"socket_address": {"address": host, "port_value": port}})
}

fn http_connection_manager(stat_prefix: &str, virtual_host: Value, http_filters: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {"virtual_hosts": [virtual_host]},
            "http_filters": http_filters,
        },
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

/// The clusters and listeners that reach `cluster`: the cluster itself,
/// and when it is retried, its retrying cluster into an internal listener
/// whose route retries onto it.
fn render_cluster(cluster: &Cluster) -> (Vec<Value>, Option<Value>) {
    let direct = direct_cluster(cluster);
    let Some(retrying) = cluster.retrying_name() else {
        return (vec![direct], None);
    };
    let listener = format!("{}_retries", cluster.name);
    let route = json!({"match": {"prefix": "/"}, "route": {
        // The filter's own timeout on each call governs, long-polls included.
        "cluster": cluster.name, "timeout": "0s", "retry_policy": retry_policy()}});
    let internal = json!({
        "name": retrying,
        "load_assignment": {"cluster_name": retrying, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"envoy_internal_address": {"server_listener_name": listener}}}}]}]},
    });
    let hcm = http_connection_manager(
        &listener,
        json!({"name": listener, "domains": ["*"], "routes": [route]}),
        json!([router()]),
    );
    let listener =
        json!({"name": listener, "internal_listener": {}, "filter_chains": [{"filters": [hcm]}]});
    (vec![direct, internal], Some(listener))
}

/// The filter's clock ([`CLOCK_CLUSTER`]): an internal listener that
/// answers 204 after the delay a request asks for in milliseconds
/// (`x-envoy-fault-delay-request`), so a waiting stream can sleep.
fn clock() -> (Value, Value) {
    let cluster = json!({
        "name": CLOCK_CLUSTER,
        "load_assignment": {"cluster_name": CLOCK_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"envoy_internal_address": {"server_listener_name": CLOCK_CLUSTER}}}}]}]},
    });
    let delay = json!({
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"header_delay": {}, "percentage": {"numerator": 100}},
        },
    });
    let hcm = http_connection_manager(
        CLOCK_CLUSTER,
        json!({"name": CLOCK_CLUSTER, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 204}}]}),
        json!([delay, router()]),
    );
    let listener = json!({"name": CLOCK_CLUSTER, "internal_listener": {}, "filter_chains": [{"filters": [hcm]}]});
    (cluster, listener)
}

fn direct_cluster(cluster: &Cluster) -> Value {
    let literal = cluster.host.parse::<std::net::IpAddr>().is_ok();
    let mut rendered = json!({
        "name": cluster.name,
        "type": if literal { "STATIC" } else { "LOGICAL_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        // A peer that vanished without closing (a killed pod) is found within
        // seconds, so a long-poll or a pooled connection to it fails over
        // instead of hanging until its timeout.
        "upstream_connection_options": {"tcp_keepalive": {
            "keepalive_time": 3, "keepalive_interval": 1, "keepalive_probes": 3}},
        "load_assignment": {
            "cluster_name": cluster.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(&cluster.host, cluster.port)}}]}],
        },
    });
    if let Some(credential) = &cluster.credential {
        rendered["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": credential.upstream_filters(),
            },
        });
    }
    if cluster.tls {
        rendered["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": cluster.host,
                "common_tls_context": validation(cluster),
            },
        });
    }
    rendered
}

/// How a TLS cluster checks its server: this host's name (any certificate
/// the CA signed is not enough), signed by the system's CAs or the watched ones.
fn validation(cluster: &Cluster) -> Value {
    let name = json!([{"san_type": "DNS", "matcher": {"exact": cluster.host}}]);
    match &cluster.trusted_ca {
        None => json!({"validation_context": {
            "trusted_ca": {"filename": CA_BUNDLE},
            "match_typed_subject_alt_names": name,
        }}),
        Some(trust) => {
            let watched = trust.sds_file.parent().unwrap_or(Path::new("/"));
            json!({"combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": name},
                "validation_context_sds_secret_config": {"name": TRUST_SECRET, "sds_config": {
                    "path_config_source": {"path": trust.sds_file, "watched_directory": {"path": watched}}}},
            }})
        }
    }
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
        http_filters.push(router());
        let mut clusters = Vec::new();
        let mut internal_listeners = Vec::new();
        for cluster in std::iter::once(&self.upstream).chain(&self.clusters) {
            let (rendered, listener) = render_cluster(cluster);
            clusters.extend(rendered);
            internal_listeners.extend(listener);
        }
        if self.filter.is_some() {
            let (cluster, listener) = clock();
            clusters.push(cluster);
            internal_listeners.push(listener);
        }
        let (admin, listen_host) = match &self.in_pod {
            Some(pod) => (json!({"pipe": {"path": pod.admin_socket}}), "0.0.0.0"),
            None => (address("127.0.0.1", 0), "127.0.0.1"),
        };
        let mut mcp = http_connection_manager(
            "mcp",
            json!({
                "name": "mcp",
                "domains": ["*"],
                // Route timeout 0: the default 15 s would cut a held call.
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": self.upstream.name, "timeout": "0s"}}],
            }),
            Value::Array(http_filters),
        );
        // Held calls and SSE streams idle for long: keep this above any hold.
        mcp["typed_config"]["stream_idle_timeout"] = json!("300s");
        let mut listeners = vec![json!({
            "name": "mcp",
            "address": address(listen_host, self.listen_port),
            // One socket, shared by the workers: with SO_REUSEPORT another
            // process of the same user could bind the port too and take a
            // share of the connections.
            "enable_reuse_port": false,
            "filter_chains": [{"filters": [mcp]}],
        })];
        let has_internal_listeners = !internal_listeners.is_empty();
        listeners.extend(internal_listeners);
        if let Some(pod) = &self.in_pod {
            listeners.push(stats_listener(pod.stats_port));
            clusters.push(json!({
                "name": "admin",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "admin", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"pipe": {"path": pod.admin_socket}}}}]}]},
            }));
        }
        let mut bootstrap = json!({
            // SDS, which credentials are read through, requires a node.
            "node": {"id": "airlock-gateway", "cluster": "airlock"},
            "admin": {"address": admin},
            "stats_config": {"stats_tags": filter_stats_tags()},
            "static_resources": {
                "listeners": listeners,
                "clusters": clusters,
            },
        });
        if let Some(overload) = self.memory.overload_manager() {
            bootstrap["overload_manager"] = overload;
        }
        if has_internal_listeners {
            bootstrap["bootstrap_extensions"] = json!([{
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
            }]);
        }
        bootstrap
    }
}

/// Serves exactly [`READY_PATH`] and [`STATS_PATH`] from the admin
/// interface; anything else is a 404.
fn stats_listener(port: u16) -> Value {
    let route = |path: &str| json!({"match": {"path": path}, "route": {"cluster": "admin"}});
    let hcm = http_connection_manager(
        "stats",
        json!({"name": "stats", "domains": ["*"], "routes": [route(READY_PATH), route(STATS_PATH)]}),
        json!([router()]),
    );
    json!({
        "name": "stats",
        "address": address("0.0.0.0", port),
        "enable_reuse_port": false,
        "filter_chains": [{"filters": [hcm]}],
    })
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
    fn urls_split_into_cluster_parts() {
        let (cluster, path) = Cluster::for_url(
            "jwks",
            "https://login.microsoftonline.com/t/discovery/v2.0/keys",
        )
        .unwrap();
        assert_eq!(
            cluster,
            Cluster {
                name: "jwks".into(),
                host: "login.microsoftonline.com".into(),
                port: 443,
                tls: true,
                trusted_ca: None,
                retried: false,
                credential: None,
            }
        );
        assert_eq!(path, "/t/discovery/v2.0/keys");
        let (cluster, path) = Cluster::for_url("up", "http://127.0.0.1:3000/mcp?x=1").unwrap();
        assert_eq!(
            (cluster.port, cluster.tls, path.as_str()),
            (3000, false, "/mcp?x=1")
        );
        assert!(Cluster::for_url("x", "ftp://x/y").is_err());
        assert!(Cluster::for_url("x", "not a url").is_err());
    }

    #[test]
    fn tls_clusters_resolve_by_name_and_verify_the_server() {
        let bootstrap = Bootstrap {
            listen_port: 8421,
            in_pod: None,
            upstream: Cluster::loopback("upstream", 9000),
            filter: None,
            clusters: vec![Cluster {
                name: "jwks".into(),
                host: "login.microsoftonline.com".into(),
                port: 443,
                tls: true,
                trusted_ca: None,
                retried: false,
                credential: None,
            }],
            memory: MemoryPressure::Unwatched,
        };
        let rendered = bootstrap.render();
        let clusters = &rendered["static_resources"]["clusters"];
        assert_eq!(clusters[0]["type"], "STATIC");
        assert!(clusters[0].get("transport_socket").is_none());
        assert_eq!(clusters[1]["type"], "LOGICAL_DNS");
        let tls = &clusters[1]["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "login.microsoftonline.com");
        let validation = &tls["common_tls_context"]["validation_context"];
        assert_eq!(validation["trusted_ca"]["filename"], CA_BUNDLE);
        assert_eq!(
            validation["match_typed_subject_alt_names"],
            json!([{"san_type": "DNS", "matcher": {"exact": "login.microsoftonline.com"}}])
        );
        let listener = &rendered["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 8421);
        assert_eq!(
            listener["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
    }

    #[test]
    fn a_retried_cluster_is_also_reached_through_an_internal_listener_that_retries() {
        let bootstrap = Bootstrap {
            listen_port: 0,
            in_pod: None,
            upstream: Cluster::loopback("upstream", 9000),
            filter: None,
            clusters: vec![Cluster::loopback("approvals", 8443).retried()],
            memory: MemoryPressure::Unwatched,
        };
        let rendered = bootstrap.render();
        let resources = &rendered["static_resources"];
        let names: Vec<&str> = resources["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["upstream", "approvals", "approvals_retried"]);
        assert_eq!(
            resources["clusters"][2]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"],
            json!({"envoy_internal_address": {"server_listener_name": "approvals_retries"}})
        );
        let listener = &resources["listeners"][1];
        assert_eq!(listener["name"], "approvals_retries");
        let route = &listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
            [0]["routes"][0]["route"];
        assert_eq!(route["cluster"], "approvals");
        // Only failures before the request reached a peer: safe for a POST.
        assert_eq!(
            route["retry_policy"]["retry_on"],
            "connect-failure,refused-stream,reset-before-request"
        );
        assert_eq!(
            rendered["bootstrap_extensions"][0]["name"],
            "envoy.bootstrap.internal_listener"
        );
        // Without a retried cluster there is no internal listener at all.
        let plain = Bootstrap {
            clusters: vec![Cluster::loopback("approvals", 8443)],
            ..bootstrap
        }
        .render();
        assert!(plain.get("bootstrap_extensions").is_none());
    }

    #[test]
    fn a_filter_comes_with_the_clock_its_waiting_streams_sleep_on() {
        let with_filter = |filter: Option<FilterModule>| {
            Bootstrap {
                listen_port: 0,
                in_pod: None,
                upstream: Cluster::loopback("upstream", 9000),
                filter,
                clusters: Vec::new(),
                memory: MemoryPressure::Unwatched,
            }
            .render()
        };
        let rendered = with_filter(Some(FilterModule {
            path: PathBuf::from("/airlock.wasm"),
            config: json!({}),
        }));
        let resources = &rendered["static_resources"];
        let clock = &resources["clusters"][1];
        assert_eq!(clock["name"], CLOCK_CLUSTER);
        assert_eq!(
            clock["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"],
            json!({"envoy_internal_address": {"server_listener_name": CLOCK_CLUSTER}})
        );
        let hcm = &resources["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["http_filters"][0]["typed_config"]["delay"]["header_delay"],
            json!({})
        );
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["status"],
            204
        );
        assert_eq!(
            rendered["bootstrap_extensions"][0]["name"],
            "envoy.bootstrap.internal_listener"
        );
        // Plain Envoy (the benchmark's baseline) has no clock.
        let plain = with_filter(None);
        assert_eq!(
            plain["static_resources"]["clusters"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn watched_memory_pressure_refuses_new_requests_before_the_limit() {
        let render = |memory: MemoryPressure| {
            Bootstrap {
                listen_port: 0,
                in_pod: None,
                upstream: Cluster::loopback("upstream", 9000),
                filter: None,
                clusters: Vec::new(),
                memory,
            }
            .render()
        };
        let sidecar = render(MemoryPressure::Cgroup);
        let overload = &sidecar["overload_manager"];
        let monitor = "envoy.resource_monitors.cgroup_memory";
        assert_eq!(overload["resource_monitors"][0]["name"], monitor);
        let actions: Vec<(&str, &str, f64)> = overload["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let trigger = &a["triggers"][0];
                Some((
                    a["name"].as_str()?,
                    trigger["name"].as_str()?,
                    trigger["threshold"]["value"].as_f64()?,
                ))
            })
            .collect();
        assert_eq!(
            actions,
            [
                ("envoy.overload_actions.shrink_heap", monitor, 0.90),
                (
                    "envoy.overload_actions.stop_accepting_requests",
                    monitor,
                    0.95
                ),
            ]
        );
        let tested = render(MemoryPressure::File(PathBuf::from("/tmp/pressure")));
        assert_eq!(
            tested["overload_manager"]["resource_monitors"][0]["typed_config"]["filename"],
            "/tmp/pressure"
        );
        assert!(
            render(MemoryPressure::Unwatched)
                .get("overload_manager")
                .is_none()
        );
    }

    #[test]
    fn a_sidecar_has_no_tcp_admin_and_its_stats_listener_serves_two_paths() {
        let bootstrap = Bootstrap {
            listen_port: 80,
            in_pod: Some(InPod {
                admin_socket: PathBuf::from("/run/airlock/admin.sock"),
                stats_port: 90,
            }),
            upstream: Cluster::loopback("upstream", 8080),
            filter: None,
            clusters: Vec::new(),
            memory: MemoryPressure::Unwatched,
        };
        let rendered = bootstrap.render();
        assert_eq!(
            rendered["admin"]["address"],
            json!({"pipe": {"path": "/run/airlock/admin.sock"}})
        );
        let listeners = &rendered["static_resources"]["listeners"];
        assert_eq!(
            listeners[0]["address"]["socket_address"]["address"],
            "0.0.0.0"
        );
        assert_eq!(listeners[1]["address"]["socket_address"]["port_value"], 90);
        let routes = &listeners[1]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"];
        let paths: Vec<&str> = routes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["match"]["path"].as_str())
            .collect();
        assert_eq!(paths, [READY_PATH, STATS_PATH]);
        assert!(
            routes
                .as_array()
                .into_iter()
                .flatten()
                .all(|r| r["match"].get("prefix").is_none()),
            "the stats listener must not serve the admin interface by prefix"
        );
        // No listener shares its port with another socket (SO_REUSEPORT).
        for listener in listeners.as_array().into_iter().flatten() {
            if listener.get("address").is_some() {
                assert_eq!(listener["enable_reuse_port"], false, "{listener}");
            }
        }
    }
}
