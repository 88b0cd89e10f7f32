//! A real Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager, with serving certificates made at start, RBAC on
//! and static-token users in groups.
//!
//! [`Cluster::start`] runs it on 127.0.0.1 with the controllers the API-only
//! tests need (garbage collection, ServiceAccounts, namespace cleanup);
//! [`crate::node::Node`] runs it on the node's address with every controller,
//! so that pods reach it through the `kubernetes` Service.

use crate::guard::Guard;
use crate::paths::tool;
use crate::process::Process;
use crate::{free_port, wait_for};
use airlock_operator::crd::{ApprovalPolicy, ApprovalRequest, McpServer};
use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A user of the test cluster, authenticated by a static bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// Group whose members may approve (bound by tests that need it).
pub const APPROVERS_GROUP: &str = "airlock:approvers";
/// Group whose members call MCP servers.
pub const REQUESTERS_GROUP: &str = "airlock:requesters";

pub const ADMIN: User = User {
    name: "admin",
    groups: &["system:masters"],
};
pub const REQUESTER_1: User = User {
    name: "requester-1",
    groups: &[REQUESTERS_GROUP],
};
pub const REQUESTER_2: User = User {
    name: "requester-2",
    groups: &[REQUESTERS_GROUP],
};
pub const APPROVER_1: User = User {
    name: "approver-1",
    groups: &[APPROVERS_GROUP],
};
pub const APPROVER_2: User = User {
    name: "approver-2",
    groups: &[APPROVERS_GROUP],
};
pub const OUTSIDER: User = User {
    name: "outsider",
    groups: &[],
};
/// Stands in for the operator's ServiceAccount: granted only what tests bind.
pub const OPERATOR: User = User {
    name: "airlock-operator",
    groups: &[],
};

/// The name of the harness's node.
pub const NODE_NAME: &str = "airlock-node";
/// The kubelet, as the Node authorizer knows it.
pub const KUBELET: User = User {
    name: "system:node:airlock-node",
    groups: &["system:nodes"],
};
/// Bound by the API server's bootstrap RBAC.
pub const SCHEDULER: User = User {
    name: "system:kube-scheduler",
    groups: &[],
};
/// Bound by the API server's bootstrap RBAC; each controller then acts as
/// its own ServiceAccount in kube-system (`--use-service-account-credentials`,
/// as on AKS), so admission sees `system:serviceaccount:kube-system:replicaset-controller`
/// create pods.
pub const CONTROLLER_MANAGER: User = User {
    name: "system:kube-controller-manager",
    groups: &[],
};
/// Bound by the API server's bootstrap RBAC (`system:node-proxier`).
pub const KUBE_PROXY: User = User {
    name: "system:kube-proxy",
    groups: &[],
};

pub const USERS: [User; 11] = [
    ADMIN,
    REQUESTER_1,
    REQUESTER_2,
    APPROVER_1,
    APPROVER_2,
    OUTSIDER,
    OPERATOR,
    KUBELET,
    SCHEDULER,
    KUBE_PROXY,
    CONTROLLER_MANAGER,
];

/// Where the control plane listens and whom it serves.
#[derive(Debug, Clone, Copy)]
pub struct ControlPlane {
    /// The API server's bind and advertised address.
    pub address: Ipv4Addr,
    /// Serve a kubelet: Node authorization, the client certificate for
    /// logs/exec/port-forward, the `kubernetes` Service's endpoint, and every
    /// controller (Deployments, EndpointSlices, …).
    pub serves_node: bool,
}

impl ControlPlane {
    /// API only, on 127.0.0.1.
    pub const LOOPBACK: ControlPlane = ControlPlane {
        address: Ipv4Addr::LOCALHOST,
        serves_node: false,
    };
}

const STARTUP: Duration = Duration::from_secs(120);

pub struct Cluster {
    /// `https://ADDRESS:PORT`
    pub url: String,
    // Processes are declared before `dir` so they stop before it is removed.
    controller_manager: Process,
    apiserver: Process,
    etcd: Process,
    guard: Guard,
    dir: ClusterDir,
}

/// Where the control plane keeps its files: a temporary directory removed on
/// drop, or one its owner (the node) manages.
enum ClusterDir {
    Temporary(tempfile::TempDir),
    Owned(PathBuf),
}

impl ClusterDir {
    fn path(&self) -> &Path {
        match self {
            ClusterDir::Temporary(dir) => dir.path(),
            ClusterDir::Owned(path) => path,
        }
    }
}

/// The Service range: kube-apiserver allocates ClusterIPs from it, and the
/// node routes it onto its own bridge.
pub const SERVICE_RANGE: &str = "10.96.0.0/16";

