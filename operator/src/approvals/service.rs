//! The approval service's HTTP API (DESIGN "Approval service API").
//!
//! Gateways authenticate with the gateway credential *and* forward the
//! caller's own bearer token, which is verified here again: the requester is
//! never taken from a gateway's word. The service re-derives the call (target,
//! arguments, digest) from the params and re-evaluates policy itself, so a
//! gateway can neither invent an approval requirement nor spend a grant for
//! another call. People (approvers, requesters) act with their own tokens.

use super::approver_access::ApproverAccess;
use super::gateway_identity::{Refusal, TokenReviews};
use super::metrics::ServiceMetrics;
use super::model::{
    Act, Approval, ApprovalError, Arrival, Binding, Person, Requirement, State, Verdict, Via,
};
use super::notify::{Notice, Notifier};
use super::store::{Store, StoreError};
use super::time::{now_seconds, rfc3339};
use crate::audit::trail::{AuditError, AuditLog};
use airlock_policy::audit::{AuditEvent, AuditPrincipal, captured_arguments};
use airlock_policy::entra::{Principal, TrustConfig};
use airlock_policy::evaluate::{Call, evaluate};
use airlock_policy::gateway::auth::{AuthError, KeyRing, TokenCache, verify_token};
use airlock_policy::gateway::config::{Governed, NamedPolicy, PolicyDocument, compile_all};
use airlock_policy::gateway::revocation::Revocation;
use airlock_policy::json::{self, Limits};
use airlock_policy::jwt::JwkSet;
use airlock_policy::mcp::{RequestContext, Target, classify};
use airlock_policy::model::{Action, CompiledPolicy, Grant, parse_duration};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State as AppState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

pub use airlock_policy::gateway::GATEWAY_CREDENTIAL_HEADER;
use airlock_policy::gateway::RELEASE_KEY_HEADER;
/// Largest request body any endpoint reads.
const MAX_BODY: usize = 1024 * 1024;
/// Longest long-poll a client may ask for.
const MAX_WAIT_SECONDS: u64 = 60;
/// How often the expiry sweeper also reads the whole store, to find requests
/// it was not told about (asked through a replica that has since stopped).
const SWEEP_RESCAN: Duration = Duration::from_secs(300);

/// The servers the service knows and the policies in force: replaced as a
/// whole whenever either changes, and watched by gateways' config long-polls.
pub struct Catalog {
    servers: Vec<Governed>,
    policies: Vec<NamedPolicy>,
    compiled: Vec<CompiledPolicy>,
    revocations: Vec<Revocation>,
}

impl Catalog {
    /// Compiles `policies`; a bad policy refuses the whole catalog, naming
    /// its bad fields, so a half-valid set never reaches a gateway.
    pub fn new(servers: Vec<Governed>, policies: Vec<NamedPolicy>) -> Result<Catalog, String> {
        let compiled = compile_all(&policies).map_err(|e| e.to_string())?;
        Ok(Catalog {
            servers,
            policies,
            compiled,
            revocations: Vec::new(),
        })
    }

    /// Also cuts off whom `revocations` name, on the servers they reach.
    pub fn revoking(mut self, revocations: Vec<Revocation>) -> Catalog {
        self.revocations = revocations;
        self
    }

    /// The policies governing `server`, or `None` for a server not known here.
    fn document(&self, server: &str) -> Option<PolicyDocument> {
        let entry = self.servers.iter().find(|s| s.name == server)?;
        Some(PolicyDocument::for_server(
            entry,
            &self.policies,
            &self.revocations,
        ))
    }

    /// The revocation that cuts `who` (in `session`) off `server` at `now`.
    fn revocation_of(
        &self,
        server: &str,
        who: &Principal,
        session: Option<&str>,
        now: u64,
    ) -> Option<&Revocation> {
        let entry = self.servers.iter().find(|s| s.name == server)?;
        self.revocations
            .iter()
            .filter(|r| entry.is_reached_by(r))
            .find(|r| r.covers(who, session, now))
    }
}

pub struct ServiceConfig {
    /// Callers' tokens, as gateways pass them on with their asks.
    pub trust: TrustConfig,
    /// Approvers' and requesters' tokens at the people's API: its own
    /// audience, never an MCP server's (a token a server was handed must
    /// not decide), and no app-only tokens.
    pub people: TrustConfig,
    /// With it, deciding or asking through the people's API also needs the
    /// verb `approve` on the rule's ApprovalPolicy, as through the API server.
    pub approver_access: Option<ApproverAccess>,
    /// Tells policies' channels of their requests, when set.
    pub notifier: Option<Notifier>,
    /// (tenant, JWKS URL)
    pub jwks: Vec<(String, String)>,
    pub gateway_credentials: GatewayCredentials,
    pub max_pending_per_principal: usize,
    /// Least time between two key-set fetches for one tenant.
    pub jwks_min_refresh: Duration,
}

/// How gateways prove they are gateways, and for which server.
pub enum GatewayCredentials {
    /// One secret for every gateway (`airlock up` runs one).
    Shared(String),
    /// Each gateway presents its pod's ServiceAccount token for the
    /// `airlock` audience (Envoy attaches it); the API server vouches for
    /// the pod and the pod's controllers name its server, so a gateway
    /// asks, reports and reads policy for that server only.
    ServiceAccountTokens(TokenReviews),
}

/// Which server a verified gateway speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayIdentity {
    Any,
    Server(String),
}

impl GatewayIdentity {
    /// Refuses a gateway acting for a server other than its own.
    fn may_act_for(&self, server: &str) -> Result<(), ApiError> {
        match self {
            GatewayIdentity::Server(own) if own != server => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_server",
                format!("this gateway is {own}'s, not {server}'s"),
            )),
            _ => Ok(()),
        }
    }
}

