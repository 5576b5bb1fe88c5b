//! The crash-safe store: a redb file holding a log of applied commands and a snapshot.
//!
//! ```text
//!   state.redb
//!   ├── log      : index (u64) -> Command (JSON)       appended, fsynced per write
//!   └── meta     : "snapshot" -> State (JSON), "snapshot_index" -> u64, "local" -> local config
//! ```
//!
//! `apply` checks a command against a copy of the state first, so a command that fails
//! is never logged; then it appends the command and commits (redb's default durability
//! fsyncs before returning), and only then publishes the new state. An acknowledged
//! write is therefore on disk, and a `kill -9` at any moment loses nothing acknowledged.
//! Every [`COMPACT_EVERY`] entries the state is written as a snapshot and the log is
//! truncated in the same transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::Mutex;

use crate::{Command, State, StateError};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Log entries kept before a snapshot replaces them.
pub const COMPACT_EVERY: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("State database error: {0}")]
    Db(String),
    #[error("State database is corrupt: {0}")]
    Corrupt(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The store: replicated state plus this member's local configuration.
pub struct Store {
    db: Database,
    state: ArcSwap<State>,
    local: ArcSwap<BTreeMap<String, String>>,
    /// Serialises writers; readers never wait.
    writer: Mutex<u64>,
}

impl Store {
    /// Opens (or creates) the store at `path`, replaying the log over the snapshot.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;

        let read = db.begin_read()?;
        let meta = read.open_table(META)?;
        let mut state: State = match meta.get("snapshot")? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => State::default(),
        };
        let local: BTreeMap<String, String> = match meta.get("local")? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => BTreeMap::new(),
        };
        let log = read.open_table(LOG)?;
        let mut last = match meta.get("snapshot_index")? {
            Some(v) => decode_index(v.value())?,
            None => 0,
        };
        for entry in log.range(last + 1..)? {
            let (k, v) = entry?;
            let cmd: Command =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // Only commands that applied cleanly are logged, so replay cannot fail;
            // if it does the file was altered, and we refuse to guess.
            state.apply(&cmd)?;
            last = k.value();
        }
        drop((log, meta, read));
        Ok(Store {
            db,
            state: ArcSwap::from_pointee(state),
            local: ArcSwap::from_pointee(local),
            writer: Mutex::new(last),
        })
    }

    /// The current state: a snapshot that never changes under the reader.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// This member's local configuration.
    pub fn local(&self) -> Arc<BTreeMap<String, String>> {
        self.local.load_full()
    }

    /// Applies a command durably. Returns once it is on disk and visible to readers.
    pub async fn apply(&self, cmd: Command) -> Result<Arc<State>, StoreError> {
        let mut index = self.writer.lock().await;
        let mut next = (*self.state.load_full()).clone();
        next.apply(&cmd)?;
        let bytes = serde_json::to_vec(&cmd).expect("commands serialize");
        let new_index = *index + 1;
        let snapshot =
            (new_index % COMPACT_EVERY == 0).then(|| serde_json::to_vec(&next).expect("state serializes"));
        let txn = self.db.begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            log.insert(new_index, bytes.as_slice())?;
            if let Some(snap) = &snapshot {
                let mut meta = txn.open_table(META)?;
                meta.insert("snapshot", snap.as_slice())?;
                meta.insert("snapshot_index", new_index.to_be_bytes().as_slice())?;
                log.retain_in(..=new_index, |_, _| false)?;
            }
        }
        txn.commit()?;
        *index = new_index;
        let next = Arc::new(next);
        self.state.store(next.clone());
        tracing::debug!(command = cmd.name(), index = new_index, "state applied");
        Ok(next)
    }

    /// Replaces local configuration keys (an empty value unsets), durably.
    pub async fn set_local(&self, changes: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let _guard = self.writer.lock().await;
        let mut next = (*self.local.load_full()).clone();
        for (k, v) in changes {
            if v.is_empty() {
                next.remove(k);
            } else {
                next.insert(k.clone(), v.clone());
            }
        }
        let bytes = serde_json::to_vec(&next).expect("maps serialize");
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("local", bytes.as_slice())?;
        txn.commit()?;
        self.local.store(Arc::new(next));
        Ok(())
    }
}

fn decode_index(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("bad snapshot index".into()))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Command {
        Command::SetConfig {
            changes: [(k.to_string(), v.to_string())].into(),
        }
    }

    #[tokio::test]
    async fn writes_survive_reopen_across_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            for i in 0..(COMPACT_EVERY + 10) {
                store.apply(set(&format!("k{i}"), "v")).await.unwrap();
            }
            store
                .set_local(&[("core.https_address".to_string(), "127.0.0.1:8443".to_string())].into())
                .await
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.state().config.len() as u64, COMPACT_EVERY + 10);
        assert_eq!(store.local()["core.https_address"], "127.0.0.1:8443");
        store.apply(set("after", "reopen")).await.unwrap();
        drop(store);
        assert_eq!(Store::open(&path).unwrap().state().config["after"], "reopen");
    }

    #[tokio::test]
    async fn rejected_command_is_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&path).unwrap();
        let err = store
            .apply(Command::DeleteCertificate {
                fingerprint: "nope".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::State(StateError::CertificateNotFound)));
        drop(store);
        assert_eq!(*Store::open(&path).unwrap().state(), State::default());
    }
}
