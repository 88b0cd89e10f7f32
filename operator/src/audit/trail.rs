//! Writing the trail: one hash chain, appended a batch at a time to each of
//! its sinks — a file (synced before the batch counts as written) and, in a
//! cluster, standard output, where the node's log collection picks it up.
//! On open an existing file's chain is verified and continued; a broken
//! file is refused rather than extended. An event whose id was written
//! lately (a gateway's batch sent again after its answer was lost) is not
//! written twice.

use airlock_policy::audit::{AuditEvent, Chain, ChainError, Checkpoint};
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} is broken, refusing to extend it: {source}")]
    Broken { path: PathBuf, source: ChainError },
    #[error("audit record: {0}")]
    Record(ChainError),
    #[error("audit records to standard output: {0}")]
    Stdout(std::io::Error),
    #[error("the audit trail has no sink: give a file, standard output, or both")]
    NoSink,
    #[error("audit log lock poisoned")]
    Poisoned,
}

/// Where the trail's records go.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    /// A JSON-lines file, resumed if it exists.
    pub file: Option<PathBuf>,
    /// One record a line on standard output (logs go to standard error).
    pub stdout: bool,
}

struct State {
    file: Option<(PathBuf, File)>,
    chain: Chain,
    written: RecentIds,
}

/// Ids of events written lately: enough to cover any batch a gateway may
/// send again (a batch is at most 512 KiB, its queue 10,000 events).
const RECENT_IDS: usize = 100_000;

/// The last [`RECENT_IDS`] event ids written, oldest first out.
#[derive(Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Records `id`; false when it was already recorded.
    fn add(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > RECENT_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }
}

pub struct AuditLog {
    state: Mutex<State>,
    stdout: bool,
    head: watch::Sender<Option<Checkpoint>>,
}

impl AuditLog {
    /// The unnamed chain of one file (`airlock up`).
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::with_sinks(
            Chain::default(),
            Sinks {
                file: Some(path.to_path_buf()),
                stdout: false,
            },
        )
    }

    /// `fresh` is the chain to start unless the file already holds one,
    /// which is then continued under its own name.
    pub fn with_sinks(fresh: Chain, sinks: Sinks) -> Result<AuditLog, AuditError> {
        if sinks.file.is_none() && !sinks.stdout {
            return Err(AuditError::NoSink);
        }
        let mut chain = fresh;
        let mut written = RecentIds::default();
        let file = match sinks.file {
            Some(path) => {
                let (resumed, file) = open_file(&path, chain, &mut written)?;
                chain = resumed;
                Some((path, file))
            }
            None => None,
        };
        Ok(AuditLog {
            head: watch::Sender::new(head(&chain)),
            state: Mutex::new(State {
                file,
                chain,
                written,
            }),
            stdout: sinks.stdout,
        })
    }

    /// The chain's head after each batch written, for checkpoints; `None`
    /// while the chain is unnamed or empty.
    pub fn heads(&self) -> watch::Receiver<Option<Checkpoint>> {
        self.head.subscribe()
    }

    /// Appends events in order to every sink, syncing the file once before
    /// returning: a batch costs one sync, not one per event. The chain
    /// advances once any sink took the lines, so no sink ever holds two
    /// records with one `seq`; a failure of any sink is still the batch's
    /// error (counted and refused to its sender). An event whose id was
    /// written lately is skipped; returns how many were written.
    pub fn append_all(&self, events: &[AuditEvent]) -> Result<usize, AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let mut next = state.chain.clone();
        let mut lines = String::new();
        let mut ids = Vec::new();
        for event in events {
            if let Some(id) = &event.id {
                if state.written.set.contains(id) || ids.contains(&id) {
                    continue;
                }
                ids.push(id);
            }
            lines.push_str(&next.append(event).map_err(AuditError::Record)?);
            lines.push('\n');
        }
        let count = usize::try_from(next.next_seq - state.chain.next_seq).unwrap_or(usize::MAX);
        if count == 0 {
            return Ok(0);
        }
        let mut outcomes = Vec::new();
        if let Some((path, file)) = &mut state.file {
            let io = |source| AuditError::Io {
                path: path.clone(),
                source,
            };
            outcomes.push(
                file.write_all(lines.as_bytes())
                    .and_then(|()| file.sync_data())
                    .map_err(io),
            );
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            outcomes.push(
                out.write_all(lines.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(AuditError::Stdout),
            );
        }
        if outcomes.iter().any(Result::is_ok) {
            self.head.send_replace(head(&next));
            state.chain = next;
            for id in ids {
                state.written.add(id);
            }
        }
        outcomes.into_iter().collect::<Result<(), _>>()?;
        Ok(count)
    }
}

