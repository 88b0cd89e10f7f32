//! Airlock's Envoy filter (proxy-wasm): host glue only.
//!
//! Every decision is made by `airlock_policy::gateway`; this file translates
//! Envoy's callbacks into calls on it and its answers back into host calls.
//! Signing keys are fetched once per Envoy: the VMs (one per worker) elect a
//! leader through shared data, the leader fetches, and every VM reads the key
//! sets from shared data.

mod keys;
mod metrics;

use airlock_policy::entra::Principal;
use airlock_policy::gateway::auth::{AuthError, TokenCache, authenticate};
use airlock_policy::gateway::config::FilterConfig;
use airlock_policy::gateway::judge::{Answering, Outcome, judge};
use airlock_policy::gateway::reply::{Refusal, Reply, codes, error_object, error_response};
use airlock_policy::gateway::request::{Route, bearer_token, is_gateway_header, route};
use airlock_policy::gateway::{
    DRY_RUN_HEADER, METHOD_HEADER, NAME_HEADER, PROTOCOL_VERSION_HEADER, identity_headers,
    resource_metadata, resource_metadata_url,
};
use airlock_policy::mcp::{ProtocolVersion, RequestContext, classify};
use airlock_policy::model::{Action, CompiledPolicy};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as Flow, ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AirlockRoot::default()) });
}}

/// The response header that names the filter version on every answer.
pub const FILTER_HEADER: &str = "x-airlock-filter";

/// What every stream of one VM shares.
struct Gateway {
    config: FilterConfig,
    policies: Vec<CompiledPolicy>,
    keys: RefCell<keys::KeyState>,
    tokens: RefCell<TokenCache>,
    metrics: metrics::Metrics,
}

#[derive(Default)]
struct AirlockRoot {
    gateway: Option<Rc<Gateway>>,
}

impl Context for AirlockRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(gateway) = &self.gateway {
            let status = self.get_http_call_response_header(":status");
            let body = self.get_http_call_response_body(0, body_size);
            gateway
                .keys
                .borrow_mut()
                .on_fetched(token, status.as_deref(), body.as_deref());
        }
    }
}

fn now_seconds(context: &dyn Context) -> u64 {
    context
        .get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RootContext for AirlockRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!("airlock: no plugin configuration");
            return false;
        };
        let config = match FilterConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("airlock: {e}");
                return false;
            }
        };
        let policies = match config.compiled_policies() {
            Ok(p) => p,
            Err(e) => {
                log::error!("airlock: {e}");
                return false;
            }
        };
        let tokens = RefCell::new(TokenCache::new(config.token_cache_entries));
        let keys = RefCell::new(keys::KeyState::new(&config));
        self.gateway = Some(Rc::new(Gateway {
            config,
            policies,
            keys,
            tokens,
            metrics: metrics::Metrics::define(),
        }));
        self.set_tick_period(Duration::from_millis(500));
        true
    }

    fn on_tick(&mut self) {
        if let Some(gateway) = self.gateway.clone() {
            gateway
                .keys
                .borrow_mut()
                .tick(&gateway.config, now_seconds(self));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configuration there is no gateway: the stream is refused.
        Some(Box::new(AirlockStream {
            gateway: self.gateway.clone(),
            principal: None,
            route: Route::Mcp,
            body_bytes: 0,
            dry_run: None,
            replied: false,
        }))
    }
}

struct AirlockStream {
    gateway: Option<Rc<Gateway>>,
    principal: Option<Principal>,
    route: Route,
    body_bytes: usize,
    dry_run: Option<String>,
    replied: bool,
}

impl Context for AirlockStream {}

impl AirlockStream {
    /// Answers locally. Never twice for a stream, never followed by a resume.
    fn reply(&mut self, reply: &Reply) -> Flow {
        if !self.replied {
            self.replied = true;
            let mut headers: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            headers.push((FILTER_HEADER, env!("CARGO_PKG_VERSION")));
            self.send_http_response(u32::from(reply.status), headers, Some(&reply.body));
        }
        Flow::Pause
    }

    fn header(&self, name: &str) -> Option<String> {
        self.get_http_request_header(name)
    }

    fn on_headers(&mut self, gateway: &Gateway, end_of_stream: bool) -> Result<Flow, Reply> {
        let method = self.header(":method").unwrap_or_default();
        let path = self.header(":path").unwrap_or_default();
        let authority = self.header(":authority").unwrap_or_default();
        let routed = route(&gateway.config, &method, &path)?;
        self.route = routed.route;
        if routed.route == Route::ResourceMetadata {
            return Err(resource_metadata(&gateway.config, &authority));
        }
        let metadata_url = resource_metadata_url(&gateway.config, &authority);
        let headers = self.get_http_request_headers();
        for (name, _) in headers.iter().filter(|(n, _)| is_gateway_header(n)) {
            self.set_http_request_header(name, None);
        }
        if headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-encoding"))
        {
            return Err(Reply::http_error(
                415,
                "unsupported_encoding",
                "compressed request bodies are refused: the gateway must read what it forwards",
            ));
        }
        let authorization: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .collect();
        let token = match bearer_token(&authorization) {
            Ok(Some(token)) => token,
            Ok(None) => {
                gateway.metrics.token_failure("missing");
                return Err(airlock_policy::gateway::reply::credentials_required(
                    &metadata_url,
                ));
            }
            Err(why) => {
                gateway.metrics.token_failure("malformed_header");
                return Err(airlock_policy::gateway::reply::unauthorized(
                    why,
                    &metadata_url,
                ));
            }
        };
        let now = now_seconds(self);
        let verify = || {
            authenticate(
                &gateway.config,
                gateway.keys.borrow().ring(),
                &mut gateway.tokens.borrow_mut(),
                token,
                now,
            )
        };
        let principal = match verify() {
            // Another VM may have published keys since this one last looked.
            Err(AuthError::KeysNotLoaded(_) | AuthError::UnknownKey { .. }) => {
                gateway.keys.borrow_mut().sync();
                verify()
            }
            result => result,
        }
        .map_err(|e| {
            gateway.metrics.token_failure(e.reason());
            if let AuthError::UnknownKey { tenant, .. } = &e {
                keys::request_refresh(tenant, now);
            }
            e.reply(&gateway.config, &metadata_url)
        })?;
        if !gateway.config.forward_token {
            self.set_http_request_header("authorization", None);
        }
        self.set_http_request_header(":path", Some(&routed.forward_path));
        let has_body = !end_of_stream;
        if method == "POST" {
            if !has_body {
                return Err(parse_refusal(400, "the request has no body"));
            }
            let declared = self
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if declared > gateway.config.max_body_bytes {
                return Err(too_large(gateway.config.max_body_bytes));
            }
            self.principal = Some(principal);
            // Judge the body before any byte goes upstream.
            return Ok(Flow::Pause);
        }
        if has_body {
            return Err(Reply::http_error(
                400,
                "invalid_request",
                &format!("{method} requests carry no body here"),
            ));
        }
        for (name, value) in identity_headers(&principal, Action::Allow, None) {
            self.set_http_request_header(name, Some(&value));
        }
        gateway.metrics.decision(Action::Allow);
        Ok(Flow::Continue)
    }

