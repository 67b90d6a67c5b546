//! The agent's state file: its generated id and, per server, what makes log
//! offsets durable (DESIGN.md): the generation, the inode of latest.log, the
//! read position, the offset of the newest entry and the last offset of the
//! previous generation. Written whole to a temporary file, fsynced, renamed
//! over the old one and the directory fsynced, only when something changed.
//! The tailer saves before it publishes, so no hub ever holds an offset the
//! file does not cover.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// A state file that cannot be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Unreadable (other than missing): the agent does not start, since it
    /// could reuse offsets a hub already holds.
    #[error("state file {0}: {1}")]
    Read(PathBuf, io::Error),
    /// Not a state file: the agent does not start (move it away to begin a
    /// new history; hubs then see `truncated`).
    #[error("state file {0} is damaged: {1} (move it away to start a new log history)")]
    Parse(PathBuf, String),
    /// Not writable: fatal at start; at run time logged, and retried on the
    /// next change.
    #[error("cannot write state file {0}: {1}")]
    Write(PathBuf, String),
}

/// Where a server's log stands (one `[servers."<id>"]` table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// Grows by one whenever latest.log is replaced or shrinks; starts at 1.
    pub generation: u64,
    /// Inode of the latest.log of this generation (0: none seen yet).
    pub inode: u64,
    /// Bytes of latest.log consumed (complete lines).
    pub position: u64,
    /// Offset of the newest entry begun (0: none).
    pub last_offset: u64,
    /// Offset of the last entry of the previous generations (0: none).
    pub prev_last: u64,
    /// Fingerprint of latest.log's first line (empty until it is complete),
    /// to tell a new file that reused the old inode.
    #[serde(default)]
    pub head: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateDoc {
    agent_id: Option<String>,
    #[serde(default)]
    servers: BTreeMap<String, LogState>,
}

/// The state file, shared by the tailers.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    doc: Mutex<StateDoc>,
}

impl StateStore {
    /// Reads the state file; a missing one is an empty state.
    ///
    /// # Errors
    /// [`StateError::Read`] or [`StateError::Parse`].
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let doc = match fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| StateError::Parse(path.to_path_buf(), e.message().replace('\n', " ")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => StateDoc::default(),
            Err(e) => return Err(StateError::Read(path.to_path_buf(), e)),
        };
        Ok(StateStore { path: path.to_path_buf(), doc: Mutex::new(doc) })
    }

    fn lock(&self) -> MutexGuard<'_, StateDoc> {
        self.doc.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's id: the configured one, else the stored one, else a new
    /// UUID, stored (and written) now.
    ///
    /// # Errors
    /// [`StateError::Write`] when a new id cannot be stored.
    pub fn agent_id(&self, configured: Option<&str>) -> Result<String, StateError> {
        if let Some(id) = configured {
            return Ok(id.to_string());
        }
        let mut doc = self.lock();
        if let Some(id) = &doc.agent_id {
            return Ok(id.clone());
        }
        let id = uuid::Uuid::new_v4().to_string();
        doc.agent_id = Some(id.clone());
        self.write(&doc)?;
        Ok(id)
    }

    /// A server's saved log state.
    pub fn log_state(&self, server: &str) -> Option<LogState> {
        self.lock().servers.get(server).cloned()
    }

    /// Saves a server's log state; writes the file only when it changed.
    ///
    /// # Errors
    /// [`StateError::Write`]; the stored copy keeps the new value, so the
    /// next save retries.
    pub fn save_log_state(&self, server: &str, state: &LogState) -> Result<(), StateError> {
        let mut doc = self.lock();
        if doc.servers.get(server) == Some(state) {
            return Ok(());
        }
        doc.servers.insert(server.to_string(), state.clone());
        self.write(&doc)
    }

    /// Writes the whole file durably: temporary file, fsync, rename, fsync of the directory.
    fn write(&self, doc: &StateDoc) -> Result<(), StateError> {
        let fail = |e: String| StateError::Write(self.path.clone(), e);
        let text = toml::to_string(doc).map_err(|e| fail(e.to_string()))?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let result = (|| {
            fs::create_dir_all(&dir)?;
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(&dir)?.sync_all()
        })();
        result.map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_generated_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        let store = StateStore::open(&path).unwrap();
        assert_eq!(store.agent_id(Some("fixed")).unwrap(), "fixed");
        assert!(!path.exists(), "a configured id is not written");
        let id = store.agent_id(None).unwrap();
        let st = LogState {
            generation: 3,
            inode: 77,
            position: 1234,
            last_offset: (3 << 40) + 1000,
            prev_last: (2 << 40) + 5,
            head: "abc".into(),
        };
        store.save_log_state("s1", &st).unwrap();
        let again = StateStore::open(&path).unwrap();
        assert_eq!(again.agent_id(None).unwrap(), id);
        assert_eq!(again.log_state("s1"), Some(st));
        assert_eq!(again.log_state("s2"), None);
        fs::write(&path, "agent_id = [").unwrap();
        let e = StateStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("damaged") && !e.contains('\n'), "{e}");
    }
}
