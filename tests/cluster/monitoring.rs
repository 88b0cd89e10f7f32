//! The dashboard and the alerts against a real Prometheus (Debian's, run on
//! the host) scraping the operator's replicas, a gateway sidecar on the node
//! and the API server during a flow: every panel's query answers, and its
//! answer moves with the flow; no alert is active at baseline; a held call
//! makes `AirlockApprovalsWaiting` pending, and with every operator replica
//! stopped each other alert is raised by what it watches. (Each alert's
//! firing over its full `for` is `tests/prometheus/alerts_test.yaml`'s,
//! under promtool.)

use crate::approvers::Person;
use crate::operator::{Installed, SERVER, call, gated_server, operator, people_token, token};
use airlock_tests::chart;
use airlock_tests::cluster::ADMIN;
use airlock_tests::node::Node;
use airlock_tests::paths::{repo_root, tool};
use airlock_tests::process::Process;
use airlock_tests::{free_port, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const NS: &str = "monitoring";
const OPERATOR_PODS: &str = "app.kubernetes.io/name=airlock-operator";

/// Prometheus on 127.0.0.1, scraping every second, evaluating the chart's
/// alert rules every second.
struct Prometheus {
    url: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(
        node: &Node,
        operators: &[String],
        gateway: (&str, &str),
    ) -> anyhow::Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let cluster = node.cluster();
        let apiserver = cluster
            .url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("the API server's URL: {}", cluster.url))?;
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
                {"job_name": "apiserver", "scheme": "https",
                 "tls_config": {"ca_file": cluster.ca_file()},
                 "authorization": {"credentials": cluster.bearer_token(ADMIN)},
                 "static_configs": targets(vec![apiserver.to_string()])},
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
    post_with(&reqwest::Client::new(), gateway_ip, bearer, tool).await
}

/// [`post`] on `client`'s connections.
async fn post_with(
    client: &reqwest::Client,
    gateway_ip: &str,
    bearer: Option<&str>,
    tool: &str,
) -> anyhow::Result<u16> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}});
    let mut request = client
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
    let operators: Vec<String> = pods(node, chart::SYSTEM_NAMESPACE, OPERATOR_PODS)
        .await?
        .into_iter()
        .map(|(_, ip)| ip)
        .collect();
    let gateway = pods(node, NS, "mcp.airlock.dev/server")
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no gateway pod in {NS}"))?;
    let prometheus = Prometheus::start(node, &operators, (&gateway.0, &gateway.1))?;
    let wanted = operators.len() + 2;
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
    with_no_operator_each_alert_is_raised(node, &prometheus, installed, &gateway).await
}

/// Every operator replica stopped, as after a bad upgrade: the gateway's
/// polls fail to connect, a lead's decision through the API server finds no
/// webhook to ask, and a stream of refused calls fills the gateway's audit
/// queue. Each alert watching one of those is raised; the replicas come
/// back after.
async fn with_no_operator_each_alert_is_raised(
    node: &Node,
    prometheus: &Prometheus,
    installed: &Installed,
    gateway: &(String, String),
) -> anyhow::Result<()> {
    // The webhook alert counts a failure series born within the last
    // minute only once Prometheus has watched the API server that long.
    wait_for(
        "Prometheus to have watched the API server for a minute",
        Duration::from_secs(90),
        || async {
            let watched = prometheus
                .query("count(apiserver_request_total offset 1m)")
                .await?;
            Ok((!watched.is_empty()).then_some(()))
        },
    )
    .await?;
    node.apply(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: approvers, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: airlock-approver}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: lea@contoso.com}}]
