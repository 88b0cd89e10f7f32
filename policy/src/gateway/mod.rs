//! The gateway's decisions, free of any host: what the proxy-wasm filter does
//! with a request, as plain functions the filter glue only translates.
//!
//! Flow for one request: [`request::route`] (path, method) → bearer token →
//! [`auth::authenticate`] → body → [`crate::mcp::classify`] →
//! [`revocation::revoked`] → [`judge::judge`] → forward with [`identity_headers`], refuse with a
//! [`reply::Reply`], or hold for approval.

pub mod auth;
pub mod capture;
pub mod config;
pub mod hold;
pub mod hold_slots;
pub mod judge;
pub mod key_refetch;
pub mod record;
pub mod reply;
pub mod request;
pub mod revocation;
pub mod session;
pub mod sse;
pub mod tools_list;

use crate::entra::Principal;
use crate::model::Action;
use reply::Reply;
use serde_json::json;

/// Request headers naming the MCP protocol revision and mirrored fields.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";
/// The header carrying a gateway's credential to the approval service.
pub const GATEWAY_CREDENTIAL_HEADER: &str = "x-airlock-gateway-credential";
/// The header naming one release of a held call to the approval service,
/// so that a release asked again after a lost answer is recognised.
pub const RELEASE_KEY_HEADER: &str = "x-airlock-release-key";
/// Response header carrying what dry-run policies would have done.
pub const DRY_RUN_HEADER: &str = "x-airlock-dry-run";

/// Makes a value safe for an HTTP header: printable ASCII stays, everything
/// else (control characters, non-ASCII, `%`) is percent-encoded.
pub fn header_safe(value: &str) -> String {
    let safe = |byte: u8| (0x20..0x7f).contains(&byte) && byte != b'%';
    if value.bytes().all(safe) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if safe(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The verified identity, for the MCP server: it can log or use it without
/// parsing tokens. Clients' own `x-airlock-*` headers are removed first.
pub fn identity_headers(
    principal: &Principal,
    action: Action,
    approval: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("x-airlock-tid", header_safe(&principal.tenant_id)),
        ("x-airlock-oid", header_safe(&principal.object_id)),
        ("x-airlock-name", header_safe(&principal.display_name)),
        ("x-airlock-groups", header_safe(&principal.groups.join(","))),
        ("x-airlock-decision", action.to_string()),
    ];
    if let Some(id) = approval {
        headers.push(("x-airlock-approval", header_safe(id)));
    }
    headers
}

/// RFC 9728 protected-resource metadata for this gateway.
pub fn resource_metadata(config: &config::FilterConfig, authority: &str) -> Reply {
    let mut metadata = json!({
        "resource": config.resource_url(authority),
        "authorization_servers": config.advertised_authorization_servers(),
        "bearer_methods_supported": ["header"],
    });
    if !config.required_scopes.is_empty() {
        metadata["scopes_supported"] = json!(config.required_scopes);
    }
    Reply::json(200, &metadata)
}

/// Where clients find the metadata, for `WWW-Authenticate`.
pub fn resource_metadata_url(config: &config::FilterConfig, authority: &str) -> String {
    let resource = config.resource_url(authority);
    let origin_end = resource
        .find("://")
        .and_then(|scheme| resource[scheme + 3..].find('/').map(|p| p + scheme + 3))
        .unwrap_or(resource.len());
    format!(
        "{}/.well-known/oauth-protected-resource{}",
        &resource[..origin_end],
        &resource[origin_end..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public_url: Option<&str>) -> config::FilterConfig {
        let mut extra = json!({"requiredScopes": ["mcp.call"]});
        if let Some(url) = public_url {
            extra["publicUrl"] = json!(url);
        }
        config::test_config(extra)
    }

    #[test]
    fn metadata_names_the_resource_and_its_issuers() {
        let c = config(None);
        let reply = resource_metadata(&c, "gw:8080");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["resource"], "http://gw:8080/mcp");
        assert_eq!(
            body["authorization_servers"],
            json!(["https://login.microsoftonline.com/t1/v2.0"])
        );
        assert_eq!(body["scopes_supported"], json!(["mcp.call"]));
        assert_eq!(
            resource_metadata_url(&c, "gw:8080"),
            "http://gw:8080/.well-known/oauth-protected-resource/mcp"
        );
        let public = config(Some("https://mcp.example.com/ml/mcp"));
        assert_eq!(
            resource_metadata_url(&public, "ignored"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/ml/mcp"
        );
    }

    #[test]
    fn header_values_cannot_inject() {
        assert_eq!(header_safe("Ada Lovelace"), "Ada Lovelace");
        assert_eq!(
            header_safe("a\r\nx-airlock-oid: evil"),
            "a%0D%0Ax-airlock-oid: evil"
        );
        assert_eq!(header_safe("Zoë"), "Zo%C3%AB");
        assert_eq!(header_safe("100%"), "100%25");
    }
}
