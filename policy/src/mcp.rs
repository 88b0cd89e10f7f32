//! Classification of MCP JSON-RPC messages, for every protocol era.
//!
//! The gateway judges what the body says, never what headers claim; where an
//! era mirrors body fields into headers (`Mcp-Method`, `Mcp-Name` in
//! 2026-07-28) the two must agree. Anything ambiguous is refused here, before
//! policy runs: a message two readers could understand differently is never
//! forwarded.

use crate::canonical::params_digest;
use crate::json::{self, JsonError, Limits};
use serde_json::{Map, Value};
use std::fmt;
use thiserror::Error;

/// MCP protocol revisions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// Legacy HTTP+SSE: a GET stream plus a POST endpoint.
    V2024_11_05,
    /// Streamable HTTP; JSON-RPC batches allowed.
    V2025_03_26,
    /// Batches removed; `MCP-Protocol-Version` header after initialize.
    V2025_06_18,
    /// Same wire shape as 2025-06-18.
    V2025_11_25,
    /// Stateless; `Mcp-Method`/`Mcp-Name` headers mirror the body.
    V2026_07_28,
}

impl ProtocolVersion {
    pub const ALL: [ProtocolVersion; 5] = [
        Self::V2024_11_05,
        Self::V2025_03_26,
        Self::V2025_06_18,
        Self::V2025_11_25,
        Self::V2026_07_28,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2024_11_05 => "2024-11-05",
            Self::V2025_03_26 => "2025-03-26",
            Self::V2025_06_18 => "2025-06-18",
            Self::V2025_11_25 => "2025-11-25",
            Self::V2026_07_28 => "2026-07-28",
        }
    }

    /// The version a Streamable HTTP request without `MCP-Protocol-Version` speaks.
    pub const ASSUMED_WITHOUT_HEADER: ProtocolVersion = Self::V2025_03_26;

    pub fn allows_batches(self) -> bool {
        self == Self::V2025_03_26
    }

    pub fn mirrors_headers(self) -> bool {
        self >= Self::V2026_07_28
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = McpError;
    fn from_str(s: &str) -> Result<Self, McpError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| McpError::UnsupportedVersion(s.to_string()))
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JSON-RPC request id: a string or an integer, never null.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    Number(i64),
    String(String),
}

impl RequestId {
    pub fn to_json(&self) -> Value {
        match self {
            RequestId::Number(n) => Value::from(*n),
            RequestId::String(s) => Value::from(s.as_str()),
        }
    }
}

/// Makes a [`Target`] of one kind from its name.
type TargetKind = fn(String) -> Target;

/// What a message addresses, when its method names a tool, resource or prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    None,
    Tool(String),
    Resource(String),
    Prompt(String),
}

impl Target {
    /// The parameter that names what `method` addresses, and the kind of
    /// target it is; `None` for a method that addresses nothing.
    fn addressing(method: &str) -> Option<(&'static str, TargetKind)> {
        match method {
            "tools/call" => Some(("name", Target::Tool)),
            "prompts/get" => Some(("name", Target::Prompt)),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Some(("uri", Target::Resource))
            }
            _ => None,
        }
    }

    /// What `method` addresses by `name` (as the trail records both).
    pub fn addressed(method: &str, name: String) -> Target {
        Target::addressing(method).map_or(Target::None, |(_, kind)| kind(name))
    }

    /// The value `Mcp-Name` mirrors: the tool or prompt name, or the resource URI.
    pub fn name(&self) -> Option<&str> {
        match self {
            Target::None => None,
            Target::Tool(s) | Target::Resource(s) | Target::Prompt(s) => Some(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    Request { id: RequestId },
    Notification,
    Response { id: RequestId, is_error: bool },
}

/// One classified JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageKind,
    /// The method, for requests and notifications.
    pub method: Option<String>,
    pub target: Target,
    /// `params.arguments` where the method has arguments (tools/call, prompts/get).
    pub arguments: Option<Value>,
    pub params: Option<Value>,
    /// Digest of the canonical params without `_meta` (requests and notifications).
    pub params_digest: Option<String>,
}

impl Message {
    pub fn id(&self) -> Option<&RequestId> {
        match &self.kind {
            MessageKind::Request { id } | MessageKind::Response { id, .. } => Some(id),
            MessageKind::Notification => None,
        }
    }
}

/// A POST body: one message, or a batch where the era allows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub batch: bool,
    pub messages: Vec<Message>,
}

