//! The MCP server behind every benchmarked path: a minimal Streamable HTTP
//! server (JSON responses, and an SSE stream for `echo`; each `initialize`
//! answered with a new session id, which it then ignores) on hyper, on its own thread and
//! single-threaded runtime, so the figures measure the proxy and not the
//! server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Upstream {
    pub port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> anyhow::Result<Upstream> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, mut stop) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                                TokioIo::new(stream),
                                hyper::service::service_fn(answer),
                            ));
                        }
                        _ = &mut stop => break,
                    }
                }
            });
        });
        Ok(Upstream {
            port,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    // `echo` answers as a stream: a progress notification, then the result.
    let message = serde_json::from_slice::<Value>(&body);
    let session = match &message {
        Ok(message) if message["method"] == "initialize" => Some(new_session_id()),
        _ => None,
    };
    let (status, reply, streamed) = match message {
        Ok(message) => match message.get("id") {
            Some(id) => (
                StatusCode::OK,
                Some(result(id, &message)),
                message["params"]["name"] == "echo",
            ),
            None => (StatusCode::ACCEPTED, None, false),
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Some(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": e.to_string()}}),
            ),
            false,
        ),
    };
    let (content_type, text) = match (&reply, streamed) {
        (Some(reply), true) => (
            "text/event-stream",
            format!(
                "event: message\ndata: {}\n\nevent: message\ndata: {reply}\n\n",
                json!({"jsonrpc": "2.0", "method": "notifications/message",
                       "params": {"level": "info", "data": "echoing"}})
            ),
        ),
        (Some(reply), false) => ("application/json", reply.to_string()),
        (None, _) => ("application/json", String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Some(session) = session.and_then(|id| hyper::header::HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("mcp-session-id", session);
    }
    Ok(response)
}

fn new_session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("bench-session-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn result(id: &Value, message: &Value) -> Value {
    let result = match message["method"].as_str() {
        Some("initialize") => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "airlock-bench-upstream", "version": "1"},
        }),
        Some("tools/list") => json!({"tools": [
            {"name": "get_status", "inputSchema": {"type": "object"}},
            {"name": "echo", "inputSchema": {"type": "object"}},
            {"name": "deploy_model", "inputSchema": {"type": "object"}},
            {"name": "read_secret", "inputSchema": {"type": "object"}},
        ]}),
        Some("tools/call") => {
            json!({"content": [{"type": "text", "text": "ok"}], "isError": false})
        }
        Some("ping") => json!({}),
        _ => {
            return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}});
        }
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}
