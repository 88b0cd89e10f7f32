//! The whole judgement of one request, as the filter makes it: headers and
//! body bytes → route, protocol version, classification, policy decision,
//! refusal reply and audit events. Never a panic, whatever the bytes; and a
//! request is forwarded only with one meaning (its audit events serialize).
//!
//! Input: `name: value` header lines (`:method`, `:path`,
//! `mcp-protocol-version`, `mcp-method`, `mcp-name`), a blank line, the body.
#![no_main]

use airlock_policy::entra::{Principal, TokenVersion};
use airlock_policy::gateway::config::{FilterConfig, NamedPolicy, compile_all};
use airlock_policy::gateway::identity_headers;
use airlock_policy::gateway::judge::{Answering, Outcome, judge};
use airlock_policy::gateway::record::{Seen, judged_events};
use airlock_policy::gateway::request::{Route, route};
use airlock_policy::gateway::tools_list::best_case;
use airlock_policy::json::Limits;
use airlock_policy::mcp::{ProtocolVersion, RequestContext, classify};
use airlock_policy::model::{ApprovalPolicySpec, CompiledPolicy};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// The demo's policy: allow, deny and hold rules, argument matchers, globs.
const POLICY: &str = include_str!("../../../examples/policy.yaml");

struct Gateway {
    config: FilterConfig,
    policies: Vec<CompiledPolicy>,
    callers: Vec<Principal>,
}

static GATEWAY: LazyLock<Gateway> = LazyLock::new(|| {
    let document: serde_yaml::Value = serde_yaml::from_str(POLICY).expect("the example parses");
    let spec: ApprovalPolicySpec =
        serde_yaml::from_value(document["spec"].clone()).expect("the example is a policy");
    let policy = NamedPolicy::checked("demo/model-ops".into(), spec).expect("the example is valid");
    let config = FilterConfig::from_json(
        br#"{"server": "demo/models",
             "auth": {"tenants": ["t1"], "audiences": ["a"]},
             "jwks": [{"tenant": "t1", "cluster": "c", "path": "/k", "authority": "h"}],
             "approvals": {"cluster": "approvals", "authority": "approvals"},
             "legacySse": {"stream": "/sse", "messages": "/messages/"},
             "maxBodyBytes": 65536}"#,
    )
    .expect("the configuration is valid");
    let caller = |oid: &str, groups: &[&str]| Principal {
        tenant_id: "t1".into(),
        object_id: oid.into(),
        display_name: format!("{oid}@contoso.com"),
        app_id: "app".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        roles: Vec::new(),
        scopes: Vec::new(),
        app_only: false,
        version: TokenVersion::V2,
        expires_at: u64::MAX,
    };
    Gateway {
        config,
        policies: compile_all(&[policy]).expect("the example compiles"),
        callers: vec![caller("ada", &["engineers"]), caller("lea", &["leads"]), caller("eve", &[])],
    }
});

fuzz_target!(|input: &[u8]| {
    let gateway = &*GATEWAY;
    let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
        Some(end) => (&input[..end], &input[end + 2..]),
        None => (input, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let headers: Vec<(String, &str)> = head
        .lines()
        .filter_map(|line| {
            // A pseudo-header's name starts with ':'.
            let skip = usize::from(line.starts_with(':'));
            let colon = skip + line.get(skip..)?.find(':')?;
            Some((line[..colon].to_ascii_lowercase(), line[colon + 1..].trim()))
        })
        .collect();
    let header = |name: &str| {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_string())
    };
    let method = header(":method").unwrap_or_else(|| "POST".into());
    let path = header(":path").unwrap_or_else(|| "/mcp".into());
    let Ok(routed) = route(&gateway.config, &method, &path) else {
        return;
    };
    let protocol_version = match routed.route {
        Route::LegacyMessages => Some(ProtocolVersion::V2024_11_05),
        _ => match header("mcp-protocol-version").map(|v| v.parse::<ProtocolVersion>()) {
            Some(Err(_)) => return,
            Some(Ok(version)) => Some(version),
            None => None,
        },
    };
    let method_header = header("mcp-method");
    let name_header = header("mcp-name");
    let context = RequestContext {
        protocol_version,
        method_header: method_header.as_deref(),
        name_header: name_header.as_deref(),
        limits: Some(Limits {
            max_bytes: gateway.config.max_body_bytes,
            ..Limits::default()
        }),
    };
    let Ok(envelope) = classify(body, &context) else {
        return;
    };
    let answering = match routed.route {
        Route::LegacyMessages => Answering::HttpOnly,
        _ => Answering::JsonRpc,
    };
    for principal in &gateway.callers {
        let judged = judge(&envelope, &gateway.policies, principal, answering);
        let seen = Seen {
            time: "2026-12-07T00:00:00Z".into(),
            server: &gateway.config.server,
            principal: Some(principal),
            session: None,
            protocol_version: protocol_version.map(|v| v.as_str()),
        };
        for event in judged_events(&seen, &envelope, &judged, &gateway.policies).events {
            event.to_line().expect("an audit event serializes");
        }
        let _ = identity_headers(principal, judged.action, None);
        if let Outcome::Hold { index } = judged.outcome {
            assert!(index < envelope.messages.len() && !envelope.batch, "one call held, alone");
        }
        for message in &envelope.messages {
            if let Some(name) = message.params.as_ref().and_then(|p| p.get("name")).and_then(|n| n.as_str()) {
                let _ = best_case(&gateway.policies, principal, name);
            }
        }
    }
});
