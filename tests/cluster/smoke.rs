//! The node runs what the operator will render: native sidecars start first
//! and stop last, pods reach each other by IP and by Service name, `kubectl
//! logs` and `exec` work, and Envoy from the sidecar image proxies to its
//! app over 127.0.0.1 inside the pod.

use airlock_tests::node::Node;
use airlock_tests::node::images::{BUSYBOX, ENVOY, MCP_DEMO, MCP_PYTHON};
use airlock_tests::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use std::time::Duration;

/// The sidecar takes two seconds to serve; the app only starts once the
/// sidecar's startup probe passed (it checks the sidecar answers before it
/// does anything). On deletion each writes to a shared host file when it gets
/// SIGTERM: the app first, the sidecar after the app has exited.
pub async fn native_sidecar_starts_first_and_stops_last(node: &Node) -> anyhow::Result<()> {
    let ns = "smoke-sidecar";
    node.namespace(ns).await?;
    let shared = node.host_volume(ns)?;
    let order = shared.join("order");
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ordered, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 20
  initContainers:
  - name: sidecar
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    restartPolicy: Always
    command: ["/bin/sh", "-c"]
    args:
    - |
      trap 'echo sidecar-stopped >> /shared/order; exit 0' TERM
      echo sidecar-started >> /shared/order
      sleep 2
      mkdir -p /tmp/www && echo sidecar-ok > /tmp/www/index.html
      httpd -f -p 8081 -h /tmp/www &
      wait
    startupProbe: {{httpGet: {{path: /, port: 8081}}, periodSeconds: 1, failureThreshold: 60}}
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c"]
    args:
    - |
      trap 'echo app-stopped >> /shared/order; sleep 1; exit 0' TERM
      echo "app-started sidecar=$(timeout 2 wget -q -O- http://127.0.0.1:8081/)" >> /shared/order
      echo app is up
      while true; do sleep 1; done &
      wait
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  volumes:
  - {{name: shared, hostPath: {{path: {shared}, type: Directory}}}}
"#,
        shared = shared.display()
    ))?;
    node.ready_pod(ns, "ordered").await?;
    let started = std::fs::read_to_string(&order)?;
    assert_eq!(
        started.lines().collect::<Vec<_>>(),
        ["sidecar-started", "app-started sidecar=sidecar-ok"],
        "the app started before its sidecar served"
    );
    let logs = node.kubectl(
        airlock_tests::cluster::ADMIN,
        &["logs", "-n", ns, "ordered", "-c", "app"],
    )?;
    assert_eq!(String::from_utf8_lossy(&logs.stdout).trim(), "app is up");

    let pods: Api<Pod> = Api::namespaced(node.client(airlock_tests::cluster::ADMIN).await?, ns);
    pods.delete("ordered", &DeleteParams::default()).await?;
    wait_for("the pod to be gone", Duration::from_secs(90), || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("ordered").await?.is_none().then_some(())) }
    })
    .await?;
    let stopped = std::fs::read_to_string(&order)?;
    assert_eq!(
        stopped.lines().skip(2).collect::<Vec<_>>(),
        ["app-stopped", "sidecar-stopped"],
        "the sidecar stopped before the app"
    );
    Ok(())
}

/// A web pod behind a ClusterIP Service; a second pod reaches it by pod IP
/// and by the Service's DNS name (CoreDNS on the node, kube-proxy's rules).
pub async fn pods_reach_each_other_by_ip_and_service_name(node: &Node) -> anyhow::Result<()> {
    let ns = "smoke-network";
    node.namespace(ns).await?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && echo serving && exec httpd -f -p 8080 -h /tmp/www"]
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "while true; do sleep 1; done"]
"#
    ))?;
    let web = node.ready_pod(ns, "web").await?;
    node.ready_pod(ns, "client").await?;
    let web_ip = web
        .status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| anyhow::anyhow!("the web pod has no IP"))?;

    let by_ip = node
        .exec(
            ns,
            "client",
            "client",
            &[
                "timeout",
                "5",
                "wget",
                "-q",
                "-O-",
                &format!("http://{web_ip}:8080/"),
            ],
        )
        .await?;
    assert_eq!(by_ip.trim(), "hello-from-web");

    // The Service's endpoints reach kube-proxy a moment after the pod is Ready.
    let name = format!("web.{ns}.svc.cluster.local");
    let by_name = wait_for("the Service by DNS name", Duration::from_secs(60), || {
        let url = format!("http://{name}/");
        async move {
            let answer = node
                .exec(
                    ns,
                    "client",
                    "client",
                    &["timeout", "2", "wget", "-q", "-O-", &url],
                )
                .await;
            Ok(answer.ok())
        }
    })
    .await?;
    assert_eq!(by_name.trim(), "hello-from-web");

    let logs = node.kubectl(airlock_tests::cluster::ADMIN, &["logs", "-n", ns, "web"])?;
    assert_eq!(String::from_utf8_lossy(&logs.stdout).trim(), "serving");
    Ok(())
}

