//! The chart as a platform team meets it, rendered by the pinned helm: lint
//! clean, every value in `values.yaml` documented, in `values.schema.json`
//! and used by a template, and an invalid value refused naming it.

use airlock_tests::chart::{helm, render};
use airlock_tests::paths::repo_root;
use serde_json::{Value, json};

fn chart_file(name: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(
        repo_root().join("charts/airlock").join(name),
    )?)
}

fn yaml(name: &str) -> anyhow::Result<Value> {
    Ok(serde_yaml::from_str(&chart_file(name)?)?)
}

/// The values the two CI files give: the least a team sets, and every value
/// away from its default.
fn minimal() -> anyhow::Result<Value> {
    yaml("ci/minimal-values.yaml")
}

fn full() -> anyhow::Result<Value> {
    yaml("ci/full-values.yaml")
}

/// `override_` laid over `base`, objects merged key by key.
fn merged(base: &Value, override_: &Value) -> Value {
    match (base, override_) {
        (Value::Object(base), Value::Object(over)) => {
            let mut out = base.clone();
            for (key, value) in over {
                let merged = out
                    .get(key)
                    .map_or_else(|| value.clone(), |old| merged(old, value));
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (_, over) => over.clone(),
    }
}

/// Every value's JSON pointer, walking `values` as far as the schema names
/// properties (an open object such as a volume source is one value); each
/// key the schema does not know is an error.
fn leaves(
    schema: &Value,
    values: &Value,
    at: &str,
    out: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    match (schema.get("properties"), values) {
        (Some(Value::Object(properties)), Value::Object(fields)) => {
            for (key, value) in fields {
                let path = format!("{at}/{key}");
                match properties.get(key) {
                    Some(schema) => leaves(schema, value, &path, out, unknown),
                    None => unknown.push(path),
                }
            }
        }
        _ => out.push(at.to_string()),
    }
}

fn value_pointers() -> anyhow::Result<Vec<String>> {
    let schema: Value = serde_json::from_str(&chart_file("values.schema.json")?)?;
    let (mut found, mut unknown) = (Vec::new(), Vec::new());
    leaves(&schema, &yaml("values.yaml")?, "", &mut found, &mut unknown);
    anyhow::ensure!(
        unknown.is_empty(),
        "values not in values.schema.json: {unknown:?}"
    );
    Ok(found)
}

#[test]
fn lint_is_clean_with_the_least_and_with_every_value_set() -> anyhow::Result<()> {
    for values in [minimal()?, full()?] {
        let out = helm(&["lint"], "airlock-system", &values)?;
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}");
        assert!(
            !report.contains("[WARNING]") && !report.contains("[ERROR]"),
            "{report}"
        );
    }
    Ok(())
}

#[test]
fn every_value_is_documented_in_the_schema_and_used() -> anyhow::Result<()> {
    let pointers = value_pointers()?;
    assert!(pointers.len() > 20, "{pointers:?}");

    // Documented: a `# --` comment on the value or on a key above it.
    let text = chart_file("values.yaml")?;
    let mut documented = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut comment = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            comment.push_str(trimmed);
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some((key, _)) = trimmed
            .split_once(':')
            .filter(|_| !trimmed.starts_with('-'))
        {
            stack.retain(|(depth, _)| *depth < indent);
            let parent = stack.last().map_or(String::new(), |(_, path)| path.clone());
            let path = format!("{parent}/{key}");
            if comment.contains("# --") {
                documented.push(path.clone());
            }
            stack.push((indent, path));
        }
        comment.clear();
    }
    let undocumented: Vec<&String> = pointers
        .iter()
        .filter(|p| {
            !documented
                .iter()
                .any(|d| *p == d || p.starts_with(&format!("{d}/")))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "no `# --` comment: {undocumented:?}"
    );

    // Used: with every value set, putting any one back changes what renders.
    let (defaults, minimal, full) = (yaml("values.yaml")?, minimal()?, full()?);
    let everything = render("airlock", "airlock-system", &full)?;
    for pointer in &pointers {
        let set = full
            .pointer(pointer)
            .ok_or_else(|| anyhow::anyhow!("ci/full-values.yaml does not set {pointer}"))?;
        let baseline = minimal
            .pointer(pointer)
            .or_else(|| defaults.pointer(pointer))
            .ok_or_else(|| anyhow::anyhow!("no default for {pointer}"))?;
        assert_ne!(
            set, baseline,
            "ci/full-values.yaml keeps {pointer} at its default"
        );
        let mut variant = full.clone();
        if let Some(slot) = variant.pointer_mut(pointer) {
            *slot = baseline.clone();
        }
        // A render refused for the change shows the value is read as well.
        if let Ok(rendered) = render("airlock", "airlock-system", &variant) {
            assert_ne!(
                rendered, everything,
                "{pointer} changes nothing that renders"
            );
        }
    }
    Ok(())
}

#[test]
fn an_invalid_value_fails_a_dry_run_install_naming_it() -> anyhow::Result<()> {
    let cases = [
        (json!({"replicas": 0}), "/replicas"),
        (json!({"replica": 2}), "'replica' not allowed"),
        (
            json!({"auth": {"tenants": ["contoso.onmicrosoft.com"]}}),
            "/auth/tenants/0",
        ),
        (json!({"auth": {"audiences": []}}), "/auth/audiences"),
        (json!({"image": {"envoy": "envoy:latest"}}), "/image/envoy"),
        (
            json!({"approvals": {"retention": "30 days"}}),
            "/approvals/retention",
        ),
        (
            json!({"approvers": {"objectId": "oid"}}),
            "/approvers/objectId",
        ),
        (
            json!({"notifications": {"channels": ["Leads!"]}}),
            "/notifications/channels/0",
        ),
        (
            json!({"service": {"webhookPort": 70000}}),
            "/service/webhookPort",
        ),
        (
            json!({"audit": {"stdout": false}}),
            "the audit trail would go nowhere",
        ),
        (
            json!({"tls": {"certManager": {"enabled": true}}}),
            "tls.certManager.issuerRef.name",
        ),
        (
            json!({"tls": {"certManager": {"duration": "30d"}}}),
            "/tls/certManager/duration",
        ),
    ];
    for (override_, named) in cases {
        let values = merged(&minimal()?, &override_);
        let out = helm(
            &["install", "airlock", "--dry-run=client"],
            "airlock-system",
            &values,
        )?;
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{override_} was accepted");
        assert!(error.contains(named), "{override_}: {error}");
    }
    let out = helm(
        &["install", "airlock", "--dry-run=client"],
        "airlock-system",
        &minimal()?,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The alert rules pass `promtool check rules`, and its unit tests
/// (`tests/prometheus/alerts_test.yaml`): quiet at baseline, each firing
/// when its condition holds as long as it says.
#[test]
fn the_alerts_pass_promtool_and_fire_only_when_they_should() -> anyhow::Result<()> {
    let promtool = airlock_tests::paths::tool("promtool")?;
    for args in [
        vec!["check", "rules", "charts/airlock/files/alerts.yaml"],
        vec!["test", "rules", "tests/prometheus/alerts_test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(repo_root())
            .output()?;
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
