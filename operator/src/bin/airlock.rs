//! `airlock`: run the gateway on one machine and act on it as a person.

use airlock_operator::kubectl;
use airlock_operator::local::people::{self, ApprovalCommand, Connection, TokenArgs};
use airlock_operator::local::up::{self, UpArgs};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Identity, policy and human approval in front of MCP servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole gateway on this machine, without Kubernetes.
    Up(UpArgs),
    /// Mint a development token signed by the local issuer (trusted only by `airlock up`).
    Token(TokenArgs),
    /// List, inspect and decide approvals.
    Approvals {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: ApprovalCommand,
    },
    /// Check and read the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Serve the demo MCP server `up --demo` runs, on its own (its container image runs this).
    DemoServer {
        /// Address to serve `/mcp` on; bind 127.0.0.1 behind a sidecar.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Answer any `Host` header, not only loopback names (in a pod, callers
        /// use the pod IP or a Service name).
        #[arg(long)]
        any_host: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chains: prints the record counts, or names the first
    /// broken record; with `--checkpoints`, checks each chain against the
    /// heads the operator replicas recorded in the API server.
    Verify(airlock_operator::audit::cli::VerifyArgs),
    /// What happened in one MCP session, in order.
    Session {
        id: String,
        #[arg(long, default_value = ".airlock/audit.jsonl")]
        file: PathBuf,
    },
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Up(args) => up::run(&args).await.map(|()| String::new()),
        Command::Token(args) => people::token(&args),
        Command::Approvals {
            connection,
            command,
        } => people::approvals(&connection, &command).await,
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => airlock_operator::audit::cli::verify(&args).await,
        Command::Audit {
            command: AuditCommand::Session { id, file },
        } => airlock_operator::audit::cli::session_events(&file, &id),
        Command::DemoServer { listen, any_host } => {
            let hosts = if any_host {
                airlock_operator::demo_server::Hosts::Any
            } else {
                airlock_operator::demo_server::Hosts::Loopback
            };
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("demo MCP server on http://{listen}/mcp");
            tokio::select! {
                served = airlock_operator::demo_server::serve(listener, hosts) => served?,
                requested = airlock_operator::shutdown::requested() => requested?,
            }
            Ok(String::new())
        }
    }
}

/// Installed (or linked) as `kubectl-airlock`, the binary is the kubectl
/// plugin; otherwise the `airlock` command.
fn invoked_as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|path| path.file_name().map(|name| name.to_owned()))
        .is_some_and(|name| name == "kubectl-airlock")
}

#[tokio::main]
async fn main() -> ExitCode {
    let ran = if invoked_as_kubectl_plugin() {
        kubectl::run(&kubectl::KubectlCli::parse()).await
    } else {
        run(Cli::parse()).await.map(kubectl::Ran::from)
    };
    match ran {
        Ok(kubectl::Ran { output, code }) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}