const AUDIT_POLICY: &str = "audit-policy.yaml";
const AUDIT_LOG: &str = "audit.log";

/// The API server's audit policy: every write, at Metadata level, once it
/// is answered; reads are not recorded.
const WRITES_ONLY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted, Panic]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
"#;

fn token_of(user: User) -> String {
    format!("token-{}", user.name.replace(':', "-"))
}

fn kubeconfig_name(user: User) -> String {
    format!("kubeconfig-{}", user.name.replace(':', "-"))
}

impl Cluster {
    /// An API-only control plane on 127.0.0.1, in a temporary directory.
    pub async fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-cluster-")
            .tempdir()?;
        Cluster::start_in(ClusterDir::Temporary(dir), ControlPlane::LOOPBACK).await
    }

    /// A control plane as `plane` says, keeping its files in `dir`.
    pub async fn start_at(dir: PathBuf, plane: ControlPlane) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&dir)?;
        Cluster::start_in(ClusterDir::Owned(dir), plane).await
    }

    async fn start_in(dir: ClusterDir, plane: ControlPlane) -> anyhow::Result<Cluster> {
        let root = dir.path();
        write_pki(root, plane.address)?;
        write_tokens(root)?;
        std::fs::write(root.join(AUDIT_POLICY), WRITES_ONLY)?;
        let guard = Guard::start(crate::issuer::TENANT, root)?;

        let etcd_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let mut etcd_cmd = Command::new(tool("etcd")?);
        etcd_cmd.args([
            "--name=default",
            &format!("--data-dir={}", root.join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=default={peer_url}"),
            "--listen-metrics-urls=",
            "--log-level=warn",
            "--unsafe-no-fsync",
        ]);
        let etcd = Process::spawn("etcd", etcd_cmd, root)?;

        let port = free_port()?;
        let address = plane.address;
        let url = format!("https://{address}:{port}");
        let path = |name: &str| root.join(name).display().to_string();
        let mut api_cmd = Command::new(tool("kube-apiserver")?);
        api_cmd.args([
            &format!("--etcd-servers={etcd_url}"),
            &format!("--bind-address={address}"),
            &format!("--advertise-address={address}"),
            &format!("--secure-port={port}"),
            &format!("--cert-dir={}", path("apiserver-certs")),
            &format!("--tls-cert-file={}", path("serving.crt")),
            &format!("--tls-private-key-file={}", path("serving.key")),
            &format!("--client-ca-file={}", path("ca.crt")),
            &format!("--token-auth-file={}", path("tokens.csv")),
            &format!(
                "--authentication-token-webhook-config-file={}",
                guard.webhook_config().display()
            ),
            "--authentication-token-webhook-version=v1",
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-account-key-file={}", path("sa.pub")),
            &format!("--service-account-signing-key-file={}", path("sa.key")),
            &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=0",
            &format!("--audit-policy-file={}", path(AUDIT_POLICY)),
            &format!("--audit-log-path={}", path(AUDIT_LOG)),
            "--audit-log-format=json",
            // Written as requests complete, so a test reads what just happened.
            "--audit-log-mode=blocking",
        ]);
        if plane.serves_node {
            api_cmd.args([
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=lease",
                &format!(
                    "--kubelet-client-certificate={}",
                    path("kubelet-client.crt")
                ),
                &format!("--kubelet-client-key={}", path("kubelet-client.key")),
                "--kubelet-preferred-address-types=InternalIP",
            ]);
        } else {
            api_cmd.args([
                "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",
            ]);
        }
        let mut apiserver = Process::spawn("kube-apiserver", api_cmd, root)?;

        let http = http_client(root)?;
        let readyz = format!("{url}/readyz");
        let admin_token = token_of(ADMIN);
        wait_for("kube-apiserver /readyz", STARTUP, || {
            let probe = http.get(&readyz).bearer_auth(&admin_token).send();
            let running = apiserver.check_running();
            async move {
                running?;
                Ok(match probe.await {
                    Ok(response) if response.status().is_success() => Some(()),
                    _ => None,
                })
            }
        })
        .await?;

        let controller_manager_kubeconfig = write_kubeconfig(root, &url, CONTROLLER_MANAGER)?;
        for user in USERS {
            write_kubeconfig(root, &url, user)?;
        }
        let controllers = if plane.serves_node {
            "--controllers=*"
        } else {
            "--controllers=garbagecollector,serviceaccount,serviceaccount-token,namespace"
        };
        let mut kcm_cmd = Command::new(tool("kube-controller-manager")?);
        kcm_cmd.args([
            &format!("--kubeconfig={}", controller_manager_kubeconfig.display()),
            controllers,
            "--allocate-node-cidrs=false",
            "--leader-elect=false",
            "--secure-port=0",
            &format!("--service-account-private-key-file={}", path("sa.key")),
            &format!("--root-ca-file={}", path("ca.crt")),
            "--use-service-account-credentials=true",
            "--v=0",
        ]);
        let controller_manager = Process::spawn("kube-controller-manager", kcm_cmd, root)?;
        Ok(Cluster {
            url,
            controller_manager,
            apiserver,
            etcd,
            guard,
            dir,
        })
    }

    /// The control plane's processes, by name and PID.
    pub fn processes(&self) -> [(&str, u32); 3] {
        [
            ("etcd", self.etcd.pid()),
            ("kube-apiserver", self.apiserver.pid()),
            ("kube-controller-manager", self.controller_manager.pid()),
        ]
    }

    /// Fails, with the end of its log, when a control-plane process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.etcd.check_running()?;
        self.apiserver.check_running()?;
        self.controller_manager.check_running()
    }

    /// Kills the control plane now (its files stay).
    pub fn kill(&mut self) {
        self.controller_manager.kill();
        self.apiserver.kill();
        self.etcd.kill();
    }

    /// The directory holding the PKI, tokens and kubeconfigs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every write the API server received, one JSON audit event a line
    /// (`audit.k8s.io/v1` Event, stage `ResponseComplete`, level Metadata):
    /// who (with the pod of a ServiceAccount token in `user.extra`), what,
    /// when, and the answer's code.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join(AUDIT_LOG)
    }

    /// The CA that signs the API server's (and the kubelet client's) certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The kubeconfig file authenticating as `user`.
    /// Who authenticates people with Entra tokens, as on AKS.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// A kubeconfig (named `name`) that presents `token`: a person's own
    /// kubectl token, as [`Guard::token`] mints one.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        write_kubeconfig_at(
            &self.dir().join(format!("kubeconfig-{name}")),
            &self.url,
            name,
            token,
            &self.ca_file(),
        )
    }

    /// The bearer token `user` presents (from the API server's token file).
    pub fn bearer_token(&self, user: User) -> String {
        token_of(user)
    }

    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.path().join(kubeconfig_name(user))
    }

    /// A client acting as `user`.
    pub async fn client(&self, user: User) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig(user)).await
    }

    /// Installs Airlock's CRDs (as generated from the Rust types) and waits
    /// until the API server serves them.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        use kube::CustomResourceExt;
        let crds: Api<CustomResourceDefinition> = Api::all(self.client(ADMIN).await?);
        for crd in [
            McpServer::crd(),
            ApprovalPolicy::crd(),
            ApprovalRequest::crd(),
        ] {
            let name = crd.name_any();
            crds.patch(&name, &apply(), &Patch::Apply(&crd)).await?;
            let established = kube::runtime::wait::await_condition(
                crds.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            );
            tokio::time::timeout(STARTUP, established).await??;
        }
        Ok(())
    }

    /// Creates (or keeps) namespace `name`.
    pub async fn namespace(&self, name: &str) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client(ADMIN).await?);
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        namespaces
            .patch(name, &apply(), &Patch::Apply(namespace))
            .await?;
        Ok(())
    }

    /// Grants [`OPERATOR`] exactly what the approval service's Kubernetes
    /// store needs, and nothing else: in `namespace`, or (`None`) in every
    /// namespace, as the chart does when requests live beside their servers.
    pub async fn grant_approval_store(&self, namespace: Option<&str>) -> anyhow::Result<()> {
        let name = "airlock-approval-store";
        let rules = json!([
            {"apiGroups": ["mcp.airlock.dev"], "resources": ["approvalrequests"],
             "verbs": ["create", "get", "list", "watch"]},
            {"apiGroups": ["mcp.airlock.dev"], "resources": ["approvalrequests/status"],
             "verbs": ["update"]}
        ]);
        let (role_kind, binding_kind) = match namespace {
            Some(_) => ("Role", "RoleBinding"),
            None => ("ClusterRole", "ClusterRoleBinding"),
        };
        let metadata = match namespace {
            Some(namespace) => json!({"name": name, "namespace": namespace}),
            None => json!({"name": name}),
        };
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind,
            "metadata": metadata, "rules": rules});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind,
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR.name}]});
        let admin = self.client(ADMIN).await?;
        match namespace {
            Some(namespace) => {
                Api::<Role>::namespaced(admin.clone(), namespace)
                    .patch(name, &apply(), &Patch::Apply(role))
                    .await?;
                Api::<RoleBinding>::namespaced(admin, namespace)
                    .patch(name, &apply(), &Patch::Apply(binding))
                    .await?;
            }
            None => {
                Api::<ClusterRole>::all(admin.clone())
                    .patch(name, &apply(), &Patch::Apply(role))
                    .await?;
                Api::<ClusterRoleBinding>::all(admin)
                    .patch(name, &apply(), &Patch::Apply(binding))
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs `kubectl` as `user`.
    pub fn kubectl(&self, user: User, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(tool("kubectl")?)
            .arg(format!("--kubeconfig={}", self.kubeconfig(user).display()))
            .args(args)
            .output()?)
    }

    /// `kubectl apply --server-side -f -` of `manifests` (YAML,
    /// `---`-separated) as `user`; fails with kubectl's message. Server-side,
    /// because a CRD with a pod template's schema is too large for the
    /// client-side annotation.
    pub fn kubectl_apply(&self, user: User, manifests: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new(tool("kubectl")?)
            .arg(format!("--kubeconfig={}", self.kubeconfig(user).display()))
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=airlock-tests",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(manifests.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            anyhow::bail!(
                "kubectl apply as {}: {}",
                user.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// The end of the API server's log, for failure messages.
    pub fn apiserver_log(&self) -> String {
        self.apiserver.log_tail()
    }
}

/// Server-side apply as the tests' field manager.
pub fn apply() -> PatchParams {
    PatchParams::apply("airlock-tests").force()
}

/// A client configured by the kubeconfig file at `path`.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    client_impersonating(path, None).await
}

