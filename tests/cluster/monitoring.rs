//! The dashboard and the alerts against a real Prometheus (Debian's, run on
//! the host) scraping the operator's replicas and a gateway sidecar on the
//! node during a flow: every panel's query answers, and its answer moves
//! with the flow; no alert is active at baseline, and a held call makes
//! `AirlockApprovalsWaiting` pending. (Each alert's firing over its full
//! `for` is `tests/prometheus/alerts_test.yaml`'s, under promtool.)

use crate::operator::{SERVER, call, gated_server, operator, people_token, token};
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::paths::{repo_root, tool};
use airlock_tests::process::Process;
use airlock_tests::{free_port, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const NS: &str = "monitoring";

/// Prometheus on 127.0.0.1, scraping every second, evaluating the chart's
/// alert rules every second.
struct Prometheus {
    url: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(operators: &[String], gateway: (&str, &str)) -> anyhow::Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let targets = |ips: Vec<String>| json!([{"targets": ips}]);
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [repo_root().join("charts/airlock/files/alerts.yaml")],
            "scrape_configs": [
                {"job_name": "airlock-operator",
                 "static_configs": targets(operators.iter().map(|ip| format!("{ip}:9090")).collect())},
                {"job_name": "airlock-gateways", "metrics_path": "/stats/prometheus",
                 "static_configs": [{"targets": [format!("{}:90", gateway.1)],
                                     "labels": {"namespace": NS, "pod": gateway.0}}]},
            ],
        });
        // JSON is YAML.
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string())?;
        let mut command = std::process::Command::new(tool("prometheus")?);
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let process = Process::spawn("prometheus", command, dir.path())?;
        Ok(Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
            _dir: dir,
        })
    }

    /// `expr` now: each series' labels (`__name__` left out) and value.
    async fn query(&self, expr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(answer["status"] == "success", "{expr}: {answer}");
        let mut series = BTreeMap::new();
        for sample in answer["data"]["result"].as_array().into_iter().flatten() {
            let mut labels = sample["metric"].clone();
            if let Some(labels) = labels.as_object_mut() {
                labels.remove("__name__");
            }
            let value: f64 = sample["value"][1].as_str().unwrap_or("NaN").parse()?;
            series.insert(labels.to_string(), value);
        }
        Ok(series)
    }
}

/// Every query of every panel of the dashboard, with its panel's title.
fn panel_queries() -> anyhow::Result<Vec<(String, String)>> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("charts/airlock/files/dashboard.json"),
    )?)?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                target["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    anyhow::ensure!(queries.len() >= 8, "{queries:?}");
    Ok(queries)
}

/// `(name, IP)` of each pod of `namespace` with `labels`, once all have an IP.
async fn pods(node: &Node, namespace: &str, labels: &str) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(node.client(ADMIN).await?, namespace);
    let listed = api.list(&ListParams::default().labels(labels)).await?;
    listed
        .items
        .into_iter()
        .map(|pod| {
            let name = pod.metadata.name.unwrap_or_default();
            let ip = pod.status.and_then(|s| s.pod_ip);
            ip.map(|ip| (name.clone(), ip))
                .ok_or_else(|| anyhow::anyhow!("pod {name} has no IP"))
        })
        .collect()
}