/// Constant-time: credentials are secrets.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Where an API is served.
pub enum Listener {
    Plain(tokio::net::TcpListener),
    /// The gateways' API in a cluster.
    Tls(crate::tls::TlsListener),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(listener: tokio::net::TcpListener) -> Listener {
        Listener::Plain(listener)
    }
}

/// Which of the service's APIs a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Asks, long-polls, releases, audit batches and policy for gateways:
    /// stays inside the cluster.
    Gateways,
    /// Listing, deciding, asking and answering for people: may be exposed
    /// to approvers.
    People,
    /// Prometheus metrics and health, for the kubelet and the scraper.
    Operations,
    /// All of them on one listener (`airlock up`).
    All,
}

/// What an approver said with an act.
fn said_of(act: &Act) -> String {
    match act {
        Act::Decide { verdict, reason } => format!("{} — {reason}", verdict.label()),
        Act::Ask { question } => question.clone(),
    }
}

/// Whose tokens a route takes: callers' (from gateways) or people's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Callers,
    People,
}

pub struct ApprovalService<S: Store> {
    store: S,
    config: ServiceConfig,
    catalog: watch::Sender<Arc<Catalog>>,
    keys: RwLock<KeyRing>,
    /// When each tenant's keys were last fetched; held across a fetch so that
    /// concurrent callers wait for it instead of failing without keys.
    last_fetch: tokio::sync::Mutex<BTreeMap<String, std::time::Instant>>,
    /// Verified tokens by side: a token verified for one is never taken
    /// from the cache by the other.
    caller_tokens: Mutex<TokenCache>,
    people_tokens: Mutex<TokenCache>,
    changes: broadcast::Sender<String>,
    /// Waiting approvals by expiry, so the sweeper records each expiry when
    /// it happens rather than when someone next looks.
    expiring: Mutex<BTreeSet<(u64, String)>>,
    expiring_added: tokio::sync::Notify,
    audit: AuditLog,
    metrics: ServiceMetrics,
    http: reqwest::Client,
    /// False while the catalog is still being read (an operator starting):
    /// `/readyz` fails, so no gateway is sent here to be refused.
    catalog_ready: std::sync::atomic::AtomicBool,
    /// True once the process is stopping: `/readyz` fails while it drains.
    stopping: std::sync::atomic::AtomicBool,
}

/// A refusal with its HTTP status and a sentence saying why.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.error, "message": self.message})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            e.to_string(),
        )
    }
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> ApiError {
        let status = match e {
            ApprovalError::NotAnApprover
            | ApprovalError::SelfApproval
            | ApprovalError::NotTheRequester => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, "refused", e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The gateway's name for one release (see [`Approval::consume`]): at most
/// 64 letters, digits, `-` or `_`; absent from gateways that predate it.
fn release_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(RELEASE_KEY_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|key| {
            (1..=64).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_release_key",
                format!("{RELEASE_KEY_HEADER} must be 1 to 64 letters, digits, '-' or '_'"),
            )
        })
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let values: Vec<&str> = headers
        .get_all("authorization")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    match airlock_policy::gateway::request::bearer_token(&values) {
        Ok(Some(token)) => Ok(token),
        Ok(None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required",
        )),
        Err(why) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            why,
        )),
    }
}

/// Strict JSON (no duplicate keys, size-limited) into a typed body.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = json::parse(
        bytes,
        Limits {
            max_bytes: MAX_BODY,
            ..Limits::default()
        },
    )
    .map_err(|e| match e {
        json::JsonError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
    })?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))
}

/// A gateway's ask, consume, cancel or audit: which call, on which server.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CallBody {
    server: String,
    method: String,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    protocol_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    verdict: Verdict,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigQuery {
    /// The version the gateway has; the answer waits until there is another.
    after: Option<String>,
    wait: Option<u64>,
}

/// The call a body describes, re-derived with the gateway's own classifier.
struct DerivedCall {
    method: String,
    target: Target,
    arguments: Option<Value>,
    digest: String,
}

impl DerivedCall {
    /// What a grant for this call is bound to. Asking and releasing both
    /// bind through here, so a grant matches exactly the call it was asked for.
    fn binding(&self, caller: &Principal, server: &str) -> Binding {
        Binding {
            tid: caller.tenant_id.clone(),
            oid: caller.object_id.clone(),
            app_id: caller.app_id.clone(),
            server: server.to_string(),
            method: self.method.clone(),
            target: self.target.name().map(str::to_string),
            digest: self.digest.clone(),
        }
    }
}

fn derive(call: &CallBody) -> Result<DerivedCall, ApiError> {
    let message = json!({"jsonrpc": "2.0", "id": 0, "method": call.method, "params": call.params});
    let envelope = classify(message.to_string().as_bytes(), &RequestContext::default())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_call", e.to_string()))?;
    let Some(message) = envelope.messages.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_call",
            "no call",
        ));
    };
    Ok(DerivedCall {
        method: call.method.clone(),
        target: message.target,
        arguments: message.arguments,
        digest: message.params_digest.unwrap_or_default(),
    })
}

fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 8] = rand::thread_rng().r#gen();
    format!(
        "ar-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl<S: Store> ApprovalService<S> {
    pub fn new(
        store: S,
        config: ServiceConfig,
        catalog: Catalog,
        audit: AuditLog,
    ) -> Result<Arc<Self>, String> {
        let (changes, _) = broadcast::channel(1024);
        Ok(Arc::new(ApprovalService {
            store,
            catalog: watch::Sender::new(Arc::new(catalog)),
            keys: RwLock::new(KeyRing::default()),
            last_fetch: tokio::sync::Mutex::new(BTreeMap::new()),
            caller_tokens: Mutex::new(TokenCache::new(4096)),
            people_tokens: Mutex::new(TokenCache::new(1024)),
            changes,
            expiring: Mutex::new(BTreeSet::new()),
            expiring_added: tokio::sync::Notify::new(),
            audit,
            metrics: ServiceMetrics::new().map_err(|e| e.to_string())?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
            config,
            catalog_ready: std::sync::atomic::AtomicBool::new(true),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Serves the API on `listener` until it fails, waking long-polls on
    /// changes other writers make to the store and expiring requests on
    /// time all the while.
    pub async fn serve(self: Arc<Self>, listeners: Vec<(Api, Listener)>) -> std::io::Result<()> {
        let changes = self.store.changes();
        let forward = async {
            futures::pin_mut!(changes);
            while let Some(id) = futures::StreamExt::next(&mut changes).await {
                // What an approver wrote through the API server counts now,
                // not when someone next reads the request.
                if let Err(e) = self.load(&id).await
                    && e.status != StatusCode::NOT_FOUND
                {
                    log_error(&format!("taking in {id}: {}", e.message));
                }
                let _ = self.changes.send(id);
            }
            std::future::pending::<()>().await;
        };
        let served = futures::future::try_join_all(listeners.into_iter().map(|(api, listener)| {
            let router = self.router(api);
            match listener {
                Listener::Plain(listener) => axum::serve(listener, router).into_future().boxed(),
                Listener::Tls(listener) => axum::serve(listener, router).into_future().boxed(),
            }
        }));
        tokio::select! {
            served = served => served.map(|_| ()),
            () = forward => Ok(()),
            () = self.sweep_expiries() => Ok(()),
        }
    }

    fn expire_at(&self, approval: &Approval) {
        if let Ok(mut expiring) = self.expiring.lock() {
            expiring.insert((approval.expires_at, approval.id.clone()));
        }
        self.expiring_added.notify_one();
    }

    /// Settles each waiting request when it expires, which records
    /// `approval.expired` and shows `Expired` to anyone reading the store.
    async fn sweep_expiries(&self) {
        let mut rescan_at = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= rescan_at {
                match self.store.list().await {
                    Ok(approvals) => approvals
                        .iter()
                        .filter(|a| a.state.waiting())
                        .for_each(|a| self.expire_at(a)),
                    Err(e) => log_error(&format!("expiry sweep: {e}")),
                }
                rescan_at = tokio::time::Instant::now() + SWEEP_RESCAN;
            }
            let now = now_seconds();
            let due: Vec<String> = match self.expiring.lock() {
                Ok(mut expiring) => {
                    let later = expiring.split_off(&(now.saturating_add(1), String::new()));
                    std::mem::replace(&mut *expiring, later)
                        .into_iter()
                        .map(|(_, id)| id)
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            for id in due {
                if let Err(e) = self.load(&id).await {
                    log_error(&format!("expiring {id}: {}", e.message));
                }
            }
            let next = self
                .expiring
                .lock()
                .ok()
                .and_then(|expiring| expiring.first().map(|(at, _)| *at));
            let wake = next.map_or(rescan_at, |at| {
                let until = Duration::from_secs(at.saturating_sub(now_seconds()));
                rescan_at.min(tokio::time::Instant::now() + until)
            });
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.expiring_added.notified() => {}
            }
        }
    }

    pub fn router(self: &Arc<Self>, api: Api) -> Router {
        let gateways = matches!(api, Api::Gateways | Api::All);
        let people = matches!(api, Api::People | Api::All);
        let mut router = Router::new().route("/healthz", get(|| async { "ok" }));
        if gateways || people {
            let approvals = match (gateways, people) {
                (true, true) => post(ask::<S>).get(list::<S>),
                (true, false) => post(ask::<S>),
                _ => get(list::<S>),
            };
            router = router
                .route("/v1/approvals", approvals)
                .route("/v1/approvals/{id}", get(show::<S>));
        }
        if gateways {
            router = router
                .route("/v1/approvals/{id}/consume", post(consume::<S>))
                .route("/v1/approvals/cancel", post(cancel::<S>))
                .route("/v1/audit", post(audit::<S>))
                .route("/v1/config/{namespace}/{server}", get(config::<S>));
        }
        if people {
            router = router
                .route("/v1/approvals/{id}/decision", post(decide::<S>))
                .route("/v1/approvals/{id}/ask", post(ask_info::<S>))
                .route("/v1/approvals/{id}/answer", post(answer::<S>));
        }
        if matches!(api, Api::Operations | Api::All) {
            router = router
                .route("/metrics", get(metrics::<S>))
                .route("/readyz", get(readyz::<S>));
        }
        // The one route both sides share takes the tokens of the side it
        // is served to (`airlock up` trusts one audience for both).
        let side = if gateways && !people {
            Side::Callers
        } else {
            Side::People
        };
        router.layer(Extension(side)).with_state(self.clone())
    }

    async fn fetch_keys(&self, tenant: &str) {
        let Some((_, url)) = self.config.jwks.iter().find(|(t, _)| t == tenant) else {
            return;
        };
        let mut last = self.last_fetch.lock().await;
        if last
            .get(tenant)
            .is_some_and(|at| at.elapsed() < self.config.jwks_min_refresh)
        {
            return;
        }
        last.insert(tenant.to_string(), std::time::Instant::now());
        let fetched = async {
            self.http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await
        };
        match fetched.await.map(|body| JwkSet::from_json(&body)) {
            Ok(Ok(set)) => {
                if let Ok(mut keys) = self.keys.write() {
                    keys.set(tenant, set);
                }
            }
            Ok(Err(e)) => log_error(&format!("key set of tenant {tenant} refused: {e}")),
            Err(e) => log_error(&format!("fetching keys of tenant {tenant}: {e}")),
        }
    }

    /// Verifies a bearer token, fetching the tenant's keys when they are missing or rotated.
    async fn principal(&self, headers: &HeaderMap, side: Side) -> Result<Principal, ApiError> {
        let token = bearer(headers)?;
        let (trust, tokens) = match side {
            Side::Callers => (&self.config.trust, &self.caller_tokens),
            Side::People => (&self.config.people, &self.people_tokens),
        };
        let attempt = || -> Result<Principal, AuthError> {
            let keys = self
                .keys
                .read()
                .map_err(|_| AuthError::KeysNotLoaded("poisoned".into()))?;
            let mut cache = tokens
                .lock()
                .map_err(|_| AuthError::KeysNotLoaded("poisoned".into()))?;
            verify_token(trust, &keys, &mut cache, token, now_seconds()).map(Arc::unwrap_or_clone)
        };
        let result = match attempt() {
            Err(AuthError::KeysNotLoaded(tenant) | AuthError::UnknownKey { tenant, .. }) => {
                self.fetch_keys(&tenant).await;
                attempt()
            }
            other => other,
        };
        result.map_err(|e| match e {
            AuthError::KeysNotLoaded(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_unavailable",
                e.to_string(),
            ),
            _ => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string()),
        })
    }

    /// A gateway's request about one call in its caller's name (ask,
    /// consume, cancel): the verified caller and the call, once the gateway
    /// may speak for the call's server.
    async fn call_from_gateway(
        &self,
        headers: &HeaderMap,
        bytes: &[u8],
    ) -> Result<(Principal, CallBody), ApiError> {
        let gateway = self.check_gateway(headers).await?;
        let principal = self.principal(headers, Side::Callers).await?;
        let call: CallBody = body(bytes)?;
        gateway.may_act_for(&call.server)?;
        Ok((principal, call))
    }

    async fn check_gateway(&self, headers: &HeaderMap) -> Result<GatewayIdentity, ApiError> {
        let presented = headers
            .get(GATEWAY_CREDENTIAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let refused =
            |why: String| ApiError::new(StatusCode::UNAUTHORIZED, "gateway_unauthorized", why);
        match &self.config.gateway_credentials {
            GatewayCredentials::Shared(secret) => {
                if same_secret(presented.as_bytes(), secret.as_bytes()) {
                    Ok(GatewayIdentity::Any)
                } else {
                    Err(refused("missing or wrong gateway credential".into()))
                }
            }
            GatewayCredentials::ServiceAccountTokens(reviews) => {
                if presented.is_empty() {
                    return Err(refused("no gateway credential was presented".into()));
                }
                match reviews.server_of(presented).await {
                    Ok(server) => Ok(GatewayIdentity::Server(server)),
                    Err(unavailable @ Refusal::Unavailable(_)) => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "gateway_unverifiable",
                        format!("the gateway's token cannot be checked now: {unavailable}"),
                    )),
                    Err(refusal) => Err(refused(format!("not a gateway's token: {refusal}"))),
                }
            }
        }
    }

    /// Replaces the servers and policies; gateways long-polling their
    /// config are answered at once.
    pub fn set_catalog(&self, catalog: Catalog) {
        self.catalog.send_replace(Arc::new(catalog));
        self.catalog_ready
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Not ready until the first [`Self::set_catalog`]: the catalog given to
    /// [`Self::new`] was a placeholder.
    pub fn await_catalog(&self) {
        self.catalog_ready
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The process is stopping: go on serving what arrives, but say unready.
    pub fn stop_serving_soon(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Where the process's other metrics register.
    pub fn metrics_registry(&self) -> &prometheus::Registry {
        self.metrics.registry()
    }

    fn server_policies(&self, server: &str) -> Result<Vec<CompiledPolicy>, ApiError> {
        let catalog = self.catalog.borrow().clone();
        let document = catalog
            .document(server)
            .ok_or_else(|| unknown_server(server))?;
        Ok(catalog
            .compiled
            .iter()
            .filter(|p| document.policies.iter().any(|d| d.name == p.name))
            .cloned()
            .collect())
    }

    fn record(&self, event: AuditEvent) -> Result<(), ApiError> {
        self.record_all(std::slice::from_ref(&event))
    }

    /// Appends events to the audit log, all or none, counting either way
    /// (a gateway's event written before, sent again, is not written twice).
    fn record_all(&self, events: &[AuditEvent]) -> Result<(), ApiError> {
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        match self.audit.append_all(events) {
            Ok(written) => {
                self.metrics
                    .audit_written
                    .inc_by(u64::try_from(written).unwrap_or(u64::MAX));
                Ok(())
            }
            Err(e) => {
                self.metrics.audit_dropped.inc_by(count);
                log_error(&format!("audit event not written: {e}"));
                Err(e.into())
            }
        }
    }

    fn approval_event(
        &self,
        kind: &str,
        approval: &Approval,
        who: Option<&Principal>,
        reason: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            time: rfc3339(now_seconds()),
            kind: kind.into(),
            server: approval.binding.server.clone(),
            principal: Some(AuditPrincipal {
                tid: approval.requester.tid.clone(),
                oid: approval.requester.oid.clone(),
                name: approval.requester.name.clone(),
                app_id: approval.binding.app_id.clone(),
                ..AuditPrincipal::default()
            }),
            session: approval.session_id.clone(),
            protocol_version: approval.protocol_version.clone(),
            method: Some(approval.binding.method.clone()),
            target: approval.binding.target.clone(),
            arguments_digest: Some(approval.binding.digest.clone()),
            decision: Some(format!("{:?}", approval.state)),
            rule: Some(
                approval
                    .requirements
                    .iter()
                    .map(|r| r.rule.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            approval_id: Some(approval.id.clone()),
            approvers: who
                .map(|p| vec![AuditPrincipal::from(p)])
                .unwrap_or_default(),
            reason,
            ..AuditEvent::default()
        }
    }

    /// Loads an approval, judging what approvers wrote through the API
    /// server and settling expiry (recording both) on the way.
    async fn load(&self, id: &str) -> Result<Approval, ApiError> {
        loop {
            let mut approval = self.store.get(id).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_approval",
                    format!("no approval {id:?}"),
                )
            })?;
            let before = approval.version;
            let now = now_seconds();
            // Expiry first: what arrives after the deadline is refused as late.
            let expired = approval.settle(now);
            let was = approval.state;
            let arrived = approval.take_in(now);
            if arrived.is_empty() && !expired {
                return Ok(approval);
            }
            approval.version += 1;
            if self.store.update(&approval, before).await? {
                if expired {
                    self.metrics.expiries.inc();
                    self.record(self.approval_event("approval.expired", &approval, None, None))?;
                }
                for (arrival, judged) in &arrived {
                    self.record_arrival(&approval, arrival, judged, now)?;
                }
                if was != approval.state {
                    self.observe_decision(&approval, now);
                }
                let _ = self.changes.send(approval.id.clone());
                return Ok(approval);
            }
            // Another writer moved it first: read it again.
        }
    }

    /// The trail's record of one act written through the API server:
    /// counted like its people's-API twin, or refused with the reason (and
    /// dropped from the ApprovalRequest).
    fn record_arrival(
        &self,
        approval: &Approval,
        arrival: &Arrival,
        judged: &Result<(), ApprovalError>,
        now: u64,
    ) -> Result<(), ApiError> {
        let (kind, said) = match (&arrival.act, judged) {
            (Act::Decide { verdict, reason }, Ok(())) => {
                self.metrics
                    .decisions
                    .with_label_values(&[verdict.label()])
                    .inc();
                ("approval.decided", reason.clone())
            }
            (Act::Ask { question }, Ok(())) => ("approval.info_requested", question.clone()),
            (_, Err(refusal)) => ("approval.refused", refusal.to_string()),
        };
        let mut event = self.approval_event(kind, approval, None, Some(said));
        event.time = rfc3339(now);
        event.approvers = vec![AuditPrincipal {
            tid: arrival.by.tid.clone(),
            oid: arrival.by.oid.clone(),
            name: arrival.by.name.clone(),
            ..AuditPrincipal::default()
        }];
        event.via = Some(Via::Kubectl.label().into());
        self.record(event)?;
        if judged.is_ok() {
            self.notify(
                kind,
                approval,
                Some(&arrival.by.name),
                &said_of(&arrival.act),
            );
        }
        Ok(())
    }

    /// Tells the channels of the policies behind `approval` that `kind`
    /// happened (by `who`, saying `said`). Never waits.
    fn notify(&self, kind: &str, approval: &Approval, who: Option<&str>, said: &str) {
        let Some(notifier) = &self.config.notifier else {
            return;
        };
        let catalog = self.catalog.borrow().clone();
        let mut channels: Vec<&str> = approval
            .requirements
            .iter()
            .filter_map(|r| {
                let policy = r.rule.rsplit_once('/').map(|(policy, _)| policy)?;
                catalog.policies.iter().find(|p| p.name == policy)
            })
            .filter_map(|p| p.spec.notify.as_ref().map(|n| n.channel.as_str()))
            .collect();
        channels.sort_unstable();
        channels.dedup();
        if channels.is_empty() {
            return;
        }
        let who = who.unwrap_or("someone");
        let id = &approval.id;
        let text = match kind {
            "approval.asked" => format!(
                "{} — {} more approval(s) needed: kubectl airlock describe {id} -n {}",
                approval.summary,
                approval.approvals_needed(),
                approval
                    .binding
                    .server
                    .split('/')
                    .next()
                    .unwrap_or_default()
            ),
            "approval.info_requested" => format!("{who} asks about {id}: {said}"),
            _ => format!(
                "{who} decided on {id} ({}): {said} — it is now {:?}",
                approval.summary, approval.state
            ),
        };
        let shown = view(approval, now_seconds());
        for channel in channels {
            notifier.send(Notice::new(channel, kind, text.clone(), shown.clone()));
        }
    }

    /// Time to a verdict, once the approval reached one.
    fn observe_decision(&self, approval: &Approval, now: u64) {
        if matches!(approval.state, State::Approved | State::Denied) {
            self.metrics
                .time_to_decision
                .observe(now.saturating_sub(approval.created_at) as f64);
        }
    }

    /// Applies `change` with compare-and-set, retrying on a lost race.
    /// Applies `change` by compare-and-set; the approval, and whether
    /// anything changed (a change that changes nothing is not written).
    async fn change(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Approval) -> Result<(), ApprovalError>,
    ) -> Result<(Approval, bool), ApiError> {
        for _ in 0..8 {
            let mut approval = self.load(id).await?;
            let before = approval.version;
            change(&mut approval)?;
            if approval.version == before {
                return Ok((approval, false));
            }
            if self.store.update(&approval, before).await? {
                let _ = self.changes.send(approval.id.clone());
                return Ok((approval, true));
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "contended",
            "the approval kept changing; retry",
        ))
    }

    /// [`change`](Self::change), then the transition's audit record: what
    /// happened (`kind`), who did it and what they said. Nothing is recorded
    /// when nothing changed.
    async fn change_and_record(
        &self,
        id: &str,
        kind: &str,
        who: Option<&Principal>,
        said: Option<String>,
        change: impl FnMut(&mut Approval) -> Result<(), ApprovalError>,
    ) -> Result<Approval, ApiError> {
        let (approval, changed) = self.change(id, change).await?;
        if !changed {
            return Ok(approval);
        }
        let mut event = self.approval_event(kind, &approval, who, said.clone());
        event.via = who.map(|_| Via::Service.label().into());
        self.record(event)?;
        if matches!(kind, "approval.decided" | "approval.info_requested") {
            self.notify(
                kind,
                &approval,
                who.map(|p| p.display_name.as_str()),
                said.as_deref().unwrap_or_default(),
            );
        }
        Ok(approval)
    }

    /// Refuses `who` (in `session`) where a revocation reaching `server`
    /// cuts them off, recording it against the held call `approval`.
    fn refuse_revoked(
        &self,
        server: &str,
        who: &Principal,
        session: Option<&str>,
        approval: Option<&str>,
    ) -> Result<(), ApiError> {
        let catalog = self.catalog.borrow().clone();
        let Some(revocation) = catalog.revocation_of(server, who, session, now_seconds()) else {
            return Ok(());
        };
        self.record(AuditEvent {
            time: rfc3339(now_seconds()),
            kind: "approval.revoked".into(),
            server: server.to_string(),
            principal: Some(AuditPrincipal::from(who)),
            session: session.map(str::to_string),
            approval_id: approval.map(str::to_string),
            reason: Some(revocation.refusal()),
            ..AuditEvent::default()
        })?;
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "revoked",
            revocation.refusal(),
        ))
    }

    /// Where the cluster says who may approve: `approver` holds the verb
    /// `approve` on the policy of a rule they are an approver of (a person
    /// who is none is left to the model to refuse). Fails closed when the
    /// API server cannot say.
    async fn check_approver(&self, id: &str, approver: &Principal) -> Result<(), ApiError> {
        let Some(access) = &self.config.approver_access else {
            return Ok(());
        };
        // The requirements are fixed when the call is held: a plain read.
        let Some(approval) = self.store.get(id).await? else {
            return Ok(());
        };
        let theirs = approval.requirements_for(&Person::from(approver));
        if theirs.is_empty() {
            return Ok(());
        }
        let granted = access.granted(approver, &theirs).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "authorization_unavailable",
                format!("the API server could not say whether you may approve: {e}"),
            )
        })?;
        if granted.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "refused",
                format!(
                    "you ({}) are not granted the verb approve on the ApprovalPolicy of rule {}",
                    approver.display_name,
                    theirs
                        .iter()
                        .map(|r| r.rule.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn visible_to(&self, approval: &Approval, who: &Principal) -> bool {
        (who.tenant_id == approval.requester.tid && who.object_id == approval.requester.oid)
            || approval.requirements.iter().any(|r| {
                r.approver_users.contains(&who.object_id)
                    || who.groups.iter().any(|g| r.approver_groups.contains(g))
            })
    }
}

fn unknown_server(server: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_server",
        format!("no MCP server {server:?}"),
    )
}

