//! What a request may be before its body is read: path, method, headers.

use super::config::FilterConfig;
use super::reply::Reply;

/// What a request addresses, after normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The Streamable HTTP endpoint.
    Mcp,
    /// The legacy SSE stream (GET).
    LegacyStream,
    /// The legacy message endpoint (POST).
    LegacyMessages,
    /// RFC 9728 protected-resource metadata, answered by the gateway itself.
    ResourceMetadata,
}

/// A request the gateway will look at further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    /// The path to forward: the configured path plus the original query.
    pub forward_path: String,
    pub query: Option<String>,
}

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Decodes percent escapes, collapses repeated slashes and drops a trailing
/// slash. Escapes that would change the path's structure (`%2F`, `%5C`, `%00`)
/// and dot segments are refused: two components must never disagree on
/// which path a request names.
pub fn normalize_path(path: &str) -> Result<String, &'static str> {
    // What clients send: already normal, nothing to decode or rebuild.
    let normal_segment = |s: &str| !s.is_empty() && s != "." && s != "..";
    if let Some(rest) = path.strip_prefix('/')
        && !path.bytes().any(|b| matches!(b, b'%' | b'\\' | 0))
        && rest.split('/').all(normal_segment)
    {
        return Ok(path.to_string());
    }
    decode_and_rebuild(path)
}

fn decode_and_rebuild(path: &str) -> Result<String, &'static str> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("malformed percent escape in path")?;
            if matches!(hex, b'/' | b'\\' | 0) {
                return Err("encoded '/', '\\' or NUL in path");
            }
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).map_err(|_| "path is not UTF-8")?;
    if !text.starts_with('/') || text.contains('\\') {
        return Err("path must be absolute and use '/'");
    }
    let segments: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err("dot segments in path");
    }
    Ok(format!("/{}", segments.join("/")))
}

fn query_names_a_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        pair.split('=')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case("access_token"))
    })
}

/// Routes `method` + `path` (`:path`, with query), or refuses it.
pub fn route(config: &FilterConfig, method: &str, path: &str) -> Result<Routed, Reply> {
    let (raw_path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (path, None),
    };
    if query.as_deref().is_some_and(query_names_a_token) {
        return Err(Reply::http_error(
            400,
            "invalid_request",
            "access tokens are accepted only in the Authorization header, never in the URL",
        ));
    }
    let normalized =
        normalize_path(raw_path).map_err(|why| Reply::http_error(400, "invalid_path", why))?;
    let same = |configured: &str| {
        configured == normalized || normalize_path(configured).is_ok_and(|c| c == normalized)
    };
    let (route, configured, methods): (Route, &str, &[&str]) = if same(&config.mcp_path) {
        (Route::Mcp, &config.mcp_path, &["POST", "GET", "DELETE"])
    } else if normalized == METADATA_PATH
        || normalized == format!("{METADATA_PATH}{}", config.mcp_path)
    {
        (Route::ResourceMetadata, METADATA_PATH, &["GET"])
    } else if let Some(legacy) = config.legacy_sse.as_ref().filter(|l| same(&l.stream)) {
        (Route::LegacyStream, &legacy.stream, &["GET"])
    } else if let Some(legacy) = config.legacy_sse.as_ref().filter(|l| same(&l.messages)) {
        (Route::LegacyMessages, &legacy.messages, &["POST"])
    } else {
        return Err(Reply::http_error(
            404,
            "not_found",
            "this gateway serves only its MCP endpoint",
        ));
    };
    if !methods.contains(&method) {
        return Err(Reply::http_error(
            405,
            "method_not_allowed",
            &format!(
                "{method} is not allowed here; allowed: {}",
                methods.join(", ")
            ),
        )
        .with_header("allow", methods.join(", ")));
    }
    let forward_path = match &query {
        Some(q) => format!("{configured}?{q}"),
        None => configured.to_string(),
    };
    Ok(Routed {
        route,
        forward_path,
        query,
    })
}

/// The bearer token of a request: exactly one `Authorization: Bearer <token>`.
/// `Ok(None)` when the request carries no credentials at all.
pub fn bearer_token<'h>(authorization: &[&'h str]) -> Result<Option<&'h str>, &'static str> {
    match authorization {
        [] => Ok(None),
        [value] => {
            let (scheme, token) = value
                .split_once(' ')
                .ok_or("Authorization header is not 'Bearer <token>'")?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err("only Bearer tokens are accepted");
            }
            let token = token.trim();
            if token.is_empty() || token.contains(' ') {
                return Err("Authorization header is not 'Bearer <token>'");
            }
            Ok(Some(token))
        }
        _ => Err("more than one Authorization header"),
    }
}

/// Request headers the gateway owns: clients may not send them.
pub fn is_gateway_header(name: &str) -> bool {
    name.len() >= 10 && name[..10].eq_ignore_ascii_case("x-airlock-")
}

