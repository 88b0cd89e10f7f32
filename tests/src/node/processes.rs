//! The host's view of a pod's processes: the node runs them, so a test can
//! find one and signal it the way a crash, an OOM kill or a stalled VM would.

/// The host PID of the process running `program` (the path it was started
/// as) in a container of pod `pod`: every container's environment names its
/// pod in `HOSTNAME`.
pub fn of_pod(pod: &str, program: &str) -> anyhow::Result<i32> {
    let wanted = format!("HOSTNAME={pod}");
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if cmdline.starts_with(program.as_bytes())
            && environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
        {
            return Ok(pid);
        }
    }
    anyhow::bail!("no {program} process in pod {pod}")
}

/// Sends `signal` (`KILL`, `STOP`, …) to `pid`.
pub fn signal(pid: i32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}