pub(crate) fn log_error(message: &str) {
    crate::log::error("approval-service", message);
}

/// The API view of an approval.
pub fn view(approval: &Approval, now: u64) -> Value {
    json!({
        "id": approval.id,
        "state": approval.state_at(now),
        "server": approval.binding.server,
        "method": approval.binding.method,
        "tool": approval.binding.target,
        "requester": approval.requester,
        "appId": approval.binding.app_id,
        "summary": approval.summary,
        "arguments": approval.arguments,
        "argumentsDigest": approval.binding.digest,
        "createdAt": rfc3339(approval.created_at),
        "expiresAt": rfc3339(approval.expires_at),
        "requirements": approval.requirements,
        "decisions": approval.decisions,
        "conversation": approval.conversation,
        "releases": approval.releases,
    })
}

fn ok(status: StatusCode, value: Value) -> ApiResult {
    Ok((status, axum::Json(value)).into_response())
}

async fn ask<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let (principal, call) = service.call_from_gateway(&headers, &bytes).await?;
    service.refuse_revoked(&call.server, &principal, call.session_id.as_deref(), None)?;
    let derived = derive(&call)?;
    let policies = service.server_policies(&call.server)?;
    let decision = evaluate(
        &policies,
        &principal,
        &Call {
            method: &derived.method,
            target: &derived.target,
            arguments: derived.arguments.as_ref(),
        },
    );
    match decision.action {
        Action::RequireApproval => {}
        Action::Allow => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_required",
                "policy allows this call without approval",
            ));
        }
        Action::Deny => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "denied",
                format!("policy {} denies this call", decision.reason()),
            ));
        }
    }
    let binding = derived.binding(&principal, &call.server);
    let now = now_seconds();
    if let Some(existing) = service.store.latest_for(&binding).await? {
        let state = existing.state_at(now);
        if state.waiting() || state == State::Approved {
            return ok(StatusCode::OK, view(&existing, now));
        }
    }
    let pending = service
        .store
        .by_requester(&principal.tenant_id, &principal.object_id)
        .await?
        .iter()
        .filter(|a| a.state_at(now).waiting())
        .count();
    if pending >= service.config.max_pending_per_principal {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending",
            format!(
                "you already have {pending} calls waiting for approval; wait for decisions first"
            ),
        ));
    }
    let mut requirements = Vec::new();
    let mut timeout = u64::MAX;
    let mut window: Option<u64> = None;
    let mut once = false;
    for verdict in &decision.deciding {
        let Some(policy) = policies.iter().find(|p| p.name == verdict.policy) else {
            continue;
        };
        for rule in policy
            .spec
            .rules
            .iter()
            .filter(|r| verdict.rules.contains(&r.name))
        {
            let Some(approval) = &rule.approval else {
                continue;
            };
            timeout = timeout.min(parse_duration(&approval.timeout).unwrap_or(1800));
            match &approval.grant {
                Grant::Once => once = true,
                Grant::Window { window: w } => {
                    let w = parse_duration(w).unwrap_or(0);
                    window = Some(window.map_or(w, |x| x.min(w)));
                }
            }
            requirements.push(Requirement {
                rule: format!("{}/{}", policy.name, rule.name),
                policy_version: policy.version.clone(),
                approver_groups: approval.approvers.groups.clone(),
                approver_users: approval.approvers.users.clone(),
                min_approvals: approval.min_approvals,
                allow_self_approval: approval.allow_self_approval,
            });
        }
    }
    let recorded_arguments = captured_arguments(&policies, &decision, derived.arguments.as_ref());
    let approval = Approval {
        id: random_id(),
        summary: format!(
            "{} asks to run {} {} on {}",
            principal.display_name,
            derived.method,
            derived.target.name().unwrap_or_default(),
            call.server
        ),
        binding,
        requester: Person::from(&principal),
        requirements,
        arguments: recorded_arguments,
        session_id: call.session_id.clone(),
        protocol_version: call.protocol_version.clone(),
        grant_window: if once { None } else { window },
        state: State::Pending,
        created_at: now,
        expires_at: now.saturating_add(if timeout == u64::MAX { 1800 } else { timeout }),
        decisions: Vec::new(),
        conversation: Vec::new(),
        approved_at: None,
        releases: 0,
        last_release: None,
        version: 0,
        arrivals: Vec::new(),
    };
    service.store.insert(&approval).await?;
    service.expire_at(&approval);
    service.record(service.approval_event("approval.asked", &approval, None, None))?;
    service.notify("approval.asked", &approval, None, "");
    let _ = service.changes.send(approval.id.clone());
    ok(StatusCode::CREATED, view(&approval, now))
}