    fn on_body(&mut self, gateway: &Gateway, body: &[u8]) -> Result<Flow, Reply> {
        let Some(principal) = self.principal.clone() else {
            return Err(Reply::http_error(
                500,
                "internal",
                "no principal for this stream",
            ));
        };
        let protocol_version = match self.route {
            Route::LegacyMessages => Some(ProtocolVersion::V2024_11_05),
            _ => match self.header(PROTOCOL_VERSION_HEADER) {
                None => None,
                Some(v) => Some(v.parse::<ProtocolVersion>().map_err(|e| {
                    Reply::http_error(400, "unsupported_protocol_version", &e.to_string())
                })?),
            },
        };
        let method_header = self.header(METHOD_HEADER);
        let name_header = self.header(NAME_HEADER);
        let context = RequestContext {
            protocol_version,
            method_header: method_header.as_deref(),
            name_header: name_header.as_deref(),
            limits: Some(airlock_policy::json::Limits {
                max_bytes: gateway.config.max_body_bytes,
                ..Default::default()
            }),
        };
        let envelope = classify(body, &context).map_err(|e| {
            gateway.metrics.decision_label("Invalid");
            Reply::json(
                400,
                &error_response(None, error_object(e.code(), &e.to_string(), None)),
            )
        })?;
        let answering = match self.route {
            Route::LegacyMessages => Answering::HttpOnly,
            _ => Answering::JsonRpc,
        };
        let judged = judge(&envelope, &gateway.policies, &principal, answering);
        self.dry_run = judged.dry_run.clone();
        gateway.metrics.decision(judged.action);
        match judged.outcome {
            Outcome::Forward => {
                for (name, value) in identity_headers(&principal, judged.action, None) {
                    self.set_http_request_header(name, Some(&value));
                }
                Ok(Flow::Continue)
            }
            Outcome::Refuse(reply) => Err(reply),
            Outcome::Hold { index } => {
                // Holding needs the approval service (DESIGN "Approval service API"); until a
                // gateway is configured with one, a call that needs approval fails closed.
                let refusal = Refusal {
                    code: codes::APPROVAL_UNAVAILABLE,
                    reason: "This call needs human approval, and this gateway has no approval service configured, so it is refused.".into(),
                    decision: Action::RequireApproval.to_string(),
                    rule: judged.verdicts[index].decision.as_ref().map(|d| d.reason()),
                    approval: None,
                };
                Err(airlock_policy::gateway::judge::refuse(
                    &envelope,
                    &[(index, refusal)],
                    answering,
                ))
            }
        }
    }
}

fn parse_refusal(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &error_response(
            None,
            error_object(airlock_policy::mcp::INVALID_REQUEST, message, None),
        ),
    )
}

fn too_large(limit: usize) -> Reply {
    Reply::http_error(
        413,
        "payload_too_large",
        &format!("request body is over the gateway's limit of {limit} bytes"),
    )
}

impl HttpContext for AirlockStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Flow {
        let Some(gateway) = self.gateway.clone() else {
            return self.reply(&Reply::http_error(
                503,
                "unavailable",
                "the Airlock filter has no valid configuration",
            ));
        };
        match self.on_headers(&gateway, end_of_stream) {
            Ok(flow) => flow,
            Err(reply) => self.reply(&reply),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Flow {
        if self.replied {
            return Flow::Pause;
        }
        let Some(gateway) = self.gateway.clone() else {
            return Flow::Pause;
        };
        if self.principal.is_none() {
            // Headers were not paused for judging (GET, DELETE): nothing to read.
            return Flow::Continue;
        }
        self.body_bytes = body_size;
        if body_size > gateway.config.max_body_bytes {
            return self.reply(&too_large(gateway.config.max_body_bytes));
        }
        if !end_of_stream {
            // Buffer until the whole body is here.
            return Flow::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.on_body(&gateway, &body) {
            Ok(flow) => flow,
            Err(reply) => self.reply(&reply),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Flow {
        if !self.replied {
            self.set_http_response_header(FILTER_HEADER, Some(env!("CARGO_PKG_VERSION")));
            if let Some(dry_run) = &self.dry_run {
                self.set_http_response_header(DRY_RUN_HEADER, Some(dry_run));
            }
        }
        Flow::Continue
    }
}