"#
    ))?;
    let ada = token(&installed.issuer, "ada", &["engineers"])?;
    let lea_people = people_token(&installed.issuer, "lea", &["leads"])?;
    let lea = Person::new(node, "lea", &["leads"])?;
    let deployments: Api<Deployment> =
        Api::namespaced(node.client(ADMIN).await?, chart::SYSTEM_NAMESPACE);
    let replicas = deployments
        .get("airlock-operator")
        .await?
        .spec
        .replicas
        .unwrap_or(1);

    // A production deploy, held; its request stays pending while no
    // replica runs to expire it.
    let held = call(
        node,
        NS,
        &ada,
        "deploy_model",
        json!({"model": "fraud:v13", "environment": "prod"}),
    );
    let outage = async {
        let id = installed
            .people
            .pending(&lea_people, &format!("{NS}/{SERVER}"), "deploy_model")
            .await?;
        chart::scale_operator(node, 0)?;
        wait_for(
            "every operator replica to be gone",
            Duration::from_secs(60),
            || async {
                let left = pods(node, chart::SYSTEM_NAMESPACE, OPERATOR_PODS).await;
                Ok(left.is_ok_and(|left| left.is_empty()).then_some(()))
            },
        )
        .await?;
        let decided = lea.airlock(NS, &["approve", &id, "--reason", "while it is down"])?;
        anyhow::ensure!(
            decided
                .as_ref()
                .is_err_and(|why| why.contains("failed calling webhook")),
            "a decision with no webhook to ask: {decided:?}"
        );
        let raised = |alert: &'static str, state: &'static str, labels: String| async move {
            let expr = format!(r#"ALERTS{{alertname="{alert}", alertstate="{state}", {labels}}}"#);
            let raised = wait_for(
                &format!("{alert} to be {state}"),
                Duration::from_secs(60),
                || async {
                    let raised = prometheus.query(&expr).await?;
                    Ok((!raised.is_empty()).then_some(raised))
                },
            )
            .await?;
            eprintln!("monitoring: with no operator, {raised:?}");
            anyhow::Ok(())
        };
        // Looked for first: a single failed call raises it for about a
        // minute (the rule's series born in the last minute), and filling
        // the audit queue can take longer than that on a loaded machine.
        raised(
            "AirlockAdmissionWebhookFailing",
            "firing",
            r#"name="approval-decisions.mcp.airlock.dev""#.to_string(),
        )
        .await?;
        let dropped = fill_the_audit_queue(prometheus, &gateway.1).await?;
        eprintln!("monitoring: with no operator, dropped audit events: {dropped:?}");
        raised("AirlockAuditEventsDropped", "firing", String::new()).await?;
        // Firing after its `for`, two minutes.
        raised(
            "AirlockGatewayCannotReachApprovalService",
            "pending",
            format!(r#"namespace="{NS}", pod="{}""#, gateway.0),
        )
        .await?;
        Ok(())
    };
    let (answer, outage) = tokio::join!(held, outage);
    let restored = chart::scale_operator(node, replicas);
    outage?;
    restored?;
    chart::operator_ready(node, Some(replicas)).await?;
    // The gateway fails closed: the held call is refused, and says why.
    let answer = answer?;
    anyhow::ensure!(
        answer["isError"] == true,
        "a held call with no service: {answer}"
    );
    eprintln!("monitoring: the held call with no service: {answer}");
    Ok(())
}

/// Refused calls (no token) until the gateway's audit queues — one per
/// worker, with the service down — overflow; the drops Prometheus saw.
async fn fill_the_audit_queue(
    prometheus: &Prometheus,
    gateway_ip: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    use futures::StreamExt;
    // Far more than two workers' queues of 10,000 events each.
    const MOST: usize = 100_000;
    const ROUND: usize = 5_000;
    let client = reqwest::Client::new();
    let mut sent = 0;
    while sent < MOST {
        let refused = futures::stream::iter(0..ROUND)
            .map(|_| post_with(&client, gateway_ip, None, "get_status"))
            .buffer_unordered(16)
            .filter(|status| std::future::ready(status.as_ref().is_ok_and(|s| *s == 401)))
            .count()
            .await;
        anyhow::ensure!(
            refused == ROUND,
            "{} of {ROUND} calls without a token were not refused",
            ROUND - refused
        );
        sent += ROUND;
        // Counted by the gateway, then scraped.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let dropped = prometheus.query("sum(airlock_audit_dropped) > 0").await?;
        if !dropped.is_empty() {
            return Ok(dropped);
        }
    }
    anyhow::bail!("{sent} refused calls with the service down dropped no audit event")
}