async fn show<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    Extension(side): Extension<Side>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let principal = service.principal(&headers, side).await?;
    let mut changes = service.changes.subscribe();
    let approval = service.load(&id).await?;
    if !service.visible_to(&approval, &principal) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_approval",
            format!("no approval {id:?}"),
        ));
    }
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut current = approval;
    let started = current.state;
    while current.state == started && current.state.waiting() {
        // Wake on a change of this approval, at its expiry, or at the deadline.
        let until_expiry = Duration::from_secs(current.expires_at.saturating_sub(now_seconds()));
        let wake = deadline.min(tokio::time::Instant::now() + until_expiry);
        if tokio::time::Instant::now() >= wake {
            break;
        }
        match tokio::time::timeout_at(wake, changes.recv()).await {
            Ok(Ok(changed)) if changed != id => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) => break,
            _ => {}
        }
        current = service.load(&id).await?;
    }
    ok(StatusCode::OK, view(&current, now_seconds()))
}

async fn consume<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let (principal, call) = service.call_from_gateway(&headers, &bytes).await?;
    let key = release_key(&headers)?;
    let derived = derive(&call)?;
    let binding = derived.binding(&principal, &call.server);
    let now = now_seconds();
    // Cut off since the call was held: refused, not released, approved or not.
    service.refuse_revoked(
        &call.server,
        &principal,
        call.session_id.as_deref(),
        Some(&id),
    )?;
    let approval = service
        .change_and_record(&id, "approval.executed", None, None, |a| {
            a.consume(&binding, key, now)
        })
        .await?;
    ok(StatusCode::OK, view(&approval, now))
}

