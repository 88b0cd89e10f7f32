//! ApprovalPolicy YAML files, as `kubectl apply` takes them, read for local
//! mode: one or several documents per file, each checked like the cluster
//! checks it, with errors naming the file, the document and the field.

use airlock_policy::gateway::config::NamedPolicy;
use airlock_policy::model::ApprovalPolicySpec;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

const API_VERSION: &str = "mcp.airlock.dev/v1alpha1";

#[derive(Debug, Error)]
pub enum PolicyFileError {
    #[error("{file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}, document {document}: {reason}")]
    Invalid {
        file: String,
        document: usize,
        reason: String,
    },
    #[error("policy {name} is defined twice (in {first} and {second})")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ApprovalPolicySpec,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// `files` with each directory replaced by its `.yaml` and `.yml` files
/// in name order (not its subdirectories), as `kubectl apply -f DIR` reads it.
fn expanded(files: &[impl AsRef<Path>]) -> Result<Vec<PathBuf>, PolicyFileError> {
    let mut out = Vec::new();
    for file in files {
        let file = file.as_ref();
        if !file.is_dir() {
            out.push(file.to_path_buf());
            continue;
        }
        let unreadable = |e: std::io::Error| PolicyFileError::Unreadable {
            file: file.display().to_string(),
            reason: e.to_string(),
        };
        let mut inside = Vec::new();
        for entry in std::fs::read_dir(file).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if yaml && path.is_file() {
                inside.push(path);
            }
        }
        inside.sort();
        out.extend(inside);
    }
    Ok(out)
}

/// Reads every ApprovalPolicy in `files` (a directory: its YAML files); a policy without a namespace is in
/// `default_namespace`. Its version is the digest of its spec.
pub fn load(
    files: &[impl AsRef<Path>],
    default_namespace: &str,
) -> Result<Vec<(NamedPolicy, String)>, PolicyFileError> {
    let mut policies: Vec<(NamedPolicy, String)> = Vec::new();
    for file in expanded(files)? {
        let file = file.as_path();
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| PolicyFileError::Unreadable {
            file: shown.clone(),
            reason: e.to_string(),
        })?;
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let invalid = |reason: String| PolicyFileError::Invalid {
                file: shown.clone(),
                document: index + 1,
                reason,
            };
            let value =
                serde_yaml::Value::deserialize(document).map_err(|e| invalid(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let document: Document =
                serde_yaml::from_value(value).map_err(|e| invalid(e.to_string()))?;
            if document.api_version != API_VERSION || document.kind != "ApprovalPolicy" {
                return Err(invalid(format!(
                    "expected apiVersion {API_VERSION} and kind ApprovalPolicy, found {} {}",
                    document.api_version, document.kind
                )));
            }
            let namespace = document
                .metadata
                .namespace
                .unwrap_or_else(|| default_namespace.to_string());
            let name = format!("{namespace}/{}", document.metadata.name);
            if document.spec.namespaces.is_some() {
                return Err(invalid(format!(
                    "policy {name}: spec.namespaces: a baseline governs a cluster's namespaces; \
                     airlock up runs one server, so this policy would govern nothing"
                )));
            }
            let policy = NamedPolicy::checked(name.clone(), document.spec).map_err(|errors| {
                let fields: Vec<String> = errors.iter().map(ToString::to_string).collect();
                invalid(format!("policy {name}: {}", fields.join("; ")))
            })?;
            if let Some((_, first)) = policies.iter().find(|(p, _)| p.name == name) {
                return Err(PolicyFileError::Duplicate {
                    name,
                    first: first.clone(),
                    second: shown,
                });
            }
            policies.push((policy, shown.clone()));
        }
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Vec<NamedPolicy>, PolicyFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        Ok(load(&[path], "default")?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    #[test]
    fn a_directory_is_read_as_its_yaml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let policy = |name: &str| {
            format!(
                "apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {{name: {name}}}\nspec: {{}}\n"
            )
        };
        std::fs::write(dir.path().join("b.yaml"), policy("b")).unwrap();
        std::fs::write(dir.path().join("a.yml"), policy("a")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        std::fs::write(dir.path().join("old/c.yaml"), policy("c")).unwrap();
        let names: Vec<String> = load(&[dir.path()], "default")
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.name)
            .collect();
        assert_eq!(names, ["default/a", "default/b"]);
    }

    #[test]
    fn a_baseline_is_refused_rather_than_ignored() {
        let refused = load_text(
            "apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: b}\nspec: {namespaces: {}}\n",
        )
        .unwrap_err();
        assert!(refused.to_string().contains("spec.namespaces"), "{refused}");
    }

    #[test]
    fn reads_every_document_and_names_policies_by_namespace() {
        let policies = load_text(
            "apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: a}\nspec: {rules: []}\n---\n\
             apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: b, namespace: ml}\nspec: {defaultAction: Allow}\n",
        )
        .unwrap();
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default/a", "ml/b"]);
        assert!(policies[0].version.starts_with("sha256:"));
        assert_ne!(policies[0].version, policies[1].version);
    }

    #[test]
    fn invalid_policies_are_refused_naming_document_and_field() {
        let error = load_text(
            "apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: a}\nspec: {rules: []}\n---\n\
             apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: b}\nspec:\n  rules:\n  - {name: r, action: RequireApproval}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("document 2"), "{error}");
        assert!(error.contains("spec.rules[0]"), "{error}");

        let unknown = load_text(
            "apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: a}\nspec: {rulez: []}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("rulez"), "{unknown}");

        let kind = load_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nspec: {}\n")
            .unwrap_err()
            .to_string();
        assert!(kind.contains("kind ApprovalPolicy"), "{kind}");

        let twice = load_text(
            "apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: a}\nspec: {}\n---\n\
             apiVersion: mcp.airlock.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {name: a}\nspec: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(twice.contains("defined twice"), "{twice}");
    }
}