fn head(chain: &Chain) -> Option<Checkpoint> {
    Some(Checkpoint {
        chain: chain.name.clone()?,
        seq: chain.next_seq.checked_sub(1).filter(|seq| *seq > 0)?,
        hash: chain.last_hash.clone(),
    })
}

/// Opens the trail at `path`, resuming its chain (`fresh` if there is
/// none), and records the ids its records carry in `written`.
fn open_file(
    path: &Path,
    fresh: Chain,
    written: &mut RecentIds,
) -> Result<(Chain, File), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let chain = Chain::resume(fresh, existing.lines().filter(|l| !l.trim().is_empty())).map_err(
        |source| AuditError::Broken {
            path: path.to_path_buf(),
            source,
        },
    )?;
    for line in existing.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if let Some(id) = record.get("id").and_then(serde_json::Value::as_str) {
            written.add(id);
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    Ok((chain, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_policy::audit::{Input, verify_chains};

    fn event(kind: &str) -> AuditEvent {
        AuditEvent {
            time: "2026-12-02T10:00:00Z".into(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_event_sent_again_is_written_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let numbered = |id: &str| AuditEvent {
            id: Some(id.into()),
            ..event("message")
        };
        let log = AuditLog::open(&path).unwrap();
        let batch = [numbered("g-1"), numbered("g-2"), numbered("g-2")];
        assert_eq!(
            log.append_all(&batch).unwrap(),
            2,
            "a repeat within a batch"
        );
        // Events without an id (the service's own) are never taken for repeats.
        assert_eq!(log.append_all(&[event("a"), event("a")]).unwrap(), 2);
        drop(log);
        let again = AuditLog::open(&path).unwrap();
        assert_eq!(
            again
                .append_all(&[numbered("g-2"), numbered("g-3")])
                .unwrap(),
            1,
            "the batch sent again after a restart"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(airlock_policy::audit::verify(&text).unwrap(), 5);
    }

    #[test]
    fn a_named_chain_in_a_file_is_continued_under_its_name_with_its_head_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sinks = Sinks {
            file: Some(path.clone()),
            stdout: false,
        };
        let first = AuditLog::with_sinks(Chain::named("replica-a"), sinks.clone()).unwrap();
        assert_eq!(*first.heads().borrow(), None);
        first.append_all(&[event("a"), event("b")]).unwrap();
        let head = first.heads().borrow().clone().unwrap();
        assert_eq!((head.chain.as_str(), head.seq), ("replica-a", 2));
        drop(first);

        // A restart with a new name continues the file's chain, not a second one.
        let again = AuditLog::with_sinks(Chain::named("replica-b"), sinks).unwrap();
        assert_eq!(again.heads().borrow().as_ref().map(|h| h.seq), Some(2));
        again.append_all(&[event("c")]).unwrap();
        let chains =
            verify_chains(&std::fs::read_to_string(&path).unwrap(), Input::Records).unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].name.as_deref(), Some("replica-a"));
        assert_eq!(chains[0].records(), 3);
        assert_eq!(
            chains[0].check(&again.heads().borrow().clone().unwrap()),
            Ok(())
        );
    }

    #[test]
    fn a_trail_needs_somewhere_to_go() {
        assert!(matches!(
            AuditLog::with_sinks(Chain::named("x"), Sinks::default()),
            Err(AuditError::NoSink)
        ));
    }
}
