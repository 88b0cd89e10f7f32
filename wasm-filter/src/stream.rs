//! One HTTP stream through the gateway.

use crate::holds::{HoldPlace, unique_key};
use crate::{FILTER_HEADER, Gateway, keys, now_millis, now_seconds, service, sessions};
use airlock_policy::audit::{AuditEvent, rfc3339};
use airlock_policy::entra::Principal;
use airlock_policy::gateway::auth::{AuthError, authenticate};
use airlock_policy::gateway::capture::ResponseCapture;
use airlock_policy::gateway::config::CLOCK_CLUSTER;
use airlock_policy::gateway::hold::{Next, Stage, on_answer};
use airlock_policy::gateway::judge::{Answering, Outcome, judge, refuse};
use airlock_policy::gateway::key_refetch::{KeyRefusal, UnknownKid, after_waiting};
use airlock_policy::gateway::record::{Seen, judged_events, refusal_reason, refused_event};
use airlock_policy::gateway::reply::{
    Reply, codes, credentials_required, error_object, error_response, unauthorized,
};
use airlock_policy::gateway::request::{
    Route, Routed, bearer_token, is_gateway_header, json_content_type, route,
};
use airlock_policy::gateway::revocation::revoked;
use airlock_policy::gateway::session::{Ownership, legacy_endpoint_session, legacy_query_session};
use airlock_policy::gateway::sse::EventSplitter;
use airlock_policy::gateway::tools_list::{filter_event, filter_response};
use airlock_policy::gateway::{
    DRY_RUN_HEADER, METHOD_HEADER, NAME_HEADER, PROTOCOL_VERSION_HEADER, identity_headers,
    resource_metadata, resource_metadata_url,
};
use airlock_policy::json::Limits;
use airlock_policy::mcp::{
    Envelope, INVALID_REQUEST, MessageKind, ProtocolVersion, RequestContext, RequestId, classify,
};
use airlock_policy::model::{Action, CompiledPolicy};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action as Flow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest unfinished event held back from a legacy stream before the gateway
/// gives up on it (and ends the stream rather than pass it unread).
const LEGACY_EVENT_LIMIT: usize = 1024 * 1024;

/// What the gateway does with the upstream's response.
enum ResponseWork {
    /// Stream it through untouched.
    Pass,
    /// An initialize response: bind the session it creates to the caller.
    BindSession,
    /// A `tools/list` response: buffer and filter it for the caller.
    FilterToolsList { id: RequestId, event_stream: bool },
    /// A legacy SSE stream: bind the session its `endpoint` event names, and
    /// filter the tool lists that travel on it, event by event.
    LegacyStream { events: EventSplitter, bound: bool },
    /// A session termination: forget the binding once the server confirms.
    Unbind { session: String },
}

/// A call held for approval.
struct Held {
    stage: Stage,
    /// Seconds since the epoch when the hold gives up.
    deadline: u64,
    envelope: Envelope,
    index: usize,
    answering: Answering,
    rule: Option<String>,
    /// What the approval service is told about the call.
    call: Vec<u8>,
    /// This hold's name for its release, sent with every attempt at it.
    release_key: String,
    /// Its place under the caps on held calls, kept while it is held.
    _place: HoldPlace,
}

/// The audit reason of a call whose answer stopped before its end.
const BROKEN_ANSWER: &str =
    "the answer did not reach its end: the MCP server or the connection broke off";

/// How long a call waiting for refetched keys sleeps between looks.
const KEY_WAIT_POLL_MS: &str = "100";

/// A call whose token names a `kid` its tenant has not published (yet),
/// waiting for the refetched keys (`airlock_policy::gateway::key_refetch`).
struct KeyWait {
    token: String,
    tenant: String,
    kid: String,
    since_ms: u64,
    metadata_url: String,
    routed: Routed,
    end_of_stream: bool,
    /// The request body's size, once all of it arrived during the wait.
    body_complete: Option<usize>,
    _slot: WaiterSlot,
}

