//! A real single-node Kubernetes: the control plane of [`Cluster`] on the
//! node's address, plus kube-scheduler, containerd with runc and the CNI
//! bridge, a kubelet whose node becomes Ready, kube-proxy (iptables) and
//! CoreDNS — so what the operator renders runs as pods.
//!
//! One node per machine (kubelet and containerd own host-global state, see
//! [`host`]), shared by the tests that need it, each test in its own
//! namespace. [`Node::start`] first sweeps whatever an earlier run left;
//! [`Node::stop`] (or dropping the node) stops every process and puts the
//! host back as it was.
//!
//! Containment: pods get routes to the Service range and the node's address
//! only (no default route, no masquerading), the Service range is routed onto
//! the node's own bridge, CoreDNS answers `cluster.local` and nothing else,
//! and images are imported before any pod starts, so nothing is pulled.

pub mod host;
pub mod image;
pub mod images;
pub mod processes;

use crate::cluster::{
    ADMIN, Cluster, ControlPlane, KUBE_PROXY, KUBELET, NODE_NAME, SCHEDULER, SERVICE_RANGE, User,
};
use crate::paths::tool;
use crate::process::Process;
use crate::{free_port, wait_for};
use anyhow::Context;
use host::{NODE_IP, POD_BRIDGE, POD_RANGE, STATE_DIR};
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod, ServiceAccount};
use kube::api::Api;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(180);

pub struct Node {
    // Declared first so that the node's processes stop before the control plane.
    processes: Vec<Process>,
    cluster: Cluster,
    state: PathBuf,
    stopped: bool,
}

impl Node {
    /// Starts the node, after sweeping what an earlier run left behind.
    /// Fails with a clear reason when this machine cannot run one (not root,
    /// a part missing).
    pub async fn start() -> anyhow::Result<Node> {
        host::check_can_run()?;
        let left = host::sweep().context("cleaning up after an earlier node")?;
        if !left.is_empty() {
            anyhow::bail!(
                "an earlier node left host state that could not be restored:\n  {}",
                left.join("\n  ")
            );
        }
        let started = Instant::now();
        host::state_before()?;
        let node = Node::start_parts().await;
        if node.is_err() {
            // What started before the failure is recorded; the sweep stops it.
            let _ = host::sweep();
        }
        let node = node?;
        eprintln!("node: Ready after {:.1?}", started.elapsed());
        Ok(node)
    }