/// A gateway cancels the waiting request for a call whose caller went away
/// while it was held: found by the call, as an identical ask finds it, so
/// that a caller gone before the ask was answered leaves nothing behind.
async fn cancel<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let (principal, call) = service.call_from_gateway(&headers, &bytes).await?;
    let binding = derive(&call)?.binding(&principal, &call.server);
    let now = now_seconds();
    let waiting = service
        .store
        .latest_for(&binding)
        .await?
        .filter(|a| a.state_at(now).waiting())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "nothing_waiting",
                "no request waits for this call",
            )
        })?;
    let approval = service
        .change_and_record(
            &waiting.id,
            "approval.cancelled",
            None,
            Some("the caller went away while the call was held".into()),
            |a| a.cancel(now),
        )
        .await?;
    ok(StatusCode::OK, view(&approval, now))
}

async fn decide<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let approver = service.principal(&headers, Side::People).await?;
    let decision: DecisionBody = body(&bytes)?;
    service.check_approver(&id, &approver).await?;
    let now = now_seconds();
    let approval = service
        .change_and_record(
            &id,
            "approval.decided",
            Some(&approver),
            Some(decision.reason.clone()),
            |a| a.decide(&approver, decision.verdict, &decision.reason, now),
        )
        .await?;
    service
        .metrics
        .decisions
        .with_label_values(&[decision.verdict.label()])
        .inc();
    service.observe_decision(&approval, now);
    ok(StatusCode::OK, view(&approval, now))
}