/// A JSON-RPC `tools/call` straight to the gateway pod, from the host.
async fn post(gateway_ip: &str, bearer: Option<&str>, tool: &str) -> anyhow::Result<u16> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}});
    let mut request = reqwest::Client::new()
        .post(format!("http://{gateway_ip}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    Ok(request.send().await?.status().as_u16())
}

pub async fn the_dashboard_and_alerts_read_a_real_flow(node: &Node) -> anyhow::Result<()> {
    let installed = operator(node).await?;
    gated_server(node, NS, 40).await?;
    let operators: Vec<String> = pods(
        node,
        chart::SYSTEM_NAMESPACE,
        "app.kubernetes.io/name=airlock-operator",
    )
    .await?
    .into_iter()
    .map(|(_, ip)| ip)
    .collect();
    let gateway = pods(node, NS, "mcp.airlock.dev/server")
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no gateway pod in {NS}"))?;
    let prometheus = Prometheus::start(&operators, (&gateway.0, &gateway.1))?;
    let wanted = operators.len() + 1;
    wait_for(
        "Prometheus to scrape every target",
        Duration::from_secs(60),
        || async {
            let up = prometheus.query("up == 1").await.unwrap_or_default();
            Ok((up.len() == wanted).then_some(()))
        },
    )
    .await?;

    // Baseline: a few evaluations in, no alert is even pending — but for
    // requests waiting on other tests' servers, which are.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ours = format!("{NS}/{SERVER}");
    let alerts = prometheus
        .query(&format!(
            r#"ALERTS{{alertname!="AirlockApprovalsWaiting"}} or ALERTS{{server="{ours}"}}"#
        ))
        .await?;
    anyhow::ensure!(alerts.is_empty(), "alerts at baseline: {alerts:?}");
    let queries = panel_queries()?;
    let mut before = Vec::new();
    for (_, expr) in &queries {
        before.push(prometheus.query(expr).await?);
    }
    // Gauges: up while a call is held, back at rest after.
    let gauges = ["Calls held now", "Approvals pending"];

    // The flow: allowed and denied calls, refused tokens, each in two
    // rounds a few scrapes apart (the filter defines a counter at its first
    // count, and a rate starts from the first sample Prometheus saw); a
    // held call approved, one left to expire.
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let lea = people_token(&installed.issuer, "lea", &["leads"])?;
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        post(&gateway.1, Some(&ada), "get_status").await?;
        anyhow::ensure!(post(&gateway.1, Some(&ada), "read_secret").await? == 200);
        anyhow::ensure!(post(&gateway.1, None, "get_status").await? == 401);
        anyhow::ensure!(post(&gateway.1, Some("not.a.token"), "get_status").await? == 401);
    }
    let held = call(
        node,
        NS,
        &ada,
        "deploy_model",
        json!({"model": "fraud:v12", "environment": "prod"}),
    );
    let mut waiting = BTreeMap::new();
    let decide = async {
        let id = installed
            .people
            .pending(&lea, &format!("{NS}/{SERVER}"), "deploy_model")
            .await?;
        let gauges_at_rest = queries
            .iter()
            .zip(&before)
            .filter(|((title, _), _)| gauges.contains(&title.as_str()));
        for ((title, expr), before) in gauges_at_rest {
            let at_rest: f64 = before.values().sum();
            let held = wait_for(
                &format!("panel {title:?} to show the hold"),
                Duration::from_secs(30),
                || async {
                    let now = prometheus.query(expr).await?;
                    Ok((now.values().sum::<f64>() > at_rest).then_some(now))
                },
            )
            .await?;
            eprintln!("monitoring: {title} while held: {held:?}");
        }
        waiting = wait_for(
            "AirlockApprovalsWaiting to be pending",
            Duration::from_secs(30),
            || async {
                let alerts = prometheus
                    .query(&format!(
                        r#"ALERTS{{alertname="AirlockApprovalsWaiting", alertstate="pending", server="{ours}"}}"#
                    ))
                    .await?;
                Ok((!alerts.is_empty()).then_some(alerts))
            },
        )
        .await?;
        let decided = installed
            .people
            .decide(&lea, &id, "approve", "monitored")
            .await?;
        anyhow::ensure!(decided.status().is_success(), "{}", decided.text().await?);
        Ok(())
    };
    let (answer, decided) = tokio::join!(held, decide);
    decided?;
    anyhow::ensure!(
        answer?["isError"] == false,
        "the held call was not released"
    );
    // Canary deploys wait 3 s for a decision; nobody gives one.
    let expired = call(
        node,
        NS,
        &ada,
        "deploy_model",
        json!({"model": "fraud:v12", "environment": "canary"}),
    )
    .await?;
    anyhow::ensure!(expired["isError"] == true, "{expired}");
    eprintln!("monitoring: while held, {waiting:?}");

    // Every other panel's answer moves with the flow, once scraped and evaluated.
    let quiet = [
        // A healthy flow drops no audit event; the alert's promtool test
        // and the counters' own tests cover drops.
        "Audit events dropped",
    ];
    for ((title, expr), before) in queries.iter().zip(&before) {
        if quiet.contains(&title.as_str()) || gauges.contains(&title.as_str()) {
            continue;
        }
        let now = wait_for(
            &format!("panel {title:?} to move ({expr})"),
            Duration::from_secs(30),
            || async {
                let now = prometheus.query(expr).await?;
                let moved = now != *before && now.values().any(|v| *v > 0.0);
                Ok(moved.then_some(now))
            },
        )
        .await?;
        eprintln!("monitoring: {title}: {before:?} -> {now:?}");
    }
    Ok(())
}