    async fn start_parts() -> anyhow::Result<Node> {
        let state = PathBuf::from(STATE_DIR);
        for dir in [
            "logs",
            "images",
            "cni/net.d",
            "cni/ipam",
            "kubelet/root",
            "kubelet/pod-logs",
        ] {
            std::fs::create_dir_all(state.join(dir))?;
        }
        host::create_node_network(SERVICE_RANGE)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context(
            "enabling IP forwarding (ClusterIP traffic is forwarded onto the pod bridge)",
        )?;

        let images = tokio::task::spawn_blocking({
            let dir = state.join("images");
            move || build_image_archives(&dir)
        });
        let cluster = Cluster::start_at(
            state.join("control-plane"),
            ControlPlane {
                address: NODE_IP,
                serves_node: true,
            },
        )
        .await?;
        for (name, pid) in cluster.processes() {
            host::record_process(name, pid)?;
        }
        let mut node = Node {
            processes: Vec::new(),
            cluster,
            state,
            stopped: false,
        };

        node.write_containerd_config()?;
        node.write_cni_config()?;
        let containerd = node.containerd_socket();
        let mut command = Command::new("containerd");
        command.args(["--config", &node.path("containerd/config.toml")]);
        node.spawn("containerd", command)?;
        wait_for("containerd", STARTUP, || {
            let ready = ctr(&containerd, &["version"]).is_ok_and(|o| o.status.success());
            async move { Ok(ready.then_some(())) }
        })
        .await?;
        for archive in images.await?? {
            let imported = ctr(
                &containerd,
                &[
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    &archive.display().to_string(),
                ],
            )?;
            if !imported.status.success() {
                anyhow::bail!(
                    "importing {}: {}",
                    archive.display(),
                    String::from_utf8_lossy(&imported.stderr)
                );
            }
        }

        let mut command = Command::new(tool("kube-scheduler")?);
        command.args([
            &format!("--kubeconfig={}", node.kubeconfig(SCHEDULER).display()),
            "--leader-elect=false",
            "--secure-port=0",
            "--v=0",
        ]);
        node.spawn("kube-scheduler", command)?;
        node.start_coredns()?;
        node.start_kubelet()?;
        node.start_kube_proxy()?;

        let admin = node.client(ADMIN).await?;
        let nodes: Api<NodeObject> = Api::all(admin.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, "default");
        wait_for("the node to become Ready", STARTUP, || {
            let nodes = nodes.clone();
            let running = node.check_running();
            async move {
                running?;
                let ready = nodes.get_opt(NODE_NAME).await?.is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                Ok(ready.then_some(()))
            }
        })
        .await?;
        // kube-router identifies its node at start: only once it is registered.
        node.start_network_policy()?;
        wait_for("the default ServiceAccount", STARTUP, || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?) }
        })
        .await?;
        Ok(node)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.cluster().kubeconfig(user)
    }

    pub async fn client(&self, user: User) -> anyhow::Result<kube::Client> {
        self.cluster().client(user).await
    }

    /// Runs `kubectl` as `user`.
    pub fn kubectl(&self, user: User, args: &[&str]) -> anyhow::Result<Output> {
        self.cluster().kubectl(user, args)
    }

    /// Creates namespace `name` for one test.
    pub async fn namespace(&self, name: &str) -> anyhow::Result<()> {
        self.cluster.namespace(name).await
    }

    /// `kubectl apply` of `manifests` as the admin.
    pub fn apply(&self, manifests: &str) -> anyhow::Result<()> {
        self.cluster.kubectl_apply(ADMIN, manifests)
    }

    /// Waits until pod `name` in `namespace` is Ready, and returns it.
    pub async fn ready_pod(&self, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client(ADMIN).await?, namespace);
        let waited = wait_for(
            &format!("pod {namespace}/{name} to be Ready"),
            STARTUP,
            || {
                let pods = pods.clone();
                async move {
                    let pod = pods.get_opt(name).await?;
                    let ready = pod.as_ref().is_some_and(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    });
                    Ok(pod.filter(|_| ready))
                }
            },
        )
        .await;
        match waited {
            Ok(pod) => Ok(pod),
            Err(e) => {
                let show = |args: &[&str]| {
                    self.kubectl(ADMIN, args)
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                };
                let described = show(&["describe", "pod", "-n", namespace, name]);
                let logs = show(&[
                    "logs",
                    "-n",
                    namespace,
                    name,
                    "--all-containers",
                    "--tail=20",
                ]);
                Err(e.context(format!("{described}\nlogs:\n{logs}")))
            }
        }
    }

    /// `kubectl exec` into `pod`'s `container`: its standard output, or an
    /// error with its standard error. Asynchronous, so a test can act while
    /// a call it made waits (a held call, say).
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(tool("kubectl")?)
            .arg(format!("--kubeconfig={}", self.kubeconfig(ADMIN).display()))
            .args(["exec", "-n", namespace, pod, "-c", container, "--"])
            .args(command)
            .kill_on_drop(true)
            .output()
            .await?;
        if !output.status.success() {
            anyhow::bail!(
                "kubectl exec {pod} -- {}: {}",
                command.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Where kubelet keeps the ConfigMap volume `volume` of the pod `uid`.
    pub fn config_map_volume(&self, uid: &str, volume: &str) -> PathBuf {
        self.state
            .join("kubelet/root/pods")
            .join(uid)
            .join("volumes/kubernetes.io~configmap")
            .join(volume)
    }

    /// A directory on the host that pods of `namespace` can mount as a
    /// `hostPath` (it goes with the node).
    pub fn host_volume(&self, namespace: &str) -> anyhow::Result<PathBuf> {
        let dir = self.state.join("volumes").join(namespace);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Stops every process and puts the host back; returns how it still
    /// differs from before the node started (empty when fully restored).
    pub fn stop(&mut self) -> anyhow::Result<Vec<String>> {
        self.stopped = true;
        for process in self.processes.iter_mut().rev() {
            process.kill();
        }
        self.cluster.kill();
        host::sweep()
    }

    /// Fails, with the end of its log, when a node process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            process.check_running()?;
        }
        self.cluster.check_running()
    }

    fn path(&self, relative: &str) -> String {
        self.state.join(relative).display().to_string()
    }

    fn containerd_socket(&self) -> PathBuf {
        self.state.join("containerd/containerd.sock")
    }

    fn spawn(&mut self, name: &str, command: Command) -> anyhow::Result<()> {
        let process = Process::spawn(name, command, &self.state.join("logs"))?;
        host::record_process(name, process.pid())?;
        self.processes.push(process);
        Ok(())
    }

    fn write_containerd_config(&self) -> anyhow::Result<()> {
        let s = |p: &str| self.path(p);
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # root here lacks CAP_SYS_RESOURCE: runc cannot set the sandbox's oom_score_adj otherwise
  restrict_oom_score_adj = true
  # As containerd 2 does by default (AKS included): every pod starts with
  # net.ipv4.ip_unprivileged_port_start=0, so any UID may bind any port
  # unless the pod sets the sysctl back.
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
            root = s("containerd/root"),
            state = s("containerd/state"),
            socket = self.containerd_socket().display(),
            opt = s("containerd/opt"),
            pause = images::PAUSE,
            runc = s("containerd/runc"),
            cni = s("cni/net.d"),
        );
        std::fs::create_dir_all(self.state.join("containerd"))?;
        std::fs::write(self.state.join("containerd/config.toml"), config)?;
        Ok(())
    }

    /// The pod network: a bridge, addresses from [`POD_RANGE`], and routes to
    /// the Service range and the node only.
    fn write_cni_config(&self) -> anyhow::Result<()> {
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "airlock",
            "plugins": [{
                "type": "bridge",
                "bridge": POD_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.path("cni/ipam"),
                    "ranges": [[{"subnet": POD_RANGE}]],
                    "routes": [{"dst": SERVICE_RANGE}, {"dst": format!("{NODE_IP}/32")}],
                },
            }],
        });
        std::fs::write(
            self.state.join("cni/net.d/10-airlock.conflist"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        Ok(())
    }

    /// CoreDNS on the node's address: `cluster.local` and the reverse zones
    /// from the API server, no `forward`, so no query leaves the machine.
    fn start_coredns(&mut self) -> anyhow::Result<()> {
        let corefile = format!(
            ".:53 {{\n    bind {NODE_IP}\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {} test\n        pods insecure\n    }}\n    cache 5\n}}\n",
            self.kubeconfig(ADMIN).display()
        );
        std::fs::write(self.state.join("Corefile"), corefile)?;
        let mut command = Command::new(tool("coredns")?);
        command.args(["-conf", &self.path("Corefile")]);
        self.spawn("coredns", command)
    }

    fn start_kubelet(&mut self) -> anyhow::Result<()> {
        std::fs::write(self.state.join("kubelet/resolv.conf"), "")?;
        let config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // The machines this runs on have cgroup v1.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket().display()),
            "address": NODE_IP.to_string(),
            "port": free_port()?,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port()?,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": self.cluster().ca_file()},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "clusterDNS": [NODE_IP.to_string()],
            "resolvConf": self.path("kubelet/resolv.conf"),
            "podLogsDir": self.path("kubelet/pod-logs"),
            "volumePluginDir": self.path("kubelet/volume-plugins"),
            "failSwapOn": false,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
            "maxPods": 60,
            // ConfigMap volumes follow their objects on each pod sync: every
            // 10 s instead of every minute, so a CA rotation's overlap in
            // the tests can be short.
            "syncFrequency": "10s",
            "serializeImagePulls": false,
        });
        std::fs::write(
            self.state.join("kubelet/config.yaml"),
            serde_yaml::to_string(&config)?,
        )?;
        let mut command = Command::new(tool("kubelet")?);
        command.args([
            &format!("--config={}", self.path("kubelet/config.yaml")),
            &format!("--kubeconfig={}", self.kubeconfig(KUBELET).display()),
            &format!("--root-dir={}", self.path("kubelet/root")),
            &format!("--cert-dir={}", self.path("kubelet/certs")),
            &format!("--hostname-override={NODE_NAME}"),
            &format!("--node-ip={NODE_IP}"),
            "--v=0",
        ]);
        self.spawn("kubelet", command)
    }

    fn start_kube_proxy(&mut self) -> anyhow::Result<()> {
        let config = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.kubeconfig(KUBE_PROXY)},
            "mode": "iptables",
            "clusterCIDR": POD_RANGE,
            "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": format!("127.0.0.1:{}", free_port()?),
            "metricsBindAddress": format!("127.0.0.1:{}", free_port()?),
            "nodePortAddresses": [format!("{NODE_IP}/32")],
            "iptables": {"localhostNodePorts": false},
            // Leave the host's conntrack limits and timeouts alone.
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        });
        std::fs::write(
            self.state.join("kube-proxy.yaml"),
            serde_yaml::to_string(&config)?,
        )?;
        let mut command = Command::new(tool("kube-proxy")?);
        command.args([
            &format!("--config={}", self.path("kube-proxy.yaml")),
            "--v=0",
        ]);
        self.spawn("kube-proxy", command)
    }

    /// kube-router's NetworkPolicy controller (iptables + ipset on the CNI
    /// bridge) and nothing else of it: no BGP, no service proxy.
    fn start_network_policy(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(tool("kube-router")?);
        command.args([
            &format!("--kubeconfig={}", self.kubeconfig(ADMIN).display()),
            &format!("--hostname-override={NODE_NAME}"),
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--run-loadbalancer=false",
            "--enable-ipv6=false",
            &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--health-port=0",
            "--metrics-port=0",
            "--iptables-sync-period=5m",
            "--v=1",
        ]);
        self.spawn("kube-router", command)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.stopped {
            match self.stop() {
                Ok(left) if left.is_empty() => {}
                Ok(left) => eprintln!("node: host state not restored:\n  {}", left.join("\n  ")),
                Err(e) => eprintln!("node: cleanup failed: {e:#}"),
            }
        }
    }
}

fn ctr(socket: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .context("running ctr (containerd's client, installed by make setup)")
}

/// Writes every image of [`images::all`] as an archive under `dir`.
fn build_image_archives(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let started = Instant::now();
    let mut archives = Vec::new();
    for image in images::all(dir)? {
        let name = image
            .reference
            .rsplit('/')
            .next()
            .unwrap_or(&image.reference)
            .replace(':', "_");
        let archive = dir.join(format!("{name}.tar"));
        image.write_archive(&archive)?;
        archives.push(archive);
    }
    eprintln!("node: images built in {:.1?}", started.elapsed());
    Ok(archives)
}
