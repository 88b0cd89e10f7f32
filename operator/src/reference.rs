//! `docs/reference.md`: every field of the resources people write —
//! McpServer and ApprovalPolicy — with its type, default and meaning, taken
//! from the CRDs' schemas (which the doc comments on the Rust types become),
//! so the reference cannot say what the API server does not enforce. Written
//! by `make crds`; a test fails when the committed copy is stale.

use crate::crd::{ApprovalPolicy, McpServer};
use kube::CustomResourceExt;
use serde_json::Value;
use std::fmt::Write as _;

/// The reference, as Markdown.
pub fn markdown() -> Result<String, serde_json::Error> {
    let mut out = String::from(
        "# Resource reference\n\n\
         Generated from the CRDs by `make crds` (`airlock_operator::reference`);\n\
         do not edit. Each field's text is its doc comment in the Rust types.\n",
    );
    for (crd, intro) in [
        (
            serde_json::to_value(McpServer::crd())?,
            "An MCP server behind Airlock's gateway: the operator renders its \
             workload with the Envoy sidecar in front.",
        ),
        (
            serde_json::to_value(ApprovalPolicy::crd())?,
            "Which calls to which servers are allowed, denied or held for approval.",
        ),
    ] {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let version = crd["spec"]["versions"][0]["name"]
            .as_str()
            .unwrap_or_default();
        let _ = write!(
            out,
            "\n## {kind}\n\n`{group}/{version}`. {intro}\n\n\
             | field | type | default | description |\n| --- | --- | --- | --- |\n"
        );
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        fields(spec, "spec", &mut out);
    }
    Ok(out)
}

/// Fields of Kubernetes' own types, shown as one row each and documented
/// in Kubernetes' API reference.
const KUBERNETES_TYPES: [(&str, &str); 2] = [
    ("spec.template", "PodTemplateSpec"),
    ("spec.gateway.resources", "ResourceRequirements"),
];

/// One row per field under `schema`, depth first, named by its path.
fn fields(schema: &Value, path: &str, out: &mut String) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (name, field) in properties {
        let path = format!("{path}.{name}");
        let kubernetes = KUBERNETES_TYPES.iter().find(|(at, _)| *at == path);
        let mut kind = match kubernetes {
            Some((_, kind)) => format!("Kubernetes `{kind}`"),
            None => type_of(field),
        };
        if required.contains(&name.as_str()) {
            kind.push_str(", required");
        }
        let default = match &field["default"] {
            Value::Null => String::new(),
            value => format!("`{value}`"),
        };
        let _ = writeln!(
            out,
            "| `{path}` | {kind} | {default} | {} |",
            cell(field["description"].as_str().unwrap_or_default())
        );
        if kubernetes.is_some() {
            continue;
        }
        fields(field, &path, out);
        if field["type"] == "array" {
            fields(&field["items"], &format!("{path}[]"), out);
        }
    }
}

fn type_of(field: &Value) -> String {
    if let Some(choices) = field["enum"].as_array() {
        let choices: Vec<String> = choices
            .iter()
            .filter_map(Value::as_str)
            .map(|c| format!("`{c}`"))
            .collect();
        return format!("one of {}", choices.join(", "));
    }
    match field["type"].as_str() {
        Some("array") => format!("list of {}", type_of(&field["items"])),
        Some("object") if field["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&field["additionalProperties"]))
        }
        Some(kind) => kind.to_string(),
        None if field["x-kubernetes-preserve-unknown-fields"] == true => "any JSON".into(),
        None => "—".into(),
    }
}

/// `text` on one table line: newlines as spaces, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_reference_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let committed = std::fs::read_to_string(root.join("docs/reference.md")).unwrap_or_default();
        assert!(
            committed == markdown().unwrap(),
            "docs/reference.md is stale: run `make crds`"
        );
    }

    #[test]
    fn every_field_has_a_row_with_its_type_and_default() {
        let reference = markdown().unwrap();
        for row in [
            "| `spec.defaultAction` | one of `Allow`, `RequireApproval`, `Deny` | `\"Deny\"` |",
            "| `spec.rules[].match.arguments[].pointer` | string, required |",
            "| `spec.rules[].approval.minApprovals` | integer | `1` |",
            "| `spec.upstreamPort` |",
        ] {
            assert!(reference.contains(row), "no row {row} in\n{reference}");
        }
    }
}
