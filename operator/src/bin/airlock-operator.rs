//! `airlock-operator`: the controllers and the approval service in a
//! cluster (`run`), and the sidecar's filter installer (`install-filter`).

use airlock_operator::run::{self, RunArgs};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "airlock-operator",
    version,
    about = "Airlock's Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the approval APIs and, while holding the Lease, run the controllers.
    Run(Box<RunArgs>),
    /// Copy the filter module into a sidecar's volume if its sha256 is the rendered one.
    InstallFilter {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        sha256: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Run(args) => run::run(*args).await,
        Command::InstallFilter { from, to, sha256 } => {
            airlock_operator::filter_install::install(&from, &to, &sha256).map_err(Into::into)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            airlock_operator::log::error("operator", &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
