//! The Helm chart, rendered with the pinned helm: tests install exactly what
//! a platform team would, the operator's RBAC included.

use crate::paths::{repo_root, tool};
use anyhow::{Context, bail};
use std::process::Command;

/// `helm template` of `charts/airlock` into `namespace` with `values`
/// (CRDs included), as one multi-document YAML.
pub fn render(
    release: &str,
    namespace: &str,
    values: &serde_json::Value,
) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let values_file = dir.path().join("values.json");
    std::fs::write(&values_file, serde_json::to_vec(values)?)?;
    let output = Command::new(tool("helm")?)
        .args(["template", release])
        .arg(repo_root().join("charts/airlock"))
        .args(["--namespace", namespace, "--include-crds", "--values"])
        .arg(&values_file)
        .env("HELM_CACHE_HOME", dir.path().join("cache"))
        .env("HELM_CONFIG_HOME", dir.path().join("config"))
        .env("HELM_DATA_HOME", dir.path().join("data"))
        .output()
        .context("running helm")?;
    if !output.status.success() {
        bail!(
            "helm template: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}
