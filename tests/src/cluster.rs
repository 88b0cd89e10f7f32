//! A real Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager (garbage collection, ServiceAccounts, namespace
//! cleanup), all on 127.0.0.1, with serving certificates made at start, RBAC
//! on and static-token users in groups.

use crate::paths::tool;
use crate::process::Process;
use crate::{free_port, wait_for};
use airlock_operator::crd::{ApprovalPolicy, ApprovalRequest, McpServer};
use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
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

pub const USERS: [User; 7] = [
    ADMIN,
    REQUESTER_1,
    REQUESTER_2,
    APPROVER_1,
    APPROVER_2,
    OUTSIDER,
    OPERATOR,
];

const STARTUP: Duration = Duration::from_secs(120);

pub struct Cluster {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    // Processes are declared before `dir` so they stop before it is removed.
    _controller_manager: Process,
    apiserver: Process,
    _etcd: Process,
    dir: tempfile::TempDir,
}

fn token_of(user: User) -> String {
    format!("token-{}", user.name)
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-cluster-")
            .tempdir()?;
        let root = dir.path();
        write_pki(root)?;
        write_tokens(root)?;

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
        let url = format!("https://127.0.0.1:{port}");
        let path = |name: &str| root.join(name).display().to_string();
        let mut api_cmd = Command::new(tool("kube-apiserver")?);
        api_cmd.args([
            &format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={port}"),
            &format!("--cert-dir={}", path("apiserver-certs")),
            &format!("--tls-cert-file={}", path("serving.crt")),
            &format!("--tls-private-key-file={}", path("serving.key")),
            &format!("--client-ca-file={}", path("ca.crt")),
            &format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-account-key-file={}", path("sa.pub")),
            &format!("--service-account-signing-key-file={}", path("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=0",
        ]);
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

        let cluster_kubeconfig = write_kubeconfig(root, &url, ADMIN)?;
        for user in USERS {
            write_kubeconfig(root, &url, user)?;
        }
        let mut kcm_cmd = Command::new(tool("kube-controller-manager")?);
        kcm_cmd.args([
            &format!("--kubeconfig={}", cluster_kubeconfig.display()),
            "--controllers=garbagecollector,serviceaccount,serviceaccount-token,namespace",
            "--leader-elect=false",
            "--secure-port=0",
            &format!("--service-account-private-key-file={}", path("sa.key")),
            &format!("--root-ca-file={}", path("ca.crt")),
            "--use-service-account-credentials=false",
            "--v=0",
        ]);
        let controller_manager = Process::spawn("kube-controller-manager", kcm_cmd, root)?;
        Ok(Cluster {
            url,
            _controller_manager: controller_manager,
            apiserver,
            _etcd: etcd,
            dir,
        })
    }

    /// The kubeconfig file authenticating as `user`.
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.path().join(format!("kubeconfig-{}", user.name))
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

    /// Grants [`OPERATOR`] in `namespace` exactly what the approval service's
    /// Kubernetes store needs, and nothing else.
    pub async fn grant_approval_store(&self, namespace: &str) -> anyhow::Result<()> {
        let admin = self.client(ADMIN).await?;
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "airlock-approval-store", "namespace": namespace},
        "rules": [
            {"apiGroups": ["mcp.airlock.dev"], "resources": ["approvalrequests"],
             "verbs": ["create", "get", "list", "watch"]},
            {"apiGroups": ["mcp.airlock.dev"], "resources": ["approvalrequests/status"],
             "verbs": ["update"]}
        ]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "airlock-approval-store", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "airlock-approval-store"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR.name}]});
        Api::<Role>::namespaced(admin.clone(), namespace)
            .patch("airlock-approval-store", &apply(), &Patch::Apply(role))
            .await?;
        Api::<RoleBinding>::namespaced(admin, namespace)
            .patch("airlock-approval-store", &apply(), &Patch::Apply(binding))
            .await?;
        Ok(())
    }

    /// Runs `kubectl` as `user`.
    pub fn kubectl(&self, user: User, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(tool("kubectl")?)
            .arg(format!("--kubeconfig={}", self.kubeconfig(user).display()))
            .args(args)
            .output()?)
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
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

fn http_client(root: &Path) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(root.join("ca.crt"))?)?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// A CA, the API server's serving certificate, and the ServiceAccount signing key.
fn write_pki(root: &Path) -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "airlock-test-ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut serving =
        CertificateParams::new(vec!["localhost".to_string(), "kubernetes".to_string()])?;
    serving
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

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
    let path = root.join(format!("kubeconfig-{}", user.name));
    let ca = root.join("ca.crt");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": ca}}],
        "users": [{"name": user.name, "user": {"token": token_of(user)}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user.name, "namespace": "default"}}],
        "current-context": "test",
    });
    std::fs::write(&path, serde_yaml::to_string(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
