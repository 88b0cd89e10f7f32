//! How long-running commands learn they should stop.

/// Resolves on Ctrl-C or SIGTERM (what a kubelet sends before it kills a
/// container), so a command stops cleanly in a terminal and in a pod alike.
pub async fn requested() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}
