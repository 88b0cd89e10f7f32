//! Notifications: a JSON POST to a policy's channel when one of its
//! requests is asked, when an approver asks for more context, and when it is
//! decided. One body serves a generic receiver and Teams' and Slack's
//! incoming webhooks alike (they read its `text`).
//!
//! A channel's URL lives in the Secret `airlock-notify-CHANNEL` in the
//! operator's namespace, never in a policy, so whoever edits policies cannot
//! point it at an internal address. Delivery runs on its own task from a
//! bounded queue, retried with backoff; it never blocks a hold. Every
//! notice ends counted (delivered, failed, dropped) and every loss is
//! logged.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

/// Notices waiting for delivery before new ones are dropped (and counted).
const QUEUE: usize = 256;
/// Tries per notice, with a doubling pause from one second.
const ATTEMPTS: u32 = 5;

/// One thing to tell a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub channel: String,
    pub body: Value,
}

impl Notice {
    /// What `kind` (`approval.asked`, …) of request `approval` says, as `text`
    /// for chat receivers and as fields for everything else.
    pub fn new(channel: &str, kind: &str, text: String, approval: Value) -> Notice {
        Notice {
            channel: channel.to_string(),
            body: json!({"text": text, "event": kind, "approval": approval}),
        }
    }
}

/// Where each channel's URL is.
#[derive(Clone)]
pub enum Channels {
    /// Secrets `airlock-notify-CHANNEL` in this namespace.
    Secrets {
        client: kube::Client,
        namespace: String,
    },
    /// Fixed URLs, for the test of delivery.
    #[cfg(test)]
    Fixed(Vec<(String, String)>),
}

impl Channels {
    async fn url(&self, channel: &str) -> Result<String, String> {
        match self {
            #[cfg(test)]
            Channels::Fixed(urls) => urls
                .iter()
                .find(|(name, _)| name == channel)
                .map(|(_, url)| url.clone())
                .ok_or_else(|| format!("no channel {channel:?}")),
            Channels::Secrets { client, namespace } => {
                let name = format!("airlock-notify-{channel}");
                let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                    .get(&name)
                    .await
                    .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?;
                let url = secret
                    .data
                    .and_then(|data| data.get("url").cloned())
                    .map(|bytes| String::from_utf8_lossy(&bytes.0).trim().to_string())
                    .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
                    .ok_or_else(|| {
                        format!("Secret {namespace}/{name} has no http(s) URL under `url`")
                    })?;
                Ok(url)
            }
        }
    }
}

/// Hands notices to the delivery task.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Notice>,
    outcomes: IntCounterVec,
}

impl Notifier {
    /// The notifier and its delivery task (run it for as long as the service).
    pub fn new(
        channels: Channels,
    ) -> prometheus::Result<(Notifier, impl std::future::Future<Output = ()> + use<>)> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "airlock_notifications_total",
                "Notifications of approval requests, by outcome (delivered, failed, dropped)",
            ),
            &["outcome"],
        )?;
        let (queue, mut waiting) = mpsc::channel::<Notice>(QUEUE);
        let counted = outcomes.clone();
        let deliver = async move {
            let http = match reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
            {
                Ok(http) => http,
                Err(e) => return log(&format!("no HTTP client, notifications are off: {e}")),
            };
            while let Some(notice) = waiting.recv().await {
                let outcome = match deliver(&http, &channels, &notice).await {
                    Ok(()) => "delivered",
                    Err(e) => {
                        log(&format!("notification to {} lost: {e}", notice.channel));
                        "failed"
                    }
                };
                counted.with_label_values(&[outcome]).inc();
            }
        };
        Ok((Notifier { queue, outcomes }, deliver))
    }

    /// Counts the outcomes in `registry` (the service's `/metrics`).
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.outcomes.clone()))
    }

    /// Queues `notice`; never waits. A full queue drops it, counted and logged.
    pub fn send(&self, notice: Notice) {
        if let Err(e) = self.queue.try_send(notice) {
            self.outcomes.with_label_values(&["dropped"]).inc();
            log(&format!("notification dropped ({e})"));
        }
    }
}

async fn deliver(
    http: &reqwest::Client,
    channels: &Channels,
    notice: &Notice,
) -> Result<(), String> {
    let url = channels.url(&notice.channel).await?;
    let mut pause = Duration::from_secs(1);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match http.post(&url).json(&notice.body).send().await {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer) => last = format!("HTTP {}", answer.status()),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(format!("{ATTEMPTS} attempts, the last: {last}"))
}

fn log(message: &str) {
    crate::log::error("notifications", message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A receiver that fails its first `failures` posts, and keeps what it got.
    async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push(body);
                    if seen.len() <= failures {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, got)
    }

    #[tokio::test]
    async fn a_notice_is_retried_until_delivered_and_counted() {
        let (url, got) = receiver(1).await;
        let (notifier, deliver) =
            Notifier::new(Channels::Fixed(vec![("leads".into(), url)])).unwrap();
        notifier.register(&Registry::new()).unwrap();
        tokio::spawn(deliver);
        let notice = Notice::new(
            "leads",
            "approval.asked",
            "ada asks".into(),
            json!({"id": "ar-1"}),
        );
        notifier.send(notice.clone());
        notifier.send(Notice::new(
            "nobody",
            "approval.asked",
            "x".into(),
            json!({}),
        ));
        for _ in 0..100 {
            let outcomes = &notifier.outcomes;
            if outcomes.with_label_values(&["delivered"]).get() == 1
                && outcomes.with_label_values(&["failed"]).get() == 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(notifier.outcomes.with_label_values(&["delivered"]).get(), 1);
        assert_eq!(notifier.outcomes.with_label_values(&["failed"]).get(), 1);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2, "one failure, then the retry");
        assert_eq!(got[1], notice.body);
        assert_eq!(got[1]["text"], "ada asks");
    }
}