/// Headers and session facts that bear on how a body is read.
#[derive(Debug, Clone, Default)]
pub struct RequestContext<'a> {
    /// The negotiated version (from `MCP-Protocol-Version` or the session);
    /// `None` for a Streamable HTTP request without the header.
    pub protocol_version: Option<ProtocolVersion>,
    /// The `Mcp-Method` header, if sent.
    pub method_header: Option<&'a str>,
    /// The `Mcp-Name` header, if sent.
    pub name_header: Option<&'a str>,
    pub limits: Option<Limits>,
}

/// JSON-RPC error codes for refusals at parse time.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
/// 2026-07-28: headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum McpError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("unsupported MCP protocol version {0:?}")]
    UnsupportedVersion(String),
    #[error("JSON-RPC batches are not allowed in protocol version {0}")]
    BatchNotAllowed(ProtocolVersion),
    #[error("empty JSON-RPC batch")]
    EmptyBatch,
    #[error("message {index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("{0}")]
    HeaderMismatch(String),
}

impl McpError {
    /// The JSON-RPC error code a client should receive for this refusal.
    pub fn code(&self) -> i64 {
        match self {
            McpError::Json(JsonError::TooLarge { .. }) => INVALID_REQUEST,
            McpError::Json(_) => PARSE_ERROR,
            McpError::HeaderMismatch(_) => HEADER_MISMATCH,
            _ => INVALID_REQUEST,
        }
    }
}

const ENVELOPE_KEYS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// Parses and classifies a POST body under the rules of `ctx`'s protocol version.
pub fn classify(body: &[u8], ctx: &RequestContext<'_>) -> Result<Envelope, McpError> {
    let value = json::parse(body, ctx.limits.unwrap_or_default())?;
    let version = ctx
        .protocol_version
        .unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER);
    let envelope = match value {
        Value::Array(items) => {
            if !version.allows_batches() {
                return Err(McpError::BatchNotAllowed(version));
            }
            if items.is_empty() {
                return Err(McpError::EmptyBatch);
            }
            let messages = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| message(index, item))
                .collect::<Result<Vec<_>, _>>()?;
            check_batch(&messages)?;
            Envelope {
                batch: true,
                messages,
            }
        }
        other => Envelope {
            batch: false,
            messages: vec![message(0, other)?],
        },
    };
    check_headers(&envelope, ctx, version)?;
    Ok(envelope)
}

fn invalid(index: usize, reason: impl Into<String>) -> McpError {
    McpError::Invalid {
        index,
        reason: reason.into(),
    }
}

fn message(index: usize, value: Value) -> Result<Message, McpError> {
    let Value::Object(mut object) = value else {
        return Err(invalid(index, "a JSON-RPC message must be an object"));
    };
    if let Some(key) = object.keys().find(|k| !ENVELOPE_KEYS.contains(&k.as_str())) {
        return Err(invalid(index, format!("unexpected member {key:?}")));
    }
    if object.get("jsonrpc") != Some(&Value::from("2.0")) {
        return Err(invalid(index, "\"jsonrpc\" must be \"2.0\""));
    }
    let id = match object.remove("id") {
        None => None,
        Some(Value::Null) => return Err(invalid(index, "request id must not be null")),
        Some(Value::String(s)) => Some(RequestId::String(s)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) => Some(RequestId::Number(n)),
            None => return Err(invalid(index, "request id must be a string or an integer")),
        },
        Some(_) => return Err(invalid(index, "request id must be a string or an integer")),
    };
    let params = object.remove("params");
    match (object.remove("method"), id) {
        (Some(Value::String(method)), id) => {
            if object.contains_key("result") || object.contains_key("error") {
                return Err(invalid(
                    index,
                    "a request cannot carry \"result\" or \"error\"",
                ));
            }
            if method.is_empty() {
                return Err(invalid(index, "\"method\" must not be empty"));
            }
            let params_map = match &params {
                None => None,
                Some(Value::Object(map)) => Some(map),
                Some(_) => return Err(invalid(index, "\"params\" must be an object")),
            };
            let target = target(index, &method, params_map)?;
            let arguments = arguments(index, &method, params_map)?;
            let params_digest = Some(params_digest(params.as_ref()));
            let kind = match id {
                Some(id) => MessageKind::Request { id },
                None => MessageKind::Notification,
            };
            Ok(Message {
                kind,
                method: Some(method),
                target,
                arguments,
                params,
                params_digest,
            })
        }
        (Some(_), _) => Err(invalid(index, "\"method\" must be a string")),
        (None, Some(id)) => {
            if params.is_some() {
                return Err(invalid(index, "a response cannot carry \"params\""));
            }
            let is_error = match (object.contains_key("result"), object.get("error")) {
                (true, None) => false,
                (false, Some(Value::Object(_))) => true,
                (false, Some(_)) => return Err(invalid(index, "\"error\" must be an object")),
                _ => {
                    return Err(invalid(
                        index,
                        "a response carries exactly one of \"result\" and \"error\"",
                    ));
                }
            };
            Ok(Message {
                kind: MessageKind::Response { id, is_error },
                method: None,
                target: Target::None,
                arguments: None,
                params: None,
                params_digest: None,
            })
        }
        (None, None) => Err(invalid(
            index,
            "neither a request, a notification nor a response",
        )),
    }
}

