//! A node whose test run is killed with SIGKILL midway leaves its processes
//! and host state behind; the sweep every node start begins with stops them
//! and puts the host back.

use airlock_tests::node::host::{self, HostState, NODE_BRIDGE};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_midway_is_swept_by_the_next_start() -> anyhow::Result<()> {
    let mut node = Command::new(env!("CARGO_BIN_EXE_airlock-test-node"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = node
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let ready = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.starts_with("ready:"))
        }),
    )
    .await;
    let before = host::state_before();
    node.kill()?; // SIGKILL: no teardown runs
    node.wait()?;
    assert!(
        matches!(ready, Ok(Ok(Some(_)))),
        "the node did not become ready: {ready:?}"
    );
    let before = before?;

    let left_behind = HostState::read()?;
    assert!(
        left_behind.links.iter().any(|l| l == NODE_BRIDGE),
        "the killed node left no bridge: the test proves nothing"
    );
    assert!(
        !host::processes_left().is_empty(),
        "the killed node left no process"
    );

    let differences = host::sweep()?;
    assert!(differences.is_empty(), "after the sweep: {differences:?}");
    assert_eq!(host::processes_left(), Vec::<u32>::new());
    assert_eq!(
        HostState::read()?.differences(&before),
        Vec::<String>::new()
    );
    Ok(())
}
