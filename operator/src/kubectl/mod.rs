//! `kubectl airlock`: approvers act on ApprovalRequests through the API
//! server, as themselves. The plugin asks the API server who the caller is
//! (a SelfSubjectReview) and writes exactly that into the decision; the
//! API server's admission policies check it against what it authenticated,
//! so nothing the plugin (or anyone patching by hand) claims can make a
//! decision count for someone else.

mod decide;
mod identity;
pub mod policy_replay;
pub mod policy_test;
mod revoke;

use crate::approvals::kubernetes::model_of;
use crate::approvals::time::now_seconds;
use crate::crd::ApprovalRequest;
use crate::present::{printable, summary, table};
use anyhow::Context as _;
use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

pub use identity::ObjectIdField;

/// `kubectl airlock …` (the `airlock` binary installed as `kubectl-airlock`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "kubectl-airlock",
    version,
    about = "Decide on held MCP calls: list, inspect, approve, deny, ask"
)]
pub struct KubectlCli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: KubectlCommand,
}

/// Where and how, as for any kubectl command.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace you may read.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// A kubeconfig other than $KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// A context of the kubeconfig other than its current one.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Output: a table or text for people, or the resources as JSON or YAML.
    #[arg(short = 'o', long, value_enum, global = true)]
    pub output: Option<Format>,
    /// Where the API server's user info holds your Entra object ID (as the
    /// chart's `approvers.objectId`).
    #[arg(long, default_value = "extra:oid", global = true)]
    pub object_id_from: ObjectIdField,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KubectlCommand {
    #[command(flatten)]
    Cluster(ClusterCommand),
    /// Policies, offline.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// What acts on the cluster (through the API server, as the caller).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Requests waiting for a decision (all of them with --all).
    #[command(alias = "list")]
    Get {
        /// One request.
        name: Option<String>,
        /// Decided ones too.
        #[arg(long)]
        all: bool,
        /// Keep printing as requests change.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Everything an approver needs to decide on one request.
    Describe { name: String },
    /// Approve a held call.
    Approve {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Deny a held call; one deny is final.
    Deny {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Ask the requester for more context before deciding.
    Ask {
        name: String,
        #[arg(long)]
        message: String,
    },
    /// Cut a person or one MCP session off from this namespace's servers
    /// (every server, in the operator's namespace) within seconds, held
    /// calls included, until lifted or for a while.
    Revoke(revoke::RevokeArgs),
    /// Lift a revocation.
    Lift { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chains (as `airlock audit verify`).
    Verify(crate::audit::cli::VerifyArgs),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyCommand {
    /// What the policies decide for a call: prints the decision and the rules
    /// that gave it; exits 0 allow, 2 deny, 3 approval (1 on an error). With
    /// --replay, which calls of a recorded trail they would decide otherwise.
    Test(policy_test::PolicyTestArgs),
}

/// What a command printed and its exit code.
pub struct Ran {
    pub output: String,
    pub code: u8,
}

impl From<String> for Ran {
    fn from(output: String) -> Ran {
        Ran { output, code: 0 }
    }
}

/// Runs one command.
pub async fn run(cli: &KubectlCli) -> anyhow::Result<Ran> {
    match &cli.command {
        KubectlCommand::Policy {
            command: PolicyCommand::Test(args),
        } => policy_test::run(args),
        KubectlCommand::Audit {
            command: AuditCommand::Verify(args),
        } => crate::audit::cli::verify(args).await.map(Ran::from),
        KubectlCommand::Cluster(command) => on_cluster(&cli.target, command).await.map(Ran::from),
    }
}

/// A command on the cluster; returns what to print.
async fn on_cluster(target: &Target, command: &ClusterCommand) -> anyhow::Result<String> {
    let (client, namespace) = connect(target).await?;
    let requests: Api<ApprovalRequest> = if target.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    match command {
        ClusterCommand::Get {
            name: Some(name), ..
        } => {
            let request = requests.get(name).await.map_err(refusal)?;
            show(target.output, &[request], true)
        }
        ClusterCommand::Get {
            name: None,
            all,
            watch,
        } => {
            if *watch {
                return watch_requests(&requests, target.output, *all).await;
            }
            let listed = requests
                .list(&ListParams::default())
                .await
                .map_err(refusal)?;
            let shown: Vec<ApprovalRequest> = listed
                .items
                .into_iter()
                .filter(|r| *all || waiting(r))
                .collect();
            show(target.output, &shown, *all)
        }
        ClusterCommand::Describe { name } => {
            let request = requests.get(name).await.map_err(refusal)?;
            match target.output {
                Some(Format::Json | Format::Yaml) => show(target.output, &[request], true),
                _ => Ok(summary(&view(&request)?, false, now_seconds())),
            }
        }
        ClusterCommand::Approve { name, reason } => {
            decide::act(
                &client,
                &namespace,
                name,
                decide::Act::approve(reason),
                target,
            )
            .await
        }
        ClusterCommand::Deny { name, reason } => {
            decide::act(&client, &namespace, name, decide::Act::deny(reason), target).await
        }
        ClusterCommand::Ask { name, message } => {
            decide::act(&client, &namespace, name, decide::Act::ask(message), target).await
        }
        ClusterCommand::Revoke(args) => revoke::revoke(&client, &namespace, args).await,
        ClusterCommand::Lift { name } => revoke::lift(&client, &namespace, name).await,
    }
}

async fn connect(target: &Target) -> anyhow::Result<(kube::Client, String)> {
    let options = kube::config::KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match &target.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options)
            .await
            .or_else(|_| kube::Config::incluster())?,
    };
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((kube::Client::try_from(config)?, namespace))
}

fn waiting(request: &ApprovalRequest) -> bool {
    view(request).is_ok_and(|v| matches!(v["state"].as_str(), Some("pending" | "info_requested")))
}

/// The approval service's view of `request`, as the people's API shows it.
fn view(request: &ApprovalRequest) -> anyhow::Result<Value> {
    let approval = model_of(request)?;
    Ok(crate::approvals::service::view(&approval, now_seconds()))
}

fn show(format: Option<Format>, requests: &[ApprovalRequest], all: bool) -> anyhow::Result<String> {
    match format {
        Some(Format::Json) => Ok(serde_json::to_string_pretty(&list_of(requests))?),
        Some(Format::Yaml) => Ok(serde_yaml::to_string(&list_of(requests))?),
        wide => {
            let views = requests
                .iter()
                .map(view)
                .collect::<anyhow::Result<Vec<_>>>()?;
            if views.is_empty() && !all {
                return Ok("no requests waiting for a decision".into());
            }
            Ok(table(
                &Value::Array(views),
                now_seconds(),
                wide == Some(Format::Wide),
            ))
        }
    }
}

/// One object as kubectl prints one, a `List` for several.
fn list_of(requests: &[ApprovalRequest]) -> Value {
    match requests {
        [one] => serde_json::to_value(one).unwrap_or_default(),
        many => serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": many,
        }),
    }
}

async fn watch_requests(
    requests: &Api<ApprovalRequest>,
    format: Option<Format>,
    all: bool,
) -> anyhow::Result<String> {
    let stream = watcher(requests.clone(), watcher::Config::default()).applied_objects();
    futures::pin_mut!(stream);
    let mut printed_header = false;
    while let Some(request) = stream.next().await {
        let request = request.context("watching ApprovalRequests")?;
        if !all && !waiting(&request) && format.is_none() {
            continue;
        }
        let text = show(format, std::slice::from_ref(&request), true)?;
        // The header once, then one row per change.
        let text = match (format, printed_header) {
            (Some(Format::Json | Format::Yaml), _) | (_, false) => text,
            _ => text.lines().skip(1).collect::<Vec<_>>().join("\n"),
        };
        printed_header = true;
        println!("{text}");
    }
    Ok(String::new())
}

/// The API server's refusal, said plainly: the admission policy's message
/// without the envelope around it.
fn refusal(error: kube::Error) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) => {
            let message = status.message.as_str();
            let reason = message
                .split_once("denied request: ")
                .map_or(message, |(_, reason)| reason);
            anyhow::anyhow!("{}", printable(reason))
        }
        _ => anyhow::Error::new(error),
    }
}