/// Tool names per the MCP specification: 1–128 of `[A-Za-z0-9_.-]`.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn required_string<'a>(
    index: usize,
    params: Option<&'a Map<String, Value>>,
    method: &str,
    field: &str,
) -> Result<&'a str, McpError> {
    match params.and_then(|p| p.get(field)) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(invalid(
            index,
            format!("{method} needs a non-empty string params.{field}"),
        )),
    }
}

fn target(
    index: usize,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Result<Target, McpError> {
    let Some((param, kind)) = Target::addressing(method) else {
        return Ok(Target::None);
    };
    let name = required_string(index, params, method, param)?;
    if method == "tools/call" && !is_valid_tool_name(name) {
        return Err(invalid(
            index,
            "tool names are 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-'",
        ));
    }
    Ok(kind(name.to_string()))
}

fn arguments(
    index: usize,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Result<Option<Value>, McpError> {
    if !matches!(method, "tools/call" | "prompts/get") {
        return Ok(None);
    }
    match params.and_then(|p| p.get("arguments")) {
        None => Ok(None),
        Some(args @ Value::Object(_)) => Ok(Some(args.clone())),
        Some(_) => Err(invalid(index, "params.arguments must be an object")),
    }
}

fn check_batch(messages: &[Message]) -> Result<(), McpError> {
    let mut seen = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        if message.method.as_deref() == Some("initialize") {
            return Err(invalid(index, "initialize cannot be part of a batch"));
        }
        if let MessageKind::Request { id } = &message.kind {
            if seen.contains(&id) {
                return Err(invalid(index, "request id repeated within the batch"));
            }
            seen.push(id);
        }
    }
    Ok(())
}

fn check_headers(
    envelope: &Envelope,
    ctx: &RequestContext<'_>,
    version: ProtocolVersion,
) -> Result<(), McpError> {
    let first = envelope.messages.first();
    let mismatch = |what: String| Err(McpError::HeaderMismatch(what));
    if version.mirrors_headers() {
        if envelope.batch {
            return Err(McpError::BatchNotAllowed(version));
        }
        if ctx.method_header.is_none() && first.is_some_and(|m| m.method.is_some()) {
            return mismatch(format!(
                "protocol version {version} requires the Mcp-Method header"
            ));
        }
        if ctx.name_header.is_none() && first.is_some_and(|m| m.target != Target::None) {
            return mismatch(format!(
                "protocol version {version} requires the Mcp-Name header"
            ));
        }
    }
    // Headers that disagree with the body are refused in every era: a component
    // routing on headers must never see a different call than the one judged.
    if let Some(header) = ctx.method_header
        && (envelope.batch || first.and_then(|m| m.method.as_deref()) != Some(header))
    {
        return mismatch(format!(
            "Mcp-Method header {header:?} does not match the body"
        ));
    }
    if let Some(header) = ctx.name_header
        && (envelope.batch || first.and_then(|m| m.target.name()) != Some(header))
    {
        return mismatch(format!(
            "Mcp-Name header {header:?} does not match the body"
        ));
    }
    Ok(())
}

/// The protocol version a client asks for in `initialize`, if the body is one.
pub fn requested_version(envelope: &Envelope) -> Option<&str> {
    let message = envelope.messages.first()?;
    if envelope.batch || message.method.as_deref() != Some("initialize") {
        return None;
    }
    message.params.as_ref()?.get("protocolVersion")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(version: ProtocolVersion) -> RequestContext<'static> {
        RequestContext {
            protocol_version: Some(version),
            ..Default::default()
        }
    }

    fn one(body: &str, version: ProtocolVersion) -> Message {
        let envelope = classify(body.as_bytes(), &ctx(version)).unwrap();
        assert!(!envelope.batch);
        envelope.messages.into_iter().next().unwrap()
    }

    fn refused(body: &str, version: ProtocolVersion) -> McpError {
        classify(body.as_bytes(), &ctx(version)).unwrap_err()
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"deploy_model","arguments":{"environment":"prod"},"_meta":{"progressToken":"p1"}}}"#;

    #[test]
    fn classifies_a_tool_call() {
        let m = one(CALL, ProtocolVersion::V2025_06_18);
        assert_eq!(
            m.kind,
            MessageKind::Request {
                id: RequestId::Number(7)
            }
        );
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.target, Target::Tool("deploy_model".into()));
        assert_eq!(m.arguments, Some(json!({"environment": "prod"})));
        assert_eq!(
            m.params_digest,
            Some(params_digest(Some(
                &json!({"name":"deploy_model","arguments":{"environment":"prod"}})
            )))
        );
    }

    #[test]
    fn classifies_every_kind_and_target() {
        let v = ProtocolVersion::V2025_11_25;
        let n = one(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            v,
        );
        assert_eq!(n.kind, MessageKind::Notification);
        let r = one(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#, v);
        assert_eq!(
            r.kind,
            MessageKind::Response {
                id: RequestId::String("a".into()),
                is_error: false
            }
        );
        let e = one(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#,
            v,
        );
        assert_eq!(
            e.kind,
            MessageKind::Response {
                id: RequestId::Number(1),
                is_error: true
            }
        );
        let res = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/x"}}"#,
            v,
        );
        assert_eq!(res.target, Target::Resource("file:///etc/x".into()));
        assert_eq!(res.arguments, None);
        let p = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"a":"b"}}}"#,
            v,
        );
        assert_eq!(p.target, Target::Prompt("p".into()));
        assert_eq!(p.arguments, Some(json!({"a":"b"})));
        let list = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, v);
        assert_eq!(list.target, Target::None);
    }

    #[test]
    fn escapes_in_method_names_decode_before_judging() {
        let m = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"read_secret"}}"#,
            ProtocolVersion::V2025_06_18,
        );
        assert_eq!(m.target, Target::Tool("read_secret".into()));
        // Another case is another method, never a tool call the policy would miss.
        let m = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"x"}}"#,
            ProtocolVersion::V2025_06_18,
        );
        assert_eq!(m.target, Target::None);
        assert_eq!(m.method.as_deref(), Some("Tools/Call"));
    }

    #[test]
    fn refuses_ambiguous_or_malformed_messages() {
        let v = ProtocolVersion::V2025_06_18;
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":3}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","id":1,"params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","id":1,"params":{"name":"bad name"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","id":1,"params":{"name":"x","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","method":"resources/read","id":1,"params":{"uri":7}}"#,
            r#""just a string""#,
            r#"{"jsonrpc":"2.0"}"#,
        ] {
            assert!(classify(bad.as_bytes(), &ctx(v)).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn batches_only_where_the_version_allows() {
        let batch = format!(r#"[{{"jsonrpc":"2.0","id":1,"method":"tools/list"}},{CALL}]"#);
        let envelope = classify(batch.as_bytes(), &ctx(ProtocolVersion::V2025_03_26)).unwrap();
        assert!(envelope.batch);
        assert_eq!(envelope.messages.len(), 2);
        assert_eq!(
            envelope.messages[1].target,
            Target::Tool("deploy_model".into())
        );
        // Without the header a Streamable HTTP request speaks 2025-03-26.
        assert!(classify(batch.as_bytes(), &RequestContext::default()).is_ok());
        for v in [
            ProtocolVersion::V2024_11_05,
            ProtocolVersion::V2025_06_18,
            ProtocolVersion::V2025_11_25,
            ProtocolVersion::V2026_07_28,
        ] {
            assert_eq!(refused(&batch, v), McpError::BatchNotAllowed(v));
        }
        assert_eq!(
            refused("[]", ProtocolVersion::V2025_03_26),
            McpError::EmptyBatch
        );
        let repeated = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"ping"}]"#;
        assert!(matches!(
            refused(repeated, ProtocolVersion::V2025_03_26),
            McpError::Invalid { index: 1, .. }
        ));
        let init = r#"[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}]"#;
        assert!(
            refused(init, ProtocolVersion::V2025_03_26)
                .to_string()
                .contains("initialize")
        );
        // One malformed message refuses the whole batch.
        let hidden = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","name":"b"}}]"#;
        assert!(classify(hidden.as_bytes(), &ctx(ProtocolVersion::V2025_03_26)).is_err());
    }

    #[test]
    fn mirrored_headers_must_agree_with_the_body() {
        let v = ProtocolVersion::V2026_07_28;
        let with = |method: Option<&'static str>, name: Option<&'static str>| RequestContext {
            protocol_version: Some(v),
            method_header: method,
            name_header: name,
            limits: None,
        };
        assert!(
            classify(
                CALL.as_bytes(),
                &with(Some("tools/call"), Some("deploy_model"))
            )
            .is_ok()
        );
        for (method, name) in [
            (None, Some("deploy_model")),
            (Some("tools/call"), None),
            (Some("tools/list"), Some("deploy_model")),
            (Some("tools/call"), Some("get_status")),
            (Some("TOOLS/CALL"), Some("deploy_model")),
        ] {
            let err = classify(CALL.as_bytes(), &with(method, name)).unwrap_err();
            assert_eq!(err.code(), HEADER_MISMATCH, "{method:?} {name:?}");
        }
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert!(classify(list.as_bytes(), &with(Some("tools/list"), None)).is_ok());
        // Earlier eras need no headers, but a header that is sent must agree too.
        let old = RequestContext {
            protocol_version: Some(ProtocolVersion::V2025_06_18),
            name_header: Some("get_status"),
            ..Default::default()
        };
        assert_eq!(
            classify(CALL.as_bytes(), &old).unwrap_err().code(),
            HEADER_MISMATCH
        );
    }

    #[test]
    fn error_codes_follow_json_rpc() {
        assert_eq!(
            refused("{", ProtocolVersion::V2025_06_18).code(),
            PARSE_ERROR
        );
        assert_eq!(
            refused(r#"{"a":1,"a":1}"#, ProtocolVersion::V2025_06_18).code(),
            PARSE_ERROR
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0"}"#, ProtocolVersion::V2025_06_18).code(),
            INVALID_REQUEST
        );
    }

    #[test]
    fn versions_parse_and_initialize_names_one() {
        for v in ProtocolVersion::ALL {
            assert_eq!(v.as_str().parse::<ProtocolVersion>().unwrap(), v);
        }
        assert!("2099-01-01".parse::<ProtocolVersion>().is_err());
        let init = classify(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
            &RequestContext::default(),
        )
        .unwrap();
        assert_eq!(requested_version(&init), Some("2025-06-18"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_body(body in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            for v in ProtocolVersion::ALL {
                let _ = classify(&body, &ctx(v));
            }
        }

        #[test]
        fn tool_calls_round_trip(name in "[A-Za-z0-9_.-]{1,128}", id in -crate::json::MAX_SAFE_INTEGER..=crate::json::MAX_SAFE_INTEGER, args in crate::json::tests::arbitrary_json()) {
            use proptest::prelude::*;
            let args = match args { Value::Object(m) => Value::Object(m), other => json!({"v": other}) };
            let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}});
            let m = one(&body.to_string(), ProtocolVersion::V2025_06_18);
            prop_assert_eq!(m.target, Target::Tool(name));
            prop_assert_eq!(m.arguments, Some(args));
            prop_assert_eq!(m.kind, MessageKind::Request { id: RequestId::Number(id) });
        }
    }
}