/// One of a worker's places for calls waiting for keys, given back when the
/// wait ends or the stream goes away.
struct WaiterSlot(Rc<Gateway>);

impl WaiterSlot {
    fn take(gateway: &Rc<Gateway>) -> Option<WaiterSlot> {
        let waiting = gateway.key_waiters.get();
        if waiting >= gateway.config.unknown_key_waiters {
            return None;
        }
        gateway.key_waiters.set(waiting + 1);
        gateway.metrics.key_waiters(1);
        Some(WaiterSlot(gateway.clone()))
    }
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        let waiting = &self.0.key_waiters;
        waiting.set(waiting.get().saturating_sub(1));
        self.0.metrics.key_waiters(-1);
    }
}

/// What a request's token came to.
enum Verified {
    Caller(Arc<Principal>),
    /// The token names an unknown `kid`, and waits for refetched keys.
    AwaitingKeys {
        tenant: String,
        kid: String,
    },
}

pub struct AirlockStream {
    gateway: Option<Rc<Gateway>>,
    /// The policies in force when the stream began, used for all of it.
    policies: Rc<Vec<CompiledPolicy>>,
    principal: Option<Arc<Principal>>,
    /// The caller's token, kept for asking the approval service in its name.
    token: Option<String>,
    held: Option<Held>,
    key_wait: Option<KeyWait>,
    route: Route,
    /// Headers were paused so the body is judged before it goes upstream.
    judge_body: bool,
    dry_run: Option<String>,
    replied: bool,
    response: ResponseWork,
    record: Record,
    /// The request's headers as the client sent them, read once: every host
    /// call costs more than a lookup here.
    request_headers: Vec<(String, String)>,
    /// Session capture: what to redact in the answer, until its headers
    /// arrive; then the answer's messages as they stream past.
    capture_redact: Option<Vec<String>>,
    capture: Option<ResponseCapture>,
}

/// What the stream's audit events need, gathered as it goes.
#[derive(Default)]
struct Record {
    started: Option<SystemTime>,
    /// When the request went upstream or was answered here.
    settled: Option<SystemTime>,
    held_since: Option<SystemTime>,
    held_for: Duration,
    session: Option<String>,
    /// One event per message, once the body was judged.
    events: Vec<AuditEvent>,
    /// The message held for approval, and the approval that released it.
    held_index: Option<usize>,
    approval: Option<String>,
    refusal: Option<Reply>,
    upstream_status: Option<u16>,
    /// The upstream's answer reached its end (not cut off mid-stream).
    response_complete: bool,
}

impl Context for AirlockStream {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(wait) = self.key_wait.take() {
            let clock = (num_headers > 0)
                .then(|| self.get_http_call_response_header(":status"))
                .flatten();
            self.on_key_wait(wait, clock.as_deref() == Some("204"));
            return;
        }
        let Some(mut held) = self.held.take() else {
            return;
        };
        // No headers means no answer: the callout failed.
        let status = (num_headers > 0)
            .then(|| self.get_http_call_response_header(":status"))
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let remaining = held.deadline.saturating_sub(now_seconds(self));
        let next = on_answer(&held.stage, status, &body, remaining, held.rule.as_deref());
        match next {
            Next::Refuse(refusal) => {
                self.end_hold();
                let reply = refuse(&held.envelope, &[(held.index, refusal)], held.answering);
                self.reply(&reply);
            }
            Next::Release { id } => {
                self.end_hold();
                self.record.approval = Some(id.clone());
                self.record.settled = Some(self.get_current_time());
                if let Some(principal) = &self.principal {
                    for (name, value) in
                        identity_headers(principal, Action::RequireApproval, Some(&id))
                    {
                        self.set_http_request_header(name, Some(&value));
                    }
                }
                self.resume_http_request();
            }
            Next::Poll { id, wait, failures } => {
                held.stage = Stage::Waiting {
                    id: id.clone(),
                    failures,
                };
                self.call_service(
                    held,
                    "GET",
                    &format!("/v1/approvals/{id}?wait={wait}"),
                    wait + 5,
                );
            }
            Next::Consume { id, failures } => {
                held.stage = Stage::Releasing {
                    id: id.clone(),
                    failures,
                };
                self.call_service(held, "POST", &format!("/v1/approvals/{id}/consume"), 10);
            }
        }
    }
}