async fn ask_info<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let approver = service.principal(&headers, Side::People).await?;
    let question: MessageBody = body(&bytes)?;
    service.check_approver(&id, &approver).await?;
    let now = now_seconds();
    let approval = service
        .change_and_record(
            &id,
            "approval.info_requested",
            Some(&approver),
            Some(question.message.clone()),
            |a| a.ask(&approver, &question.message, now),
        )
        .await?;
    ok(StatusCode::OK, view(&approval, now))
}

async fn answer<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let requester = service.principal(&headers, Side::People).await?;
    let reply: MessageBody = body(&bytes)?;
    let now = now_seconds();
    let approval = service
        .change_and_record(
            &id,
            "approval.answered",
            None,
            Some(reply.message.clone()),
            |a| a.answer(&requester, &reply.message, now),
        )
        .await?;
    ok(StatusCode::OK, view(&approval, now))
}

async fn list<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    headers: HeaderMap,
) -> ApiResult {
    let principal = service.principal(&headers, Side::People).await?;
    let now = now_seconds();
    let visible: Vec<Value> = service
        .store
        .list()
        .await?
        .iter()
        .filter(|a| service.visible_to(a, &principal))
        .map(|a| view(a, now))
        .collect();
    ok(StatusCode::OK, Value::Array(visible))
}

