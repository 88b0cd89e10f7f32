//! The audit trail file: JSON lines, hash-chained, appended and synced one
//! record at a time. On open the existing chain is verified and continued;
//! a broken file is refused rather than extended.

use airlock_policy::audit::{AuditEvent, Chain, ChainError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} is broken, refusing to extend it: {source}")]
    Broken { path: PathBuf, source: ChainError },
    #[error("audit log lock poisoned")]
    Poisoned,
}

pub struct AuditLog {
    path: PathBuf,
    state: Mutex<(File, Chain)>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let chain =
            Chain::resume(existing.lines().filter(|l| !l.trim().is_empty())).map_err(|source| {
                AuditError::Broken {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: Mutex::new((file, chain)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends events in order and syncs them to disk once before returning:
    /// a batch costs one sync, not one per event. The chain advances only
    /// when every line is written and synced.
    pub fn append_all(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let (file, chain) = &mut *state;
        let mut next = chain.clone();
        let mut lines = String::new();
        for event in events {
            let line = next.append(event).map_err(|source| AuditError::Broken {
                path: self.path.clone(),
                source,
            })?;
            lines.push_str(&line);
            lines.push('\n');
        }
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        file.write_all(lines.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        *chain = next;
        Ok(())
    }
}
