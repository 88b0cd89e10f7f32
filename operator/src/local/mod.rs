//! Local mode: `airlock up` runs the whole gateway on one machine, and the
//! CLI lets people mint development tokens, decide approvals and check the
//! audit trail. Everything lives under one state directory (`.airlock/`).

pub mod people;
pub mod policy_files;
pub mod up;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The tenant id of the local development issuer; no real tenant has it.
pub const LOCAL_TENANT: &str = "a1e0c0de-0000-4000-8000-00000000a1c0";
/// The audience local tokens carry and the local gateway accepts.
pub const LOCAL_AUDIENCE: &str = "api://airlock-local";

/// Where local mode keeps its files.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The development issuer's signing key (owner-only).
    pub fn issuer_key(&self) -> PathBuf {
        self.root.join("issuer/key.pem")
    }

    pub fn approvals_db(&self) -> PathBuf {
        self.root.join("approvals.db")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.jsonl")
    }

    /// Files of the running instance: endpoints, Envoy's bootstrap and log.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn endpoints_file(&self) -> PathBuf {
        self.run_dir().join("endpoints.json")
    }

    /// Holds the state directory for one `airlock up` until dropped: a
    /// second one started on it would share its store and trail and remove
    /// its endpoints file when it stopped. The lock is the kernel's
    /// (`flock`), so it goes with the process, however that ends.
    pub fn lock(&self) -> anyhow::Result<std::fs::File> {
        use anyhow::Context as _;
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(self.run_dir())
            .with_context(|| format!("creating {}", self.run_dir().display()))?;
        let path = self.run_dir().join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another airlock up (pid {}) is running on {}: stop it, or give this one its own --state-dir",
                holder.trim(),
                self.root.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(file)
    }
}

/// What `airlock up` serves, written to `run/endpoints.json` for the CLI and scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    /// The MCP endpoint clients connect to, through the gateway.
    pub gateway: String,
    /// The approval service (people's CLI, audit intake, gateway config).
    pub approvals: String,
    /// The development issuer's JWKS, when it is the trusted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    pub audit_log: PathBuf,
    /// Envoy's admin interface (stats, including the filter's metrics).
    pub envoy_admin: String,
    /// The tenant and audience the gateway accepts.
    pub tenant: String,
    pub audience: String,
}

impl Endpoints {
    pub fn read(state: &StateDir) -> anyhow::Result<Endpoints> {
        let path = state.endpoints_file();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {} ({e}): is `airlock up` running? (or pass --server URL)",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}