fn too_large(limit: usize) -> Reply {
    Reply::http_error(
        413,
        "payload_too_large",
        &format!("request body is over the gateway's limit of {limit} bytes"),
    )
}

impl AirlockStream {
    pub fn new(gateway: Option<Rc<Gateway>>) -> AirlockStream {
        AirlockStream {
            gateway,
            policies: Rc::default(),
            principal: None,
            token: None,
            held: None,
            key_wait: None,
            route: Route::Mcp,
            judge_body: false,
            dry_run: None,
            replied: false,
            response: ResponseWork::Pass,
            record: Record::default(),
            request_headers: Vec::new(),
            capture_redact: None,
            capture: None,
        }
    }

    /// Answers locally. Never twice for a stream, never followed by a resume.
    fn reply(&mut self, reply: &Reply) -> Flow {
        if !self.replied {
            self.replied = true;
            self.record.settled = Some(self.get_current_time());
            self.record.refusal = Some(reply.clone());
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
        first(&self.request_headers, name)
    }

    fn verify(
        &self,
        gateway: &Gateway,
        token: &str,
        metadata_url: &str,
    ) -> Result<Verified, Reply> {
        let now_ms = now_millis(self);
        let attempt = || {
            authenticate(
                &gateway.config,
                gateway.keys.borrow().ring(),
                &mut gateway.tokens.borrow_mut(),
                token,
                now_ms / 1000,
            )
        };
        let verified = match attempt() {
            // Another VM may have published keys since this one last looked.
            Err(AuthError::KeysNotLoaded(_) | AuthError::UnknownKey { .. }) => {
                gateway.keys.borrow_mut().sync();
                attempt()
            }
            result => result,
        };
        match verified {
            Ok(principal) => Ok(Verified::Caller(principal)),
            Err(AuthError::UnknownKey { tenant, kid }) => {
                match keys::unknown_kid(gateway.config.refetch_rules(), &tenant, &kid, now_ms) {
                    UnknownKid::Wait { .. } => Ok(Verified::AwaitingKeys { tenant, kid }),
                    UnknownKid::Refuse(refusal) => {
                        Err(key_refusal(gateway, &refusal, metadata_url))
                    }
                }
            }
            Err(e) => Err(token_refusal(gateway, &e, metadata_url)),
        }
    }

    /// Asks the clock to answer in a moment: its answer wakes the call
    /// waiting for keys.
    fn wait_a_moment(&self) -> Result<(), Reply> {
        let headers = vec![
            (":method", "GET"),
            (":path", "/"),
            (":authority", CLOCK_CLUSTER),
            ("x-envoy-fault-delay-request", KEY_WAIT_POLL_MS),
        ];
        self.dispatch_http_call(CLOCK_CLUSTER, headers, None, vec![], Duration::from_secs(5))
            .map(|_| ())
            .map_err(|status| {
                log::error!("airlock: cannot call {CLOCK_CLUSTER} to wait for keys: {status:?}");
                cannot_wait()
            })
    }

    /// The clock answered a call waiting for keys (`ticked`: as a clock
    /// does): look again, and admit, refuse or wait on.
    fn on_key_wait(&mut self, wait: KeyWait, ticked: bool) {
        let Some(gateway) = self.gateway.clone() else {
            return;
        };
        if self.replied {
            return;
        }
        gateway.keys.borrow_mut().sync();
        let now_ms = now_millis(self);
        let verified = authenticate(
            &gateway.config,
            gateway.keys.borrow().ring(),
            &mut gateway.tokens.borrow_mut(),
            &wait.token,
            now_ms / 1000,
        );
        let outcome = match verified {
            Ok(principal) => self
                .admit(
                    &gateway,
                    principal,
                    wait.token,
                    &wait.routed,
                    wait.end_of_stream,
                )
                .and_then(|flow| match wait.body_complete {
                    // The body arrived while the call waited: judge it now.
                    Some(size) if self.judge_body => {
                        let body = self.get_http_request_body(0, size).unwrap_or_default();
                        self.on_body(&gateway, &body)
                    }
                    _ => Ok(flow),
                }),
            Err(AuthError::UnknownKey { .. }) => {
                let last = keys::last_refetch(&wait.tenant);
                let rules = gateway.config.refetch_rules();
                match after_waiting(rules, last, &wait.tenant, &wait.kid, wait.since_ms, now_ms) {
                    Some(refusal) => Err(key_refusal(&gateway, &refusal, &wait.metadata_url)),
                    None if !ticked => Err(cannot_wait()),
                    None => {
                        self.key_wait = Some(wait);
                        match self.wait_a_moment() {
                            Ok(()) => return,
                            Err(reply) => Err(reply),
                        }
                    }
                }
            }
            Err(e) => Err(token_refusal(&gateway, &e, &wait.metadata_url)),
        };
        self.key_wait = None;
        match outcome {
            Ok(Flow::Continue) => self.resume_http_request(),
            // Waiting for the rest of the body, or held for approval.
            Ok(_) => {}
            Err(reply) => {
                self.reply(&reply);
            }
        }
    }

    fn on_headers(&mut self, gateway: &Gateway, end_of_stream: bool) -> Result<Flow, Reply> {
        self.request_headers = self.get_http_request_headers();
        let method = self.header(":method").unwrap_or_default();
        let path = self.header(":path").unwrap_or_default();
        let authority = self.header(":authority").unwrap_or_default();
        let routed = route(&gateway.config, &method, &path)?;
        self.route = routed.route;
        if routed.route == Route::ResourceMetadata {
            return Err(resource_metadata(&gateway.config, &authority));
        }
        self.policies = gateway.policy.borrow_mut().in_force(&gateway.config).ok_or_else(|| {
            Reply::http_error(
                503,
                "policy_unavailable",
                "the gateway has not received its policy from the approval service yet, so it refuses every call",
            )
        })?;
        let metadata_url = resource_metadata_url(&gateway.config, &authority);
        let headers = &self.request_headers;
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
            Ok(Some(token)) => token.to_string(),
            Ok(None) => {
                gateway.metrics.token_failure("missing");
                return Err(credentials_required(&metadata_url));
            }
            Err(why) => {
                gateway.metrics.token_failure("malformed_header");
                return Err(unauthorized(why, &metadata_url));
            }
        };
        match self.verify(gateway, &token, &metadata_url)? {
            Verified::Caller(principal) => {
                self.admit(gateway, principal, token, &routed, end_of_stream)
            }
            Verified::AwaitingKeys { tenant, kid } => {
                let Some(slot) = self.gateway.as_ref().and_then(WaiterSlot::take) else {
                    let refusal = KeyRefusal::TooManyWaiting {
                        tenant,
                        limit: gateway.config.unknown_key_waiters,
                    };
                    return Err(key_refusal(gateway, &refusal, &metadata_url));
                };
                self.wait_a_moment()?;
                self.key_wait = Some(KeyWait {
                    token,
                    tenant,
                    kid,
                    since_ms: now_millis(self),
                    metadata_url,
                    routed,
                    end_of_stream,
                    body_complete: None,
                    _slot: slot,
                });
                Ok(Flow::Pause)
            }
        }
    }

