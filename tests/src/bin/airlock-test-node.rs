//! Starts the harness's node and keeps it until Ctrl-C or SIGTERM, then
//! tears it down and reports whether the host is as before. Prints the admin
//! kubeconfig's path once the node is Ready.

use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut node = match Node::start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("airlock-test-node: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready: KUBECONFIG={}", node.kubeconfig(ADMIN).display());
    if let Err(e) = airlock_operator::shutdown::requested().await {
        eprintln!("airlock-test-node: {e}");
    }
    match node.stop() {
        Ok(left) if left.is_empty() => ExitCode::SUCCESS,
        Ok(left) => {
            eprintln!(
                "airlock-test-node: host state not restored:\n  {}",
                left.join("\n  ")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("airlock-test-node: cleanup failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
