//! The CLI for people in local mode: development tokens, approvals and the
//! audit trail. The acting person is always identified by a token the
//! approval service verifies; no flag can claim to be someone.

use super::{Endpoints, LOCAL_AUDIENCE, LOCAL_TENANT, StateDir};
use crate::dev_issuer::{DevIssuer, TokenRequest};
use crate::present::{printable, summary, table};
use airlock_policy::canonical::sha256_hex;
use airlock_policy::entra::TokenVersion;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Options of `airlock token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user: the same name always gets the same object id.
    #[arg(long)]
    pub user: String,
    /// Group claims (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// App roles (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Delegated scopes (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', default_value = "mcp.call")]
    pub scopes: Vec<String>,
    /// The client application id (`azp`/`appid`).
    #[arg(long)]
    pub app: Option<String>,
    /// Mint Entra's v1 token shape instead of v2.
    #[arg(long)]
    pub v1: bool,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub lifetime: u64,
    /// The audience (default: the one `airlock up` trusts for calls and
    /// approvals); a cluster's people's API has its own.
    #[arg(long)]
    pub audience: Option<String>,
    #[arg(long, default_value = ".airlock")]
    pub state_dir: PathBuf,
}

/// A stable, GUID-shaped object id for a development user name.
pub fn user_object_id(user: &str) -> String {
    let hex = &sha256_hex(format!("airlock-local-user:{user}").as_bytes())["sha256:".len()..];
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Mints a token signed by the local development issuer.
pub fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let state = StateDir::new(&args.state_dir);
    if !state.issuer_key().is_file() {
        bail!(
            "no development issuer key at {}: start `airlock up` (in the same directory) first",
            state.issuer_key().display()
        );
    }
    let issuer = DevIssuer::persistent(LOCAL_TENANT, &state.issuer_key())?;
    let mut request = TokenRequest::user(
        &user_object_id(&args.user),
        &format!("{}@airlock.local", args.user),
        args.audience.as_deref().unwrap_or(LOCAL_AUDIENCE),
    );
    request.name = args.user.clone();
    request.groups = args.groups.clone();
    request.roles = args.roles.clone();
    request.scopes = args.scopes.clone();
    if let Some(app) = &args.app {
        request.app_id = app.clone();
    }
    if args.v1 {
        request.version = TokenVersion::V1;
    }
    request.lifetime_seconds = args.lifetime;
    Ok(issuer.mint(&request)?)
}

/// How the CLI reaches the approval service and who is acting.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The approval service (default: from <state-dir>/run/endpoints.json).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// The acting person's token.
    #[arg(long, env = "AIRLOCK_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = ".airlock", global = true)]
    pub state_dir: PathBuf,
    /// Output: a table or summary for people, or JSON for scripts.
    #[arg(short = 'o', long, value_enum, default_value = "text", global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ApprovalCommand {
    /// Approvals you asked for or may decide.
    List,
    /// One approval: who asked, which call, the arguments as recorded, the decisions.
    Show {
        id: String,
        /// Also print the raw arguments JSON and its digest.
        #[arg(long)]
        raw: bool,
    },
    /// Approve a held call.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a held call; one deny is final.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Ask the requester for more context before deciding.
    Ask { id: String, message: String },
    /// Answer an approver's question (as the requester).
    Answer { id: String, message: String },
}

/// Runs an approvals command; returns what to print.
pub async fn approvals(
    connection: &Connection,
    command: &ApprovalCommand,
) -> anyhow::Result<String> {
    let base = match &connection.server {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => Endpoints::read(&StateDir::new(&connection.state_dir))?.approvals,
    };
    let token = connection.token.as_deref().context(
        "who is acting? pass --token or set AIRLOCK_TOKEN (mint one with `airlock token --user NAME`)",
    )?;
    let http = reqwest::Client::new();
    let (method, path, body) = match command {
        ApprovalCommand::List => (reqwest::Method::GET, "/v1/approvals".to_string(), None),
        ApprovalCommand::Show { id, .. } => {
            (reqwest::Method::GET, format!("/v1/approvals/{id}"), None)
        }
        ApprovalCommand::Approve { id, reason } => (
            reqwest::Method::POST,
            format!("/v1/approvals/{id}/decision"),
            Some(json!({"verdict": "approve", "reason": reason})),
        ),
        ApprovalCommand::Deny { id, reason } => (
            reqwest::Method::POST,
            format!("/v1/approvals/{id}/decision"),
            Some(json!({"verdict": "deny", "reason": reason})),
        ),
        ApprovalCommand::Ask { id, message } => (
            reqwest::Method::POST,
            format!("/v1/approvals/{id}/ask"),
            Some(json!({"message": message})),
        ),
        ApprovalCommand::Answer { id, message } => (
            reqwest::Method::POST,
            format!("/v1/approvals/{id}/answer"),
            Some(json!({"message": message})),
        ),
    };
    let mut request = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the approval service at {base}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "refused ({status}): {}",
            printable(answer["message"].as_str().unwrap_or("no reason given"))
        );
    }
    Ok(match (connection.output, command) {
        (Output::Json, _) => serde_json::to_string_pretty(&answer)?,
        (Output::Text, ApprovalCommand::List) => table(&answer, now(), false),
        (Output::Text, ApprovalCommand::Show { raw, .. }) => summary(&answer, *raw, now()),
        (Output::Text, _) => format!(
            "{}: {}",
            printable(answer["id"].as_str().unwrap_or_default()),
            printable(answer["state"].as_str().unwrap_or_default())
        ),
    })
}

fn now() -> u64 {
    crate::approvals::time::now_seconds()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_stable_and_distinct() {
        assert_eq!(user_object_id("ada"), user_object_id("ada"));
        assert_ne!(user_object_id("ada"), user_object_id("lea"));
        assert_eq!(user_object_id("ada").len(), 36);
    }
}
