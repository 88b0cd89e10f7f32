//! Where approvals live. Every change is a compare-and-set on the approval's
//! `version`, so two racing releases (or replicas, or retries) cannot both
//! spend one grant. The embedded store is a SQLite file; the Kubernetes store
//! ([`KubeStore`](super::kubernetes::KubeStore): ApprovalRequest resources,
//! `resourceVersion` as the CAS) implements the same trait.

use super::model::{Approval, Binding};
use futures::Stream;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("approval store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("approval store holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("approval store lock poisoned")]
    Poisoned,
    #[error("approval store (Kubernetes API): {0}")]
    Kube(#[from] kube::Error),
    #[error("approval {id} is stored in a form this service cannot read: {reason}")]
    Unreadable { id: String, reason: String },
    #[error("approval {0}: what was asked cannot change after the ask")]
    Immutable(String),
}

/// Persistence for approvals; implementations must make `update` atomic.
/// Asynchronous, so that a store behind a network API (the Kubernetes one)
/// implements it as naturally as the local file does.
pub trait Store: Send + Sync + 'static {
    fn insert(&self, approval: &Approval) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send;
    /// The newest approval for exactly this binding, in any state.
    fn latest_for(
        &self,
        binding: &Binding,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send;
    /// Writes `approval` if the stored version is still `expected`; false if it moved.
    fn update(
        &self,
        approval: &Approval,
        expected: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn list(&self) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send;
    /// Every approval `tid`/`oid` asked for, in any state (to cap pending asks).
    fn by_requester(
        &self,
        tid: &str,
        oid: &str,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send;
    /// Ids of approvals that other writers (another replica, `kubectl`)
    /// changed, so the service wakes the long-polls waiting on them. A store
    /// with no other writers never yields.
    fn changes(&self) -> impl Stream<Item = String> + Send + 'static;
}

/// Approvals in a SQLite file (local mode).
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS approvals (
                 id TEXT PRIMARY KEY,
                 binding_key TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS approvals_by_binding ON approvals (binding_key, created_at);",
        )?;
        Ok(SqliteStore {
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = self.connection.lock().map_err(|_| StoreError::Poisoned)?;
        f(&connection)
    }
}

fn decode(body: String) -> Result<Approval, StoreError> {
    Ok(serde_json::from_str(&body)?)
}

impl Store for SqliteStore {
    async fn insert(&self, approval: &Approval) -> Result<(), StoreError> {
        let body = serde_json::to_string(approval)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO approvals (id, binding_key, created_at, version, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![approval.id, approval.binding.key(), approval.created_at as i64, approval.version as i64, body],
            )?;
            Ok(())
        })
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let body: Option<String> = self.with(|c| {
            Ok(c.query_row(
                "SELECT body FROM approvals WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
        })?;
        body.map(decode).transpose()
    }

    async fn latest_for(&self, binding: &Binding) -> Result<Option<Approval>, StoreError> {
        let body: Option<String> = self.with(|c| {
            Ok(c.query_row(
                "SELECT body FROM approvals WHERE binding_key = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                params![binding.key()],
                |r| r.get(0),
            )
            .optional()?)
        })?;
        body.map(decode).transpose()
    }

    async fn update(&self, approval: &Approval, expected: u64) -> Result<bool, StoreError> {
        let body = serde_json::to_string(approval)?;
        self.with(|c| {
            let changed = c.execute(
                "UPDATE approvals SET version = ?1, body = ?2 WHERE id = ?3 AND version = ?4",
                params![approval.version as i64, body, approval.id, expected as i64],
            )?;
            Ok(changed == 1)
        })
    }

    async fn list(&self) -> Result<Vec<Approval>, StoreError> {
        let bodies: Vec<String> = self.with(|c| {
            let mut statement =
                c.prepare("SELECT body FROM approvals ORDER BY created_at, rowid")?;
            let rows = statement.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })?;
        bodies.into_iter().map(decode).collect()
    }

    /// A scan: local mode holds few approvals.
    async fn by_requester(&self, tid: &str, oid: &str) -> Result<Vec<Approval>, StoreError> {
        let mut approvals = self.list().await?;
        approvals.retain(|a| a.requester.tid == tid && a.requester.oid == oid);
        Ok(approvals)
    }

    /// The file has one writer, this process, which announces its own changes.
    fn changes(&self) -> impl Stream<Item = String> + Send + 'static {
        futures::stream::pending()
    }
}
