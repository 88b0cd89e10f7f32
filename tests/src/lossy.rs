//! A proxy in front of the approval service that loses answers: it passes
//! every request on, and for those its rule picks it never answers — what a
//! gateway sees when the replica that served a request vanishes before
//! answering it: nothing, until its own timeout.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

type Rule = dyn Fn(&Method, &str) -> bool + Send + Sync;

struct Shared {
    target: AtomicU16,
    lose: Box<Rule>,
    lost: Mutex<Vec<String>>,
    http: reqwest::Client,
}

pub struct LossyProxy {
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    /// Listens on 127.0.0.1; loses the answer to each request `lose` picks
    /// (by method and path). It forwards nowhere until [`forward_to`](Self::forward_to).
    pub async fn start(
        lose: impl Fn(&Method, &str) -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<LossyProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target: AtomicU16::new(0),
            lose: Box::new(lose),
            lost: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LossyProxy { port, shared, task })
    }

    /// Sends what arrives to the service on 127.0.0.1:`port`.
    pub fn forward_to(&self, port: u16) {
        self.shared.target.store(port, Ordering::SeqCst);
    }

    /// `METHOD path` of each request whose answer was lost, in order.
    pub fn lost(&self) -> Vec<String> {
        self.shared
            .lost
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let failed = |why: String| {
        Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(why))
            .unwrap_or_default()
    };
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return failed("unreadable request body".into());
    };
    let port = shared.target.load(Ordering::SeqCst);
    let mut outgoing = shared
        .http
        .request(
            parts.method.clone(),
            format!("http://127.0.0.1:{port}{path}"),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => return failed(e.to_string()),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let Ok(bytes) = answer.bytes().await else {
        return failed("unreadable answer".into());
    };
    if (shared.lose)(&parts.method, parts.uri.path()) {
        if let Ok(mut lost) = shared.lost.lock() {
            lost.push(format!("{} {}", parts.method, parts.uri.path()));
        }
        // The service has acted; its answer never arrives, and the
        // gateway's own timeout ends the wait.
        std::future::pending::<()>().await;
    }
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    response.body(Body::from(bytes)).unwrap_or_default()
}