/// Envoy (the sidecar image) listens on the pod's port 10000 and proxies to
/// the app, which binds 127.0.0.1 only: reachable through Envoy, not directly.
pub async fn envoy_sidecar_proxies_to_its_app_over_loopback(node: &Node) -> anyhow::Result<()> {
    let ns = "smoke-envoy";
    node.namespace(ns).await?;
    let bootstrap = serde_json::json!({
        "admin": {"address": {"pipe": {"path": "/tmp/envoy-admin.sock"}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                    },
                }]}],
            }],
            "clusters": [{
                "name": "app",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]},
            }],
        },
    });
    node.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: envoy, namespace: {ns}}}
data:
  envoy.json: '{bootstrap}'
---
apiVersion: v1
kind: Pod
metadata: {{name: gated, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: envoy
    image: {ENVOY}
    imagePullPolicy: IfNotPresent
    restartPolicy: Always
    args: ["-c", "/etc/envoy/envoy.json", "--concurrency", "1", "--log-level", "warn"]
    startupProbe: {{tcpSocket: {{port: 10000}}, periodSeconds: 1, failureThreshold: 60}}
    volumeMounts: [{{name: config, mountPath: /etc/envoy}}]
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo behind-envoy > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"]
    readinessProbe: {{httpGet: {{path: /, port: 10000}}, periodSeconds: 1}}
  volumes:
  - {{name: config, configMap: {{name: envoy}}}}
"#
    ))?;
    let pod = node.ready_pod(ns, "gated").await?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| anyhow::anyhow!("the pod has no IP"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?;
    let through_envoy = http.get(format!("http://{ip}:10000/")).send().await?;
    assert_eq!(through_envoy.status(), 200);
    assert_eq!(through_envoy.text().await?.trim(), "behind-envoy");
    let direct = http.get(format!("http://{ip}:8080/")).send().await;
    assert!(
        direct.is_err(),
        "the app's loopback port answered on the pod IP: {direct:?}"
    );
    Ok(())
}

/// The MCP server images (the rmcp demo server and the Python SDK's server)
/// run as pods and answer `initialize` on their pod IP.
pub async fn mcp_server_images_answer_initialize(node: &Node) -> anyhow::Result<()> {
    let ns = "smoke-mcp";
    node.namespace(ns).await?;
    let mut manifests = String::new();
    for (name, image) in [("demo", MCP_DEMO), ("python", MCP_PYTHON)] {
        manifests.push_str(&format!(
            r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: mcp
    image: {image}
    imagePullPolicy: IfNotPresent
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
        ));
    }
    node.apply(&manifests)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let initialize = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "smoke", "version": "1"}},
    });
    for (name, server) in [("demo", "rmcp"), ("python", "airlock-test-server")] {
        let pod = node.ready_pod(ns, name).await?;
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .ok_or_else(|| anyhow::anyhow!("pod {name} has no IP"))?;
        let answer = http
            .post(format!("http://{ip}:8080/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
            .await?;
        let status = answer.status();
        let body = answer.text().await?;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            body.contains(server),
            "{name} did not name itself {server}: {body}"
        );
    }
    Ok(())
}

/// A default-deny ingress policy with one allowed port: from another pod,
/// the allowed port answers and the other does not; deleting the policy
/// opens the other port again (so the policy, not the pod, did the refusing).
pub async fn network_policy_admits_only_the_allowed_port(node: &Node) -> anyhow::Result<()> {
    let ns = "smoke-netpol";
    node.namespace(ns).await?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {ns}, labels: {{app: server}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo open > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && exec httpd -f -p 9090 -h /tmp/www"]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "while true; do sleep 1; done"]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: only-8080, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
  - ports: [{{port: 8080, protocol: TCP}}]
"#
    ))?;
    let server = node.ready_pod(ns, "server").await?;
    node.ready_pod(ns, "client").await?;
    let ip = server
        .status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| anyhow::anyhow!("the server pod has no IP"))?;
    let fetch = |port: u16| {
        let url = format!("http://{ip}:{port}/");
        async move {
            node.exec(
                ns,
                "client",
                "client",
                &["timeout", "2", "wget", "-q", "-O-", &url],
            )
            .await
        }
    };
    // The controller programs the policy a moment after the pods appear.
    wait_for(
        "port 9090 to be closed by the policy",
        Duration::from_secs(60),
        || async { Ok(fetch(9090).await.is_err().then_some(())) },
    )
    .await?;
    assert_eq!(
        fetch(8080).await?.trim(),
        "open",
        "the allowed port is closed too"
    );

    node.kubectl(
        airlock_tests::cluster::ADMIN,
        &["delete", "networkpolicy", "-n", ns, "only-8080"],
    )?;
    let reopened = wait_for(
        "port 9090 to open without the policy",
        Duration::from_secs(60),
        || async { Ok(fetch(9090).await.ok()) },
    )
    .await?;
    assert_eq!(reopened.trim(), "open");
    Ok(())
}
