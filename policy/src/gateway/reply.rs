//! Answers the gateway gives itself, without reaching the MCP server.
//!
//! Refusals are shaped for the reader: a `tools/call` refusal is a
//! `CallToolResult` with `isError: true` (what a model reads) plus
//! machine-readable `_meta`; other JSON-RPC requests get an error with one of
//! the codes below (outside −32768…−32000, which JSON-RPC and MCP reserve);
//! token failures are 401/403 with `WWW-Authenticate` as RFC 6750 and RFC 9728
//! describe.

use crate::mcp::RequestId;
use serde_json::{Value, json};

/// JSON-RPC error codes of Airlock's refusals.
pub mod codes {
    /// Policy denies the call.
    pub const DENIED: i64 = -31001;
    /// The call needs approval and none has been given yet.
    pub const APPROVAL_PENDING: i64 = -31002;
    /// An approver denied the call, or the request expired.
    pub const APPROVAL_REFUSED: i64 = -31003;
    /// The approval service could not be reached; the gateway fails closed.
    pub const APPROVAL_UNAVAILABLE: i64 = -31004;
    /// The session belongs to another principal.
    pub const SESSION_MISMATCH: i64 = -31005;
    /// No policy is loaded yet; the gateway refuses everything until one is.
    pub const NOT_READY: i64 = -31006;
    /// The call needs approval, and the gateway already holds as many calls
    /// (the caller's, or all) as it may.
    pub const HOLDS_FULL: i64 = -31007;
}

/// Keys of the `_meta` object on refusals.
pub const META_DECISION: &str = "dev.airlock/decision";
pub const META_RULE: &str = "dev.airlock/rule";
pub const META_APPROVAL: &str = "dev.airlock/approval";
pub const META_CODE: &str = "dev.airlock/code";

/// An HTTP response produced by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: body.to_string().into_bytes(),
        }
    }

    /// A plain HTTP refusal with a JSON `{"error": ..., "message": ...}` body.
    pub fn http_error(status: u16, error: &str, message: &str) -> Reply {
        Reply::json(status, &json!({"error": error, "message": message}))
    }

    pub fn with_header(mut self, name: &str, value: String) -> Reply {
        self.headers.push((name.to_string(), value));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// RFC 6750 quoting: the description may not contain `"` or `\`.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect()
}

/// 401: the token is missing or not acceptable, and why.
pub fn unauthorized(reason: &str, resource_metadata: &str) -> Reply {
    Reply::http_error(401, "invalid_token", reason).with_header(
        "www-authenticate",
        format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{}\"",
            quoted(reason),
            resource_metadata
        ),
    )
}

/// 401 without an error code: no credentials were presented at all (RFC 6750 §3.1).
pub fn credentials_required(resource_metadata: &str) -> Reply {
    Reply::http_error(401, "unauthorized", "a bearer token is required").with_header(
        "www-authenticate",
        format!("Bearer resource_metadata=\"{resource_metadata}\""),
    )
}

/// 403: a valid token without the required scope or app role.
pub fn insufficient_scope(reason: &str, scopes: &[String], resource_metadata: &str) -> Reply {
    let scope = if scopes.is_empty() {
        String::new()
    } else {
        format!(", scope=\"{}\"", quoted(&scopes.join(" ")))
    };
    Reply::http_error(403, "insufficient_scope", reason).with_header(
        "www-authenticate",
        format!(
            "Bearer error=\"insufficient_scope\", error_description=\"{}\"{scope}, resource_metadata=\"{}\"",
            quoted(reason),
            resource_metadata
        ),
    )
}

/// A JSON-RPC error object.
pub fn error_object(code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    error
}

/// A JSON-RPC error response (`id` null when the request's id is unknown).
pub fn error_response(id: Option<&RequestId>, error: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.map(RequestId::to_json).unwrap_or(Value::Null),
        "error": error,
    })
}

/// Why a call was refused, for people and for programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: i64,
    /// A sentence a model or a person can act on.
    pub reason: String,
    /// `Deny`, `RequireApproval`, …
    pub decision: String,
    /// `policy/rule` that decided, if any.
    pub rule: Option<String>,
    /// The ApprovalRequest involved, if any.
    pub approval: Option<String>,
}

impl Refusal {
    fn meta(&self) -> Value {
        let mut meta = json!({META_DECISION: self.decision, META_CODE: self.code});
        if let Some(rule) = &self.rule {
            meta[META_RULE] = json!(rule);
        }
        if let Some(approval) = &self.approval {
            meta[META_APPROVAL] = json!(approval);
        }
        meta
    }

    /// The refusal as the result of a `tools/call`: `isError: true`, text a model reads.
    pub fn tool_result(&self, id: &RequestId) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": id.to_json(),
            "result": {
                "content": [{"type": "text", "text": self.reason}],
                "isError": true,
                "_meta": self.meta(),
            },
        })
    }

    /// The refusal as a JSON-RPC error, for other methods.
    pub fn error(&self, id: Option<&RequestId>) -> Value {
        error_response(id, error_object(self.code, &self.reason, Some(self.meta())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_stay_outside_the_reserved_range() {
        for code in [
            codes::DENIED,
            codes::APPROVAL_PENDING,
            codes::APPROVAL_REFUSED,
            codes::APPROVAL_UNAVAILABLE,
            codes::SESSION_MISMATCH,
            codes::NOT_READY,
        ] {
            assert!(!(-32768..=-32000).contains(&code), "{code}");
        }
    }

    #[test]
    fn token_refusals_follow_rfc_6750() {
        let reply = unauthorized(
            "token \"expired\"",
            "http://gw/.well-known/oauth-protected-resource",
        );
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header("WWW-Authenticate"),
            Some(
                "Bearer error=\"invalid_token\", error_description=\"token 'expired'\", resource_metadata=\"http://gw/.well-known/oauth-protected-resource\""
            )
        );
        let reply = insufficient_scope("needs mcp.call", &["mcp.call".into()], "m");
        assert_eq!(reply.status, 403);
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("scope=\"mcp.call\"")
        );
    }

    #[test]
    fn tool_refusals_are_call_tool_results() {
        let refusal = Refusal {
            code: codes::DENIED,
            reason: "Airlock policy denies read_secret".into(),
            decision: "Deny".into(),
            rule: Some("ml/ops/no-secrets".into()),
            approval: None,
        };
        let result = refusal.tool_result(&RequestId::Number(3));
        assert_eq!(result["id"], 3);
        assert_eq!(result["result"]["isError"], true);
        assert_eq!(
            result["result"]["content"][0]["text"],
            "Airlock policy denies read_secret"
        );
        assert_eq!(result["result"]["_meta"][META_RULE], "ml/ops/no-secrets");
        let error = refusal.error(Some(&RequestId::String("a".into())));
        assert_eq!(error["error"]["code"], codes::DENIED);
        assert_eq!(error["id"], "a");
    }
}
