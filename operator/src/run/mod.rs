//! The operator process: every replica serves the approval service's APIs
//! (gateways, people, operations on separate listeners) on the
//! ApprovalRequest store, and feeds it the cluster's servers and policies;
//! the replica holding the Lease also runs the controllers.

pub mod guard;
pub mod leader;

use crate::admission::injection::{self, Injector};
use crate::approvals::approver_access::{ApproverAccess, ObjectIdField};
use crate::approvals::gateway_identity::TokenReviews;
use crate::approvals::kubernetes::{KubeStore, Placement};
use crate::approvals::notify::{Channels, Notifier};
use crate::approvals::service::{
    Api, ApprovalService, Catalog, GatewayCredentials, Listener, ServiceConfig,
};
use crate::audit::checkpoints::{self, CheckpointMetrics};
use crate::audit::trail::{AuditLog, Sinks};
use crate::controllers::{self, Context};
use crate::crd::AuditCheckpoint;
use crate::render::workload::Settings;
use crate::tls::{self, TlsListener};
use airlock_policy::audit::Chain;
use airlock_policy::entra::{OtherIssuer, TokenVersion, TrustConfig};
use airlock_policy::gateway::config::DEFAULT_JWKS_MIN_REFRESH_SECONDS;
use anyhow::Context as _;
use kube::api::Api as KubeApi;
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `airlock-operator run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The operator's namespace: its Lease and its audit checkpoints.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// This replica's name (its Lease identity).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// The gateways' API (asks, releases, audit, policy): keep it inside the cluster.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub gateways_listen: SocketAddr,
    /// The people's API (list, decide, ask, answer): may be exposed to approvers.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub people_listen: SocketAddr,
    /// Metrics, health and readiness.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub operations_listen: SocketAddr,
    /// The admission webhook (the API server calls it), over TLS.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,
    /// The Service the API server reaches the webhook through: its
    /// certificate names `SERVICE.NAMESPACE.svc`.
    #[arg(long, default_value = "airlock-webhook")]
    pub webhook_service: String,
    /// The gateways' API as sidecars reach it. With `https`, it is served
    /// with a certificate for the URL's host from the operator's CA (the
    /// Secret `airlock-ca`, made by the first replica) or from
    /// `--serving-secret`, and sidecars trust that CA only, checking the name.
    #[arg(long)]
    pub approvals_url: String,
    /// The sidecar's image.
    #[arg(long)]
    pub envoy_image: String,
    /// This operator's image (sidecars copy the filter module from it).
    #[arg(long)]
    pub operator_image: String,
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// The filter module inside this image.
    #[arg(long, default_value = "/usr/lib/airlock/airlock_filter.wasm")]
    pub filter: PathBuf,
    /// Entra tenants whose tokens the service accepts (repeat).
    #[arg(long = "tenant", required = true)]
    pub tenants: Vec<String>,
    /// Audiences the service accepts (repeat).
    #[arg(long = "audience", required = true)]
    pub audiences: Vec<String>,
    /// The Entra tenant of the people the API server authenticates (AKS: the
    /// cluster's): decisions written with `kubectl airlock` are recorded
    /// under it. Default: the first `--tenant`.
    #[arg(long)]
    pub approvers_tenant: Option<String>,
    /// Audiences the people's API accepts (repeat): its own, never an MCP
    /// server's, so that a token handed to a server cannot decide. None: the
    /// people's API is not served, and approvers decide with `kubectl airlock`.
    #[arg(long = "people-audience")]
    pub people_audiences: Vec<String>,
    /// Tenants whose people may use the people's API (repeat; default: every `--tenant`).
    #[arg(long = "people-tenant")]
    pub people_tenants: Vec<String>,
    /// Where the API server's user info holds an Entra object ID, as
    /// people's-API decisions are authorized for the same user (AKS: `extra:oid`).
    #[arg(long, default_value = "extra:oid")]
    pub approvers_object_id: ObjectIdField,
    /// A non-Entra issuer of Entra-shaped tokens for the first tenant (a mirror, a test issuer).
    #[arg(long)]
    pub issuer: Vec<String>,
    /// `TENANT=URL`: where that tenant's keys are, when not at Entra.
    #[arg(long = "jwks-url", value_parser = parse_pair)]
    pub jwks_urls: Vec<(String, String)>,
    /// How long a decided ApprovalRequest is kept (`30d`, `12h`); the audit trail keeps the record.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// Write this replica's audit chain to standard output, one record a
    /// line (logs go to standard error), for the cluster's log collection.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_stdout: bool,
    /// Also append it to this file (on a volume), continued across restarts.
    #[arg(long)]
    pub audit_file: Option<PathBuf>,
    /// Serve the gateways' API and the webhook with the certificate this
    /// `kubernetes.io/tls` Secret holds (`tls.crt`, `tls.key`, `ca.crt`),
    /// which another issuer such as cert-manager keeps, instead of the
    /// operator's own CA. It must name the webhook's and the gateways'
    /// hosts; see `tls::issued`.
    #[arg(long)]
    pub serving_secret: Option<String>,
    /// How long each step of a rotation of the operator's CA (or of the
    /// serving Secret's CA) waits for the last to reach every sidecar and
    /// the API server (`10m`; see `tls::rotation`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub ca_rotation_overlap: Duration,
    /// How often this replica's chain head is checkpointed in the API server.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub audit_checkpoint_interval: Duration,
    /// How long a stopping replica goes on serving, unready, after it has
    /// given up the Lease: Services forget a terminating pod a moment after
    /// the kubelet signals it, and until every node has, new connections
    /// (gateways' asks, decisions, the API server's webhook calls) still
    /// arrive here. Keep it under the pod's termination grace period.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    airlock_policy::model::parse_duration(text)
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a duration like 30d, 12h or 5s"))
}

const LEASE: &str = "airlock-operator";

/// Runs until SIGTERM, or until this replica loses the Lease it led with.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let jwks_urls: BTreeMap<String, String> = args.jwks_urls.iter().cloned().collect();
    let jwks = args
        .tenants
        .iter()
        .map(|tenant| {
            let url = jwks_urls.get(tenant).cloned().unwrap_or_else(|| {
                format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
            });
            (tenant.clone(), url)
        })
        .collect();
    let first_tenant = args.tenants.first().cloned().unwrap_or_default();
    let trust = TrustConfig {
        tenants: args.tenants.clone(),
        audiences: args.audiences.clone(),
        clock_skew_seconds: 120,
        allow_app_only: false,
        groups_overage: Default::default(),
        issuers: args
            .issuer
            .iter()
            .map(|issuer| OtherIssuer {
                issuer: issuer.clone(),
                tenant: first_tenant.clone(),
                version: TokenVersion::V2,
            })
            .collect(),
    };
    if let Some(shared) = args
        .people_audiences
        .iter()
        .find(|a| args.audiences.contains(a))
    {
        anyhow::bail!(
            "--people-audience {shared} is also a callers' --audience: the people's API must have an audience of its own, or a token handed to an MCP server could decide"
        );
    }
    let people_tenants = if args.people_tenants.is_empty() {
        args.tenants.clone()
    } else {
        args.people_tenants.clone()
    };
    let unknown: Vec<&String> = people_tenants
        .iter()
        .filter(|t| !args.tenants.contains(t))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "--people-tenant {unknown:?} is not among --tenant: the service fetches keys for --tenant only"
        );
    }
    let people = TrustConfig {
        tenants: people_tenants,
        audiences: args.people_audiences.clone(),
        allow_app_only: false,
        ..trust.clone()
    };
    let filter_sha256 = crate::filter_install::digest(&args.filter)?;

    let audit = AuditLog::with_sinks(
        Chain::named(&checkpoints::chain_name(
            &args.pod_name,
            crate::approvals::time::now_seconds(),
        )),
        Sinks {
            file: args.audit_file.clone(),
            stdout: args.audit_stdout,
        },
    )?;
    let heads = audit.heads();
    let (notifier, deliver_notifications) = Notifier::new(Channels::Secrets {
        client: client.clone(),
        namespace: args.namespace.clone(),
    })?;
    let service = ApprovalService::new(
        KubeStore::new(client.clone(), Placement::ServerNamespace)
            .announcing(&args.pod_name)
            .with_approvers_tenant(args.approvers_tenant.as_deref().unwrap_or(&first_tenant)),
        ServiceConfig {
            trust,
            people,
            approver_access: Some(ApproverAccess::new(
                client.clone(),
                args.approvers_object_id.clone(),
            )),
            notifier: Some(notifier.clone()),
            jwks,
            gateway_credentials: GatewayCredentials::ServiceAccountTokens(TokenReviews::new(
                client.clone(),
            )),
            max_pending_per_principal: 20,
            jwks_min_refresh: Duration::from_secs(DEFAULT_JWKS_MIN_REFRESH_SECONDS),
        },
        Catalog::new(Vec::new(), Vec::new()).map_err(anyhow::Error::msg)?,
        audit,
    )
    .map_err(anyhow::Error::msg)?;
    notifier.register(service.metrics_registry())?;
    service.await_catalog();
    let (watched, feed) =
        controllers::catalog::feed(client.clone(), service.clone(), &args.namespace);

    let gateways_host = reqwest::Url::parse(&args.approvals_url)
        .ok()
        .filter(|url| url.scheme() == "https")
        .and_then(|url| url.host_str().map(str::to_string));
    let tls_source = match &args.serving_secret {
        Some(name) => tls::Source::Issued(name.clone()),
        None => tls::Source::OwnCa,
    };
    // Renewed in place by `follow_ca` when they age, the CA rotates or
    // their issuer replaces them.
    let (serving, follow_ca) = tls::Serving::start(
        client.clone(),
        &args.namespace,
        &tls_source,
        gateways_host.as_deref(),
        &format!("{}.{}.svc", args.webhook_service, args.namespace),
        args.ca_rotation_overlap,
    )
    .await
    .context("the serving certificates")?;
    let tls::Serving {
        gateways: gateways_certificate,
        webhook: webhook_certificate,
        trusted,
    } = serving;
    let initial_trust = trusted.borrow().clone();
    crate::admission::publish_ca_bundle(client.clone(), &initial_trust)
        .await
        .context("writing the CA into the webhook configuration")?;
    let publish_bundle = {
        let client = client.clone();
        let mut trusted = trusted.clone();
        async move {
            while trusted.changed().await.is_ok() {
                let bundle = trusted.borrow_and_update().clone();
                if let Err(e) = crate::admission::publish_ca_bundle(client.clone(), &bundle).await {
                    crate::log::error(
                        "tls",
                        &format!("writing the CA bundle into the webhook configuration: {e}"),
                    );
                }
            }
        }
    };
    let settings = Settings {
        envoy_image: args.envoy_image.clone(),
        operator_image: args.operator_image.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        filter_path: args.filter.display().to_string(),
        filter_sha256,
        approvals_url: args.approvals_url.clone(),
        approvals_ca: gateways_certificate.as_ref().map(|_| initial_trust.clone()),
        jwks_urls,
        operator_namespace: args.namespace.clone(),
    };
    // The controllers write through a client that refuses writes unless
    // this replica holds the Lease; the service's own store writes on every replica.
    let leadership = guard::Leadership::new();
    let controllers_client = kube::client::ClientBuilder::try_from(
        kube::Config::infer()
            .await
            .context("reading the cluster configuration")?,
    )?
    .with_layer(&guard::WritesWhileLeading(leadership.clone()))
    .build();
    let context = Context::new(
        controllers_client,
        settings,
        trusted.clone(),
        watched,
        args.pod_name.clone(),
        service.metrics_registry(),
    )?;
    let checkpoint_api: KubeApi<AuditCheckpoint> =
        KubeApi::namespaced(client.clone(), &args.namespace);
    let checkpoint_metrics = CheckpointMetrics::new(service.metrics_registry())?;
    let gateways = tokio::net::TcpListener::bind(args.gateways_listen).await?;
    let mut listeners = vec![
        (
            Api::Gateways,
            match &gateways_certificate {
                Some(certificate) => {
                    Listener::Tls(TlsListener::new(gateways, certificate.config()?)?)
                }
                None => gateways.into(),
            },
        ),
        (
            Api::Operations,
            tokio::net::TcpListener::bind(args.operations_listen)
                .await?
                .into(),
        ),
    ];
    let webhook_listener = TlsListener::new(
        tokio::net::TcpListener::bind(args.webhook_listen).await?,
        webhook_certificate.config()?,
    )?;
    let admission = crate::admission::router(Arc::new(Injector {
        client: client.clone(),
        settings: context.settings.clone(),
    }));
    if args.people_audiences.is_empty() {
        crate::log::info(
            "operator",
            "no --people-audience: the people's API is off; approvers decide with kubectl airlock",
        );
    } else {
        listeners.push((
            Api::People,
            tokio::net::TcpListener::bind(args.people_listen)
                .await?
                .into(),
        ));
    }
    crate::log::info(
        "operator",
        &format!("{} serving; waiting for the lease", args.pod_name),
    );

    let elector = leader::Elector::new(client, &args.namespace, LEASE, &args.pod_name, leadership);
    let lead = async {
        elector.acquire().await?;
        tokio::select! {
            lost = elector.hold() => Err::<(), anyhow::Error>(lost.into()),
            () = controllers::mcp_server::run(context.clone()) => Ok(()),
            () = controllers::approval_policy::run(context.clone()) => Ok(()),
            () = controllers::retention::run(context.clone(), args.retention) => Ok(()),
            () = injection::keep_webhooks(
                context.client.clone(),
                context.settings.clone(),
                args.webhook_service.clone(),
                args.namespace.clone(),
                trusted.clone(),
            ) => Ok(()),
            () = tls::lead(context.client.clone(), args.namespace.clone(), tls_source.clone(), args.ca_rotation_overlap) => Ok(()),
        }
    };
    tokio::select! {
        served = service.clone().serve(listeners) => served.context("serving the approval APIs"),
        served = axum::serve(webhook_listener, admission).into_future() => served.context("serving the admission webhooks"),
        () = follow_ca => anyhow::bail!("following the CA ended"),
        () = publish_bundle => anyhow::bail!("publishing the CA bundle ended"),
        () = feed => anyhow::bail!("the watch of servers and policies ended"),
        () = deliver_notifications => anyhow::bail!("notification delivery ended"),
        () = checkpoints::keep(checkpoint_api.clone(), heads.clone(), args.audit_checkpoint_interval, &checkpoint_metrics) => Ok(()),
        stopped = async {
            // The controllers do not watch for the signal themselves: the
            // stopping leader leaves them here, mid-reconcile if need be
            // (the next leader reconciles everything again), and drains.
            tokio::select! {
                led = lead => return led,
                requested = crate::shutdown::requested() => requested?,
            }
            crate::log::info(
                "operator",
                &format!("stopping: serving {:?} more, unready, while Services forget this replica", args.shutdown_drain),
            );
            service.stop_serving_soon();
            if let Err(e) = elector.release().await {
                crate::log::error("leader", &format!("releasing the lease: {e}"));
            }
            tokio::time::sleep(args.shutdown_drain).await;
            // The last records of this chain get their checkpoint too.
            let head = heads.borrow().clone();
            if let Some(head) = head {
                let _ = checkpoints::write(&checkpoint_api, &head, &checkpoint_metrics).await;
            }
            Ok(())
        } => stopped,
    }
}