/// A client from kubeconfig `path` acting as `identity` (which that user
/// must be allowed to impersonate), or as itself.
pub async fn client_impersonating(
    path: &Path,
    identity: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.auth_info.impersonate = identity.map(str::to_string);
    Ok(kube::Client::try_from(config)?)
}

fn http_client(root: &Path) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(root.join("ca.crt"))?)?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// A CA, the API server's serving certificate (for `address` and the
/// `kubernetes` Service), its client certificate for kubelets, and the
/// ServiceAccount signing key.
fn write_pki(root: &Path, address: Ipv4Addr) -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "airlock-test-ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    // The first address of the Service range is the `kubernetes` Service.
    for ip in [Ipv4Addr::LOCALHOST, address, Ipv4Addr::new(10, 96, 0, 1)] {
        serving
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(IpAddr::V4(ip)));
    }
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    // Kubelets trust the CA, and authorize this identity for logs/exec.
    let mut kubelet_client = CertificateParams::new(Vec::<String>::new())?;
    kubelet_client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    kubelet_client
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    kubelet_client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let kubelet_client_key = KeyPair::generate()?;
    let kubelet_client_cert = kubelet_client.signed_by(&kubelet_client_key, &ca)?;
    std::fs::write(root.join("kubelet-client.crt"), kubelet_client_cert.pem())?;
    std::fs::write(
        root.join("kubelet-client.key"),
        kubelet_client_key.serialize_pem(),
    )?;

    std::fs::write(root.join("ca.crt"), ca.pem())?;
    std::fs::write(root.join("serving.crt"), serving_cert.pem())?;
    std::fs::write(root.join("serving.key"), serving_key.serialize_pem())?;
    let service_accounts = KeyPair::generate()?;
    std::fs::write(root.join("sa.key"), service_accounts.serialize_pem())?;
    std::fs::write(root.join("sa.pub"), service_accounts.public_key_pem())?;
    Ok(())
}

/// The static token file: `token,user,uid,"group1,group2"`.
fn write_tokens(root: &Path) -> anyhow::Result<()> {
    let lines: Vec<String> = USERS
        .iter()
        .map(|u| {
            format!(
                "{},{},uid-{},\"{}\"",
                token_of(*u),
                u.name,
                u.name,
                u.groups.join(",")
            )
        })
        .collect();
    std::fs::write(root.join("tokens.csv"), lines.join("\n") + "\n")?;
    Ok(())
}

fn write_kubeconfig(root: &Path, url: &str, user: User) -> anyhow::Result<PathBuf> {
    write_kubeconfig_at(
        &root.join(kubeconfig_name(user)),
        url,
        user.name,
        &token_of(user),
        &root.join("ca.crt"),
    )
}

fn write_kubeconfig_at(
    path: &Path,
    url: &str,
    user: &str,
    token: &str,
    ca: &Path,
) -> anyhow::Result<PathBuf> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": "default"}}],
        "current-context": "test",
    });
    std::fs::write(path, serde_yaml::to_string(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}
