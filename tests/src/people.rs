//! The approval service's people's API, as approvers and requesters use it.

use crate::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct People {
    /// `http://host:port` of the people's API.
    pub url: String,
    http: reqwest::Client,
}

impl People {
    pub fn new(url: &str) -> People {
        People {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                // Short: a replica that died mid-request must not stall a test for long.
                .timeout(Duration::from_secs(5))
                // A fresh connection per request, as approvers' tools make
                // them: a pooled one may lead to a replica that is gone
                // (the tests roll and kill replicas), where it times out.
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Waits until `token` sees at least `count` approval requests; returns them all.
    pub async fn visible(&self, token: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/v1/approvals", self.url);
        wait_for("approval requests", Duration::from_secs(60), || {
            let request = self.http.get(&url).bearer_auth(token).send();
            async move {
                let list: Value = request.await?.json().await?;
                Ok(list
                    .as_array()
                    .filter(|l| l.len() >= count && count > 0)
                    .cloned())
            }
        })
        .await
    }

    /// Waits for a `pending` request for `tool` on `server` (`namespace/name`)
    /// that `token` may see; returns its id. Other servers' requests do not
    /// count: an approver may see many.
    pub async fn pending(&self, token: &str, server: &str, tool: &str) -> anyhow::Result<String> {
        let url = format!("{}/v1/approvals", self.url);
        wait_for(
            &format!("a pending approval of {tool}"),
            Duration::from_secs(60),
            || {
                let request = self.http.get(&url).bearer_auth(token).send();
                async move {
                    let list: Value = request.await?.json().await?;
                    Ok(list.as_array().and_then(|l| {
                        l.iter()
                            .find(|a| {
                                a["state"] == "pending"
                                    && a["server"] == server
                                    && a["tool"] == tool
                            })
                            .and_then(|a| a["id"].as_str().map(String::from))
                    }))
                }
            },
        )
        .await
    }

    /// Records `verdict` (`approve` or `deny`) on request `id` as `token`.
    pub async fn decide(
        &self,
        token: &str,
        id: &str,
        verdict: &str,
        reason: &str,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/v1/approvals/{id}/decision", self.url))
            .bearer_auth(token)
            .json(&json!({"verdict": verdict, "reason": reason}))
            .send()
            .await?)
    }

    /// The requester's answer to an approver's question.
    pub async fn answer(
        &self,
        token: &str,
        id: &str,
        message: &str,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/v1/approvals/{id}/answer", self.url))
            .bearer_auth(token)
            .json(&json!({"message": message}))
            .send()
            .await?)
    }
}
