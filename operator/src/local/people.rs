//! The CLI for people in local mode: development tokens, approvals and the
//! audit trail. The acting person is always identified by a token the
//! approval service verifies; no flag can claim to be someone.

use super::{Endpoints, LOCAL_AUDIENCE, LOCAL_TENANT, StateDir};
use crate::dev_issuer::{DevIssuer, TokenRequest};
use airlock_policy::canonical::sha256_hex;
use airlock_policy::entra::TokenVersion;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::fmt::Write as _;
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
        LOCAL_AUDIENCE,
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
        (Output::Text, ApprovalCommand::List) => table(&answer, now()),
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

/// Text from the server made safe for a terminal: control characters, ANSI
/// escapes and bidirectional overrides are shown escaped, never interpreted.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn seconds_of(rfc3339: &str) -> Option<u64> {
    // `YYYY-MM-DDTHH:MM:SSZ`, as the service writes it.
    let (date, time) = rfc3339.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + s).ok()
}

fn span(seconds: i64) -> String {
    let (sign, s) = if seconds < 0 {
        ("-", -seconds)
    } else {
        ("", seconds)
    };
    match s {
        0..60 => format!("{sign}{s}s"),
        60..3600 => format!("{sign}{}m", s / 60),
        3600..86_400 => format!("{sign}{}h", s / 3600),
        _ => format!("{sign}{}d", s / 86_400),
    }
}

fn field<'a>(approval: &'a Value, name: &str) -> &'a str {
    approval[name].as_str().unwrap_or("")
}

fn approvals_count(approval: &Value) -> String {
    let given = approval["decisions"].as_array().map_or(0, |d| {
        d.iter().filter(|d| d["verdict"] == "approve").count()
    });
    let needed: u64 = approval["requirements"].as_array().map_or(0, |r| {
        r.iter()
            .map(|r| r["minApprovals"].as_u64().unwrap_or(1))
            .max()
            .unwrap_or(0)
    });
    format!("{given}/{needed}")
}

fn age_and_expiry(approval: &Value, now: u64) -> (String, String) {
    let relative = |name: &str, future: bool| {
        seconds_of(field(approval, name)).map_or("?".to_string(), |at| {
            let delta = i64::try_from(at).unwrap_or(0) - i64::try_from(now).unwrap_or(0);
            span(if future { delta } else { -delta })
        })
    };
    (relative("createdAt", false), relative("expiresAt", true))
}

/// The list as a table.
pub fn table(list: &Value, now: u64) -> String {
    let rows: Vec<[String; 7]> = list
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let (age, expires) = age_and_expiry(a, now);
                    [
                        field(a, "id").to_string(),
                        field(a, "state").to_string(),
                        field(a, "tool").to_string(),
                        a["requester"]["name"].as_str().unwrap_or("").to_string(),
                        age,
                        expires,
                        approvals_count(a),
                    ]
                    .map(|cell| printable(&cell))
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no approvals".into();
    }
    let header = [
        "ID",
        "STATE",
        "TOOL",
        "REQUESTER",
        "AGE",
        "EXPIRES IN",
        "APPROVALS",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            row.iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One approval, for a person deciding on it.
pub fn summary(approval: &Value, raw: bool, now: u64) -> String {
    let (age, expires) = age_and_expiry(approval, now);
    let requester = &approval["requester"];
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<12} {}", printable(value));
    };
    line("id", field(approval, "id"));
    line("state", field(approval, "state"));
    line(
        "requester",
        &format!(
            "{} (oid {}, tenant {})",
            requester["name"].as_str().unwrap_or(""),
            requester["oid"].as_str().unwrap_or(""),
            requester["tid"].as_str().unwrap_or("")
        ),
    );
    line("server", field(approval, "server"));
    line(
        "call",
        &format!("{} {}", field(approval, "method"), field(approval, "tool")),
    );
    line(
        "arguments",
        &match &approval["arguments"] {
            Value::Null => "not recorded by policy (see the digest)".to_string(),
            arguments => arguments.to_string(),
        },
    );
    line("asked", &format!("{age} ago"));
    line("expires in", &expires);
    line("approvals", &approvals_count(approval));
    for requirement in approval["requirements"].as_array().into_iter().flatten() {
        line(
            "rule",
            &format!(
                "{} needs {} of groups {} / users {}",
                requirement["rule"].as_str().unwrap_or(""),
                requirement["minApprovals"],
                requirement["approverGroups"],
                requirement["approverUsers"]
            ),
        );
    }
    for decision in approval["decisions"].as_array().into_iter().flatten() {
        line(
            "decision",
            &format!(
                "{} by {}: {}",
                decision["verdict"].as_str().unwrap_or(""),
                decision["approver"]["name"].as_str().unwrap_or(""),
                decision["reason"].as_str().unwrap_or("")
            ),
        );
    }
    for remark in approval["conversation"].as_array().into_iter().flatten() {
        line(
            "said",
            &format!(
                "{}: {}",
                remark["by"]["name"].as_str().unwrap_or(""),
                remark["message"].as_str().unwrap_or("")
            ),
        );
    }
    if raw {
        line("raw", &approval["arguments"].to_string());
        line("digest", field(approval, "argumentsDigest"));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{001b}[31mred");
        assert_eq!(printable("a\u{202E}gpj.exe"), "a\\u{202e}gpj.exe");
        assert_eq!(printable("line\nbreak"), "line\\u{000a}break");
    }

    #[test]
    fn user_ids_are_stable_and_distinct() {
        assert_eq!(user_object_id("ada"), user_object_id("ada"));
        assert_ne!(user_object_id("ada"), user_object_id("lea"));
        assert_eq!(user_object_id("ada").len(), 36);
    }

    #[test]
    fn times_round_trip_with_the_service_format() {
        for seconds in [0, 951_782_400, 1_795_589_742] {
            assert_eq!(
                seconds_of(&crate::approvals::time::rfc3339(seconds)),
                Some(seconds)
            );
        }
    }

    #[test]
    fn the_table_shows_who_asked_what_and_escapes_it() {
        let list = json!([{
            "id": "ar-1", "state": "pending", "tool": "deploy\u{1b}[2J", "requester": {"name": "ada"},
            "createdAt": "2026-11-25T10:00:00Z", "expiresAt": "2026-11-25T10:30:00Z",
            "requirements": [{"minApprovals": 2}], "decisions": [{"verdict": "approve"}]
        }]);
        let now = seconds_of("2026-11-25T10:05:00Z").unwrap();
        let text = table(&list, now);
        assert!(text.starts_with("ID"), "{text}");
        assert!(
            text.contains("ar-1  pending  deploy\\u{001b}[2J  ada        5m   25m"),
            "{text}"
        );
        assert!(text.contains("1/2"), "{text}");
        assert_eq!(table(&json!([]), now), "no approvals");
    }
}