    /// Lets a verified caller's request on: what the headers alone decide.
    fn admit(
        &mut self,
        gateway: &Gateway,
        principal: Arc<Principal>,
        token: String,
        routed: &Routed,
        end_of_stream: bool,
    ) -> Result<Flow, Reply> {
        let method = self.header(":method").unwrap_or_default();
        if method == "POST" {
            self.token = Some(token);
        }
        if !gateway.config.forward_token {
            self.set_http_request_header("authorization", None);
        }
        self.set_http_request_header(":path", Some(&routed.forward_path));
        let session = match routed.route {
            Route::LegacyMessages => routed.query.as_deref().and_then(legacy_query_session),
            _ => self.header("mcp-session-id"),
        };
        if let Some(session) = &session
            && sessions::ownership(session, &principal) != Ownership::Owner
        {
            gateway.metrics.decision_label("SessionRefused");
            // Whether it belongs to someone else or to no one, this caller may not use it.
            return Err(Reply::http_error(
                404,
                "session_not_found",
                "this session does not exist for this caller; start a new one with initialize",
            ));
        }
        let revocations = gateway.policy.borrow().revocations();
        // Most of the time there are none: no clock read for them.
        if !revocations.is_empty()
            && let Some(revocation) = revoked(
                &revocations,
                &principal,
                session.as_deref(),
                now_seconds(self),
            )
        {
            gateway.metrics.decision_label("Revoked");
            return Err(Reply::http_error(403, "revoked", &revocation.refusal()));
        }
        self.principal = Some(principal);
        self.record.session = session.clone();
        let has_body = !end_of_stream;
        if method == "POST" {
            if !has_body {
                return Err(parse_refusal("the request has no body"));
            }
            let declared_types: Vec<&str> = self
                .request_headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.as_str())
                .collect();
            json_content_type(&declared_types)?;
            let declared = self
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if declared > gateway.config.max_body_bytes {
                return Err(too_large(gateway.config.max_body_bytes));
            }
            self.judge_body = true;
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
        self.response = match (method.as_str(), routed.route, session) {
            ("DELETE", _, Some(session)) => ResponseWork::Unbind { session },
            ("GET", Route::LegacyStream, _) => ResponseWork::LegacyStream {
                events: EventSplitter::default(),
                bound: false,
            },
            _ => ResponseWork::Pass,
        };
        self.add_identity(Action::Allow);
        gateway.metrics.decision(Action::Allow);
        self.record.settled = Some(self.get_current_time());
        Ok(Flow::Continue)
    }