async fn audit<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let gateway = service.check_gateway(&headers).await?;
    let mut events: Vec<AuditEvent> = body(&bytes)?;
    // An event's server is the one whose credential sent it, whatever it claims.
    if let GatewayIdentity::Server(server) = &gateway {
        for event in &mut events {
            event.server.clone_from(server);
        }
    }
    service.record_all(&events)?;
    ok(StatusCode::ACCEPTED, json!({"accepted": events.len()}))
}

/// A gateway's policies, long-polled: answers at once when the gateway's
/// version is stale, otherwise when the policies change or `wait` ends.
async fn config<S: Store>(
    AppState(service): AppState<Arc<ApprovalService<S>>>,
    UrlPath((namespace, server)): UrlPath<(String, String)>,
    Query(query): Query<ConfigQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let gateway = service.check_gateway(&headers).await?;
    let server = format!("{namespace}/{server}");
    gateway.may_act_for(&server)?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = service.catalog.subscribe();
    loop {
        let catalog = changes.borrow_and_update().clone();
        let document = catalog
            .document(&server)
            .ok_or_else(|| unknown_server(&server))?;
        if query.after.as_deref() != Some(document.version.as_str()) {
            return ok(StatusCode::OK, json!(document));
        }
        if !matches!(
            tokio::time::timeout_at(deadline, changes.changed()).await,
            Ok(Ok(()))
        ) {
            return ok(StatusCode::OK, json!(document));
        }
    }
}

/// Ready once the catalog is read (a gateway asking sooner would be
/// refused) and until the process is stopping.
async fn readyz<S: Store>(AppState(service): AppState<Arc<ApprovalService<S>>>) -> Response {
    use std::sync::atomic::Ordering::Acquire;
    let unready = |why| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if service.stopping.load(Acquire) {
        unready("stopping")
    } else if !service.catalog_ready.load(Acquire) {
        unready("reading servers and policies")
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

/// Prometheus text exposition; pending requests are counted from the store.
async fn metrics<S: Store>(AppState(service): AppState<Arc<ApprovalService<S>>>) -> ApiResult {
    let now = now_seconds();
    let mut waiting: BTreeMap<String, i64> = BTreeMap::new();
    for approval in service.store.list().await? {
        if approval.state_at(now).waiting() {
            *waiting.entry(approval.binding.server.clone()).or_default() += 1;
        }
    }
    // A server with nothing waiting any more drops out rather than stay at
    // its last count.
    service.metrics.pending.reset();
    for (server, count) in waiting {
        service
            .metrics
            .pending
            .with_label_values(&[&server])
            .set(count);
    }
    let text = service
        .metrics
        .render()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()))?;
    Ok((
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::model::tests::{approval, person};
    use crate::approvals::store::SqliteStore;

    /// A service on SQLite in `dir`, with nothing to serve but its store.
    fn service(dir: &std::path::Path) -> Arc<ApprovalService<SqliteStore>> {
        let trust = TrustConfig::tenant("t", "api://test");
        ApprovalService::new(
            SqliteStore::open(&dir.join("approvals.db")).unwrap(),
            ServiceConfig {
                trust: trust.clone(),
                people: trust,
                approver_access: None,
                notifier: None,
                jwks: Vec::new(),
                gateway_credentials: GatewayCredentials::Shared("x".into()),
                max_pending_per_principal: 20,
                jwks_min_refresh: Duration::from_secs(1),
            },
            Catalog::new(Vec::new(), Vec::new()).unwrap(),
            AuditLog::open(&dir.join("audit.jsonl")).unwrap(),
        )
        .unwrap()
    }

    fn arrival(oid: &str) -> Arrival {
        Arrival {
            by: (&person(oid, &["leads"])).into(),
            act: Act::Decide {
                verdict: Verdict::Approve,
                reason: "ok".into(),
            },
        }
    }

    #[tokio::test]
    async fn what_arrives_is_judged_recorded_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let now = now_seconds();
        let mut open = approval(1, false, None);
        open.id = "ar-open".into();
        (open.created_at, open.expires_at) = (now, now + 600);
        open.arrivals = vec![arrival("lea")];
        let mut late = approval(1, false, None);
        late.id = "ar-late".into();
        (late.created_at, late.expires_at) = (now - 700, now - 100);
        late.arrivals = vec![arrival("max")];
        for a in [&open, &late] {
            service.store.insert(a).await.unwrap();
        }

        let approved = service.load("ar-open").await.unwrap();
        assert_eq!(approved.state, State::Approved);
        assert_eq!(approved.decisions[0].via, Via::Kubectl);
        let expired = service.load("ar-late").await.unwrap();
        assert_eq!(expired.state, State::Expired);
        assert!(expired.decisions.is_empty(), "a late decision was counted");
        // Written: loading again finds nothing more to do.
        assert_eq!(service.load("ar-open").await.unwrap(), approved);

        let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let kinds: Vec<String> = trail
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|r| {
                format!(
                    "{} {}",
                    r["kind"].as_str().unwrap_or(""),
                    r["via"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "approval.decided kubectl",
                "approval.expired ",
                "approval.refused kubectl"
            ]
        );
    }

    #[test]
    fn a_gateway_acts_only_for_its_own_server() {
        let own = GatewayIdentity::Server("ml/models".into());
        assert!(own.may_act_for("ml/models").is_ok());
        let refused = own.may_act_for("ml/other").unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.message.contains("ml/models"), "{}", refused.message);
        assert!(GatewayIdentity::Any.may_act_for("anything/at-all").is_ok());
    }
}
