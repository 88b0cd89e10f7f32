//! Tests on the harness's real node: one node for the whole binary, each test
//! in its own namespace. The node starts before the first test and is torn
//! down after the last; then the host's state is compared with what it was
//! before, and any difference fails the run. Ctrl-C or SIGTERM tears the node
//! down too; after a SIGKILL the next run's start sweeps up what was left.
//!
//! When the node cannot start (not root, a part missing) every test fails
//! with the reason; none is skipped.

mod approvers;
mod cert_manager;
mod gitops;
mod ha;
mod install_guide;
mod monitoring;
mod neighbours;
mod operator;
mod release;
mod rotation;
mod selector;
mod smoke;
mod trail;

use airlock_tests::node::{Node, host};
use libtest_mimic::{Arguments, Failed, Trial};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

type TestFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;
type Test = for<'a> fn(&'a Node) -> TestFuture<'a>;

/// `(name, test)` for each `module::function`, an `async fn(&Node) -> anyhow::Result<()>`.
macro_rules! node_tests {
    ($($module:ident :: $test:ident),* $(,)?) => {
        vec![$((
            concat!(stringify!($module), "::", stringify!($test)),
            (|node| Box::pin($module::$test(node)) as TestFuture) as Test,
        )),*]
    };
}

/// Every test of this binary.
fn tests() -> Vec<(&'static str, Test)> {
    node_tests![
        smoke::native_sidecar_starts_first_and_stops_last,
        smoke::pods_reach_each_other_by_ip_and_service_name,
        smoke::envoy_sidecar_proxies_to_its_app_over_loopback,
        smoke::mcp_server_images_answer_initialize,
        smoke::network_policy_admits_only_the_allowed_port,
        operator::an_applied_policy_allows_and_denies,
        operator::a_held_call_completes_once_a_lead_approves,
        operator::only_the_gateway_port_is_reachable,
        operator::a_policy_edit_reaches_the_live_sidecar,
        operator::decided_requests_are_deleted_after_the_retention,
        trail::the_trail_verifies_against_its_checkpoints,
        neighbours::a_gateway_speaks_only_for_its_own_server,
        neighbours::the_mcp_container_holds_no_gateway_credential,
        neighbours::the_mcp_container_cannot_take_the_gateways_port,
        neighbours::only_the_controllers_make_gateway_pods,
        neighbours::a_baseline_governs_what_its_namespaces_cannot_escape,
        neighbours::a_namespace_editor_cannot_open_the_mcp_port_with_a_network_policy,
        approvers::a_lead_approves_with_kubectl_airlock,
        approvers::a_revoked_person_is_cut_off_held_calls_included,
        approvers::a_policy_tells_its_channel_of_its_requests,
        gitops::the_gitops_examples_apply_and_argocd_reads_their_health,
        selector::a_selected_workload_is_gated_once_its_pods_are_recreated,
    ]
}

/// Tests that disturb what the others rely on (they kill operator replicas,
/// the last uninstalls the chart) or read what every test moves (metrics):
/// run one at a time, in this order, after every test of [`tests`].
fn exclusive_tests() -> Vec<(&'static str, Test)> {
    node_tests![
        // Alone, so that what it reads moves with its own flow only.
        monitoring::the_dashboard_and_alerts_read_a_real_flow,
        ha::killing_the_leader_and_the_polled_replica_loses_nothing,
        ha::a_frozen_leader_writes_nothing_when_it_resumes,
        // Rotates the CA every other test's sidecars trust.
        rotation::the_operators_ca_rotates_with_no_pod_restarted,
        release::an_upgrade_keeps_held_calls_and_approvals,
        release::uninstalling_leaves_only_what_is_kept,
        // A fresh install, after the uninstall, from the guide's commands.
        install_guide::the_install_guide_installs_the_chart_and_a_held_call_is_approved,
        // Turns the guide's install over to cert-manager.
        cert_manager::cert_manager_issues_the_operators_certificate,
    ]
}

fn main() -> ExitCode {
    let arguments = Arguments::from_args();
    let exclusive: Vec<&str> = exclusive_tests().iter().map(|(name, _)| *name).collect();
    let tests: Vec<(&'static str, Test)> = tests().into_iter().chain(exclusive_tests()).collect();
    if arguments.list {
        let trials = tests
            .into_iter()
            .map(|(name, _)| Trial::test(name, || Ok(())))
            .collect();
        return libtest_mimic::run(&arguments, trials).exit_code();
    }
    let filtered_out = |name: &str| {
        arguments.filter.as_deref().is_some_and(|f| {
            if arguments.exact {
                name != f
            } else {
                !name.contains(f)
            }
        }) || arguments.skip.iter().any(|s| name.contains(s.as_str()))
    };
    if tests.iter().all(|(name, _)| filtered_out(name)) {
        return libtest_mimic::run(&arguments, Vec::new()).exit_code();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Arc::new(runtime),
        Err(e) => {
            eprintln!("cluster tests: cannot build a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tear_down_on_signal();
    let node = runtime.block_on(Node::start()).map(Arc::new);
    let trial = |(name, test): (&'static str, Test)| {
        let node = node.as_ref().map(Arc::clone).map_err(|e| format!("{e:#}"));
        let runtime = Arc::clone(&runtime);
        Trial::test(name, move || {
            let node = node.map_err(|e| Failed::from(format!("the node could not start: {e}")))?;
            runtime
                .block_on(test(&node))
                .map_err(|e| Failed::from(format!("{e:#}")))
        })
    };
    let (alone, together): (Vec<_>, Vec<_>) = tests
        .into_iter()
        .partition(|(name, _)| exclusive.contains(name));
    let conclusion = libtest_mimic::run(&arguments, together.into_iter().map(trial).collect());
    let one_at_a_time = Arguments {
        test_threads: Some(1),
        ..arguments.clone()
    };
    let alone_conclusion =
        libtest_mimic::run(&one_at_a_time, alone.into_iter().map(trial).collect());

    // Every trial has finished and dropped its handle, so this is the last one.
    let restored = match node.map(Arc::try_unwrap) {
        Ok(Ok(mut node)) => node.stop(),
        Ok(Err(_)) => Err(anyhow::anyhow!("a test still holds the node")),
        Err(_) => host::sweep(),
    };
    let host_ok = match restored {
        Ok(differences) if differences.is_empty() => {
            println!("host state after teardown ... as before");
            true
        }
        Ok(differences) => {
            println!(
                "host state after teardown ... CHANGED:\n  {}",
                differences.join("\n  ")
            );
            false
        }
        Err(e) => {
            println!("host state after teardown ... cleanup failed: {e:#}");
            false
        }
    };
    if conclusion.has_failed() || alone_conclusion.has_failed() || !host_ok {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP: stop the node's processes, restore the
/// host, and exit.
fn tear_down_on_signal() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        eprintln!(
            "cluster tests: cannot watch for signals; an interrupted run is swept by the next"
        );
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("cluster tests: signal {signal}, tearing the node down");
            if let Err(e) = host::sweep() {
                eprintln!("cluster tests: cleanup failed: {e:#}");
            }
            std::process::exit(128 + signal);
        }
    });
}