/// A POST body must be declared JSON in UTF-8, once: `application/json`,
/// with at most a `charset=utf-8` parameter. A server that read the body as
/// another type or encoding would not see the message the gateway judged.
pub fn json_content_type(values: &[&str]) -> Result<(), Reply> {
    let refuse = |why: String| Err(Reply::http_error(415, "unsupported_media_type", &why));
    let value = match values {
        [value] => *value,
        [] => {
            return refuse("a POST body must be declared as Content-Type: application/json".into());
        }
        _ => return refuse("Content-Type is given more than once".into()),
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return refuse(format!(
            "Content-Type {value:?} is not application/json; the gateway judges JSON-RPC only"
        ));
    }
    for parameter in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let (name, given) = parameter.split_once('=').unwrap_or((parameter, ""));
        let utf8 = given.trim().trim_matches('"').eq_ignore_ascii_case("utf-8");
        if !(name.trim().eq_ignore_ascii_case("charset") && utf8) {
            return refuse(format!(
                "Content-Type {value:?}: a JSON body is read as UTF-8, with no other parameter"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FilterConfig {
        crate::gateway::config::test_config(
            serde_json::json!({"legacySse": {"stream": "/sse", "messages": "/messages/"}}),
        )
    }

    proptest::proptest! {
        #[test]
        fn the_shortcut_agrees_with_decoding(path in "[/.a%2F5c\\\\]{0,12}") {
            proptest::prop_assert_eq!(normalize_path(&path), decode_and_rebuild(&path));
        }
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_path("/mcp").unwrap(), "/mcp");
        assert_eq!(normalize_path("//mcp/").unwrap(), "/mcp");
        assert_eq!(normalize_path("/%6Dcp").unwrap(), "/mcp");
        assert!(normalize_path("/a%2Fmcp").is_err());
        assert!(normalize_path("/a%5cmcp").is_err());
        assert!(normalize_path("/x/../mcp").is_err());
        assert!(normalize_path("/mcp%").is_err());
        assert!(normalize_path("mcp").is_err());
    }

    #[test]
    fn routes_only_configured_paths_and_methods() {
        let c = config();
        assert_eq!(route(&c, "POST", "/mcp").unwrap().route, Route::Mcp);
        assert_eq!(route(&c, "POST", "//mcp/").unwrap().forward_path, "/mcp");
        assert_eq!(route(&c, "GET", "/mcp").unwrap().route, Route::Mcp);
        assert_eq!(route(&c, "POST", "/MCP").unwrap_err().status, 404);
        assert_eq!(route(&c, "PUT", "/mcp").unwrap_err().status, 405);
        assert_eq!(route(&c, "POST", "/admin").unwrap_err().status, 404);
        assert_eq!(route(&c, "POST", "/mcp%2F").unwrap_err().status, 400);
        assert_eq!(
            route(&c, "GET", "/.well-known/oauth-protected-resource/mcp")
                .unwrap()
                .route,
            Route::ResourceMetadata
        );
        let legacy = route(&c, "POST", "/messages?session_id=abc").unwrap();
        assert_eq!(legacy.route, Route::LegacyMessages);
        assert_eq!(legacy.forward_path, "/messages/?session_id=abc");
        assert_eq!(route(&c, "POST", "/sse").unwrap_err().status, 405);
        let refused = route(&c, "POST", "/mcp?access_token=abc").unwrap_err();
        assert_eq!(refused.status, 400);
    }

    #[test]
    fn reads_exactly_one_bearer_token() {
        assert_eq!(bearer_token(&[]), Ok(None));
        assert_eq!(bearer_token(&["Bearer abc"]), Ok(Some("abc")));
        assert_eq!(bearer_token(&["bearer abc"]), Ok(Some("abc")));
        assert!(bearer_token(&["Basic abc"]).is_err());
        assert!(bearer_token(&["Bearer"]).is_err());
        assert!(bearer_token(&["Bearer a b"]).is_err());
        assert!(bearer_token(&["Bearer a", "Bearer b"]).is_err());
    }

    #[test]
    fn a_body_is_json_in_utf8_declared_once() {
        for fine in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json;",
        ] {
            assert_eq!(json_content_type(&[fine]), Ok(()), "{fine}");
        }
        for refused in [
            &[][..],
            &["text/plain"],
            &["application/json; charset=utf-16"],
            &["application/json; charset=latin1"],
            &["application/json; boundary=x"],
            &["application/jsonx"],
            &["application/json", "application/json"],
            &[""],
        ] {
            let reply = json_content_type(refused).unwrap_err();
            assert_eq!(reply.status, 415, "{refused:?}");
        }
    }

    #[test]
    fn gateway_headers() {
        assert!(is_gateway_header("x-airlock-oid"));
        assert!(is_gateway_header("X-Airlock-Decision"));
        assert!(!is_gateway_header("x-airlocks"));
        assert!(!is_gateway_header("authorization"));
    }
}