    fn add_identity(&self, action: Action) {
        if let Some(principal) = &self.principal {
            for (name, value) in identity_headers(principal, action, None) {
                self.set_http_request_header(name, Some(&value));
            }
        }
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
            _ => self
                .header(PROTOCOL_VERSION_HEADER)
                .map(|v| v.parse::<ProtocolVersion>())
                .transpose()
                .map_err(|e| {
                    Reply::http_error(400, "unsupported_protocol_version", &e.to_string())
                })?,
        };
        let method_header = self.header(METHOD_HEADER);
        let name_header = self.header(NAME_HEADER);
        let context = RequestContext {
            protocol_version,
            method_header: method_header.as_deref(),
            name_header: name_header.as_deref(),
            limits: Some(Limits {
                max_bytes: gateway.config.max_body_bytes,
                ..Limits::default()
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
        let judged = judge(&envelope, &self.policies, &principal, answering);
        let seen = Seen {
            time: rfc3339(self.record.started.map_or(0, seconds)),
            server: &gateway.config.server,
            principal: Some(&principal),
            session: self.record.session.clone(),
            protocol_version: protocol_version.map(|v| v.as_str()),
        };
        let kept = judged_events(&seen, &envelope, &judged, &self.policies);
        self.record.events = kept.events;
        if self.route == Route::Mcp {
            // Legacy answers travel on the GET stream, which is not captured.
            self.capture_redact = kept.answer_redact;
        }
        self.dry_run = judged.dry_run.clone();
        if let Some(would) = judged
            .verdicts
            .iter()
            .filter_map(|v| v.decision.as_ref())
            .find_map(|d| d.dry_run.iter().find(|v| v.action > judged.action))
        {
            gateway.metrics.dry_run(&would.action.to_string());
        }
        gateway.metrics.decision(judged.action);
        match judged.outcome {
            Outcome::Forward => {
                self.add_identity(judged.action);
                let streamable = self.route == Route::Mcp;
                if let (true, false, [message]) =
                    (streamable, envelope.batch, envelope.messages.as_slice())
                {
                    self.response = match (&message.kind, message.method.as_deref()) {
                        (MessageKind::Request { id }, Some("tools/list")) => {
                            ResponseWork::FilterToolsList {
                                id: id.clone(),
                                event_stream: false,
                            }
                        }
                        (MessageKind::Request { .. }, Some("initialize")) => {
                            ResponseWork::BindSession
                        }
                        _ => ResponseWork::Pass,
                    };
                }
                self.record.settled = Some(self.get_current_time());
                Ok(Flow::Continue)
            }
            Outcome::Refuse(reply) => Err(reply),
            Outcome::Hold { index } => {
                let rule = judged.verdicts[index].decision.as_ref().map(|d| d.reason());
                let message = &envelope.messages[index];
                let call = serde_json::json!({
                    "server": gateway.config.server,
                    "method": message.method,
                    "params": message.params,
                    "sessionId": self.header("mcp-session-id"),
                    "protocolVersion": protocol_version.map(|v| v.as_str()),
                });
                let now = now_seconds(self);
                let deadline = now.saturating_add(gateway.config.max_hold_seconds);
                let place = match HoldPlace::take(&gateway.config, &principal, now, deadline) {
                    Ok(place) => place,
                    Err(cap) => {
                        gateway.metrics.decision_label("HoldsFull");
                        let refusal = cap.refusal(rule.as_deref());
                        return Err(refuse(&envelope, &[(index, refusal)], answering));
                    }
                };
                let held = Held {
                    stage: Stage::Asking,
                    deadline,
                    _place: place,
                    index,
                    answering,
                    rule,
                    call: call.to_string().into_bytes(),
                    release_key: unique_key(self.get_current_time()),
                    envelope,
                };
                self.record.held_index = Some(index);
                self.record.held_since = Some(self.get_current_time());
                gateway.metrics.hold_started();
                self.call_service(held, "POST", "/v1/approvals", 10);
                // Nothing goes upstream until the approval service releases the call.
                Ok(Flow::Pause)
            }
        }
    }

    /// Calls the approval service in the caller's name; the answer arrives in
    /// `on_http_call_response`. A call that cannot be sent refuses at once.
    fn call_service(&mut self, held: Held, method: &str, path: &str, timeout_seconds: u64) {
        let Some(gateway) = self.gateway.clone() else {
            return;
        };
        let request = service::Request {
            method,
            path,
            bearer: self.token.as_deref(),
            release_key: matches!(held.stage, Stage::Releasing { .. })
                .then_some(held.release_key.as_str()),
            body: (method == "POST").then_some(held.call.as_slice()),
            timeout: Duration::from_secs(timeout_seconds),
        };
        let cluster = gateway.config.approvals.hold_cluster();
        match service::call(&gateway.config.approvals, cluster, request) {
            Ok(_) => self.held = Some(held),
            Err(status) => {
                let next = on_answer(
                    &held.stage,
                    None,
                    format!("{status:?}").as_bytes(),
                    0,
                    held.rule.as_deref(),
                );
                if let Next::Refuse(refusal) = next {
                    let reply = refuse(&held.envelope, &[(held.index, refusal)], held.answering);
                    self.reply(&reply);
                }
            }
        }
    }

    fn end_hold(&mut self) {
        if let Some(since) = self.record.held_since.take() {
            self.record.held_for = self
                .get_current_time()
                .duration_since(since)
                .unwrap_or_default();
            if let Some(gateway) = &self.gateway {
                gateway.metrics.hold_ended();
            }
        }
    }

    /// Completes the stream's events with what happened after judging, and
    /// queues them. A request refused before judging yields one event.
    fn write_audit(&mut self) {
        let Some(gateway) = self.gateway.clone() else {
            return;
        };
        let record = &mut self.record;
        let Some(started) = record.started else {
            return;
        };
        let mut events = std::mem::take(&mut record.events);
        if events.is_empty() {
            let Some(refusal) = &record.refusal else {
                // A stream opened or ended (GET, DELETE): no message to record.
                return;
            };
            let seen = Seen {
                time: rfc3339(seconds(started)),
                server: &gateway.config.server,
                principal: self.principal.as_deref(),
                session: record.session.clone(),
                protocol_version: None,
            };
            events.push(refused_event(&seen, refusal));
        }
        let spent = record
            .settled
            .and_then(|at| at.duration_since(started).ok())
            .unwrap_or_default()
            .saturating_sub(record.held_for);
        let reason = record
            .refusal
            .as_ref()
            .and_then(refusal_reason)
            .or_else(|| {
                (record.upstream_status.is_some() && !record.response_complete)
                    .then(|| BROKEN_ANSWER.to_string())
            });
        if let Some(capture) = self.capture.take()
            && let Some(event) = events.iter_mut().find(|e| e.request.is_some())
        {
            event.responses = capture.finish();
        }
        let mut queue = gateway.audit.borrow_mut();
        for (index, mut event) in events.into_iter().enumerate() {
            event.upstream_status = record.upstream_status;
            event.gateway_micros = Some(u64::try_from(spent.as_micros()).unwrap_or(u64::MAX));
            if record.held_index == Some(index) {
                event.held_micros =
                    Some(u64::try_from(record.held_for.as_micros()).unwrap_or(u64::MAX));
                event.approval_id = record.approval.clone();
            }
            if event.reason.is_none() {
                event.reason = reason.clone();
            }
            queue.push(event, &gateway.metrics);
        }
    }

    fn filter_tools_list(&mut self, id: &RequestId, event_stream: bool, body_size: usize) {
        let Some(principal) = &self.principal else {
            return;
        };
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let filtered = filter_response(&body, event_stream, id, &self.policies, principal)
            .unwrap_or_else(|| {
                // Never pass on a tool list the gateway could not read.
                let error = error_response(
                    Some(id),
                    error_object(
                        codes::DENIED,
                        "Airlock could not read the server's tool list, so it is withheld",
                        None,
                    ),
                );
                if event_stream {
                    format!("event: message\ndata: {error}\n\n").into_bytes()
                } else {
                    error.to_string().into_bytes()
                }
            });
        self.set_http_response_body(0, body_size, &filtered);
    }
}

/// A refused token, counted by why.
fn token_refusal(gateway: &Gateway, error: &AuthError, metadata_url: &str) -> Reply {
    gateway.metrics.token_failure(error.reason());
    error.reply(&gateway.config, metadata_url)
}

/// A token with an unknown `kid` refused, counted by why.
fn key_refusal(gateway: &Gateway, refusal: &KeyRefusal, metadata_url: &str) -> Reply {
    gateway.metrics.token_failure(refusal.reason());
    refusal.reply(metadata_url)
}

/// The gateway cannot wait for refetched keys: its clock does not answer.
fn cannot_wait() -> Reply {
    Reply::http_error(
        503,
        "keys_unavailable",
        &format!(
            "the token's signing key is not among the keys held here, and the gateway cannot wait for them to be refetched ({CLOCK_CLUSTER} does not answer)"
        ),
    )
}

fn parse_refusal(message: &str) -> Reply {
    Reply::json(
        400,
        &error_response(None, error_object(INVALID_REQUEST, message, None)),
    )
}

impl HttpContext for AirlockStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Flow {
        #[cfg(feature = "crash-hook")]
        if self
            .get_http_request_header("x-airlock-test-crash")
            .is_some()
        {
            // A trap, as a bug would cause one.
            std::process::abort();
        }
        self.record.started = Some(self.get_current_time());
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
        if let Some(wait) = &mut self.key_wait {
            if body_size > gateway.config.max_body_bytes {
                return self.reply(&too_large(gateway.config.max_body_bytes));
            }
            // Kept until the caller is known; judged then.
            if end_of_stream {
                wait.body_complete = Some(body_size);
            }
            return Flow::Pause;
        }
        if !self.judge_body {
            // Headers were not paused for judging (GET, DELETE): nothing to read.
            return Flow::Continue;
        }
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

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        self.record.response_complete = end_of_stream;
        let headers = self.get_http_response_headers();
        let status = first(&headers, ":status");
        self.record.upstream_status = status.as_deref().and_then(|s| s.parse().ok());
        self.set_http_response_header(FILTER_HEADER, Some(env!("CARGO_PKG_VERSION")));
        if let Some(dry_run) = &self.dry_run {
            self.set_http_response_header(DRY_RUN_HEADER, Some(dry_run));
        }
        let success = status.is_some_and(|s| s.starts_with('2'));
        let content_type = first(&headers, "content-type").unwrap_or_default();
        let new_session = first(&headers, "mcp-session-id");
        match &mut self.response {
            ResponseWork::BindSession => {
                if let (Some(session), Some(principal)) = (new_session, &self.principal)
                    && !sessions::bind(&session, principal)
                {
                    log::warn!("airlock: a new session id is already bound to another caller");
                }
                self.response = ResponseWork::Pass;
            }
            ResponseWork::FilterToolsList { event_stream, .. } if success => {
                *event_stream = content_type.starts_with("text/event-stream");
                // The body changes length, and must never be served to anyone else.
                self.set_http_response_header("content-length", None);
                self.set_http_response_header("cache-control", Some("private, no-store"));
            }
            ResponseWork::FilterToolsList { .. } => self.response = ResponseWork::Pass,
            ResponseWork::Unbind { session } => {
                if success {
                    sessions::unbind(session);
                }
                self.response = ResponseWork::Pass;
            }
            ResponseWork::LegacyStream { .. } | ResponseWork::Pass => {}
        }
        if let Some(redact) = self.capture_redact.take()
            && matches!(self.response, ResponseWork::Pass)
        {
            self.capture = Some(ResponseCapture::new(
                content_type.starts_with("text/event-stream"),
                redact,
            ));
        }
        Flow::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Flow {
        self.record.response_complete |= end_of_stream;
        if let Some(mut capture) = self.capture.take() {
            capture.push(
                &self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default(),
            );
            self.capture = Some(capture);
        }
        match std::mem::replace(&mut self.response, ResponseWork::Pass) {
            ResponseWork::FilterToolsList { id, event_stream } => {
                if !end_of_stream {
                    // tools/list is the one response buffered whole.
                    self.response = ResponseWork::FilterToolsList { id, event_stream };
                    return Flow::Pause;
                }
                self.filter_tools_list(&id, event_stream, body_size);
            }
            ResponseWork::LegacyStream {
                mut events,
                mut bound,
            } => {
                let chunk = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                let mut complete = events.push(&chunk);
                if end_of_stream {
                    complete.push(events.finish());
                }
                let mut out = String::new();
                for event in complete {
                    if !bound
                        && let (Some(session), Some(principal)) =
                            (legacy_endpoint_session(&event), &self.principal)
                    {
                        bound = sessions::bind(&session, principal);
                    }
                    match &self.principal {
                        Some(principal) => out.push_str(
                            &filter_event(&event, None, &self.policies, principal).unwrap_or(event),
                        ),
                        None => out.push_str(&event),
                    }
                }
                self.set_http_response_body(0, body_size, out.as_bytes());
                if events.pending() > LEGACY_EVENT_LIMIT {
                    log::warn!(
                        "airlock: legacy stream event over {LEGACY_EVENT_LIMIT} bytes; ending the stream"
                    );
                    self.reset_http_request();
                    return Flow::Pause;
                }
                self.response = ResponseWork::LegacyStream { events, bound };
            }
            other => self.response = other,
        }
        Flow::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Flow {
        self.record.response_complete = true;
        Flow::Continue
    }

    fn on_log(&mut self) {
        // Still asking or waiting as the stream ends: the caller went away
        // mid-hold, and its request must not be approved into nothing.
        if let (Some(held), Some(gateway), Some(token)) =
            (self.held.take(), &self.gateway, self.token.take())
            && !matches!(held.stage, Stage::Releasing { .. })
        {
            gateway.cancellations.borrow_mut().add(held.call, token);
        }
        self.end_hold();
        self.write_audit();
    }
}

/// The first value of header `name` (headers arrive with lower-case names).
fn first(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
