//! The Raft glue: openraft over a redb log, the state machine, and a network adapter
//! over an [`Rpc`] transport that the server implements.
//!
//! ```text
//!   Store::apply(cmd) ──leader?──yes──> raft.client_write ──replicate (Rpc)──> followers
//!          │                                    │ commit (quorum fsynced)
//!          no ──Rpc::call(leader, Write)────────┘ apply on every member: State::apply
//!                                                 └─> publish Arc<State>
//! ```
//!
//! Architecture invariant: this module is the only place that names openraft types.

// openraft's trait signatures fix the (large) storage error type; boxing it here
// would only add conversions at every call.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::io::{Seek, SeekFrom};
use std::ops::RangeBounds;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftNetwork, RaftNetworkFactory,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::{Command, State, StateError};

openraft::declare_raft_types!(
    /// The Raft types of stapes.
    pub TypeConfig:
        D = Command,
        R = Result<(), StateError>,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
type NodeId = u64;
type SError = StorageError<NodeId>;

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

/// The kinds of member-to-member Raft calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    Append,
    Vote,
    Snapshot,
    /// A follower hands a command to the leader.
    Write,
}

impl RpcKind {
    pub fn path(self) -> &'static str {
        match self {
            RpcKind::Append => "/internal/raft/append",
            RpcKind::Vote => "/internal/raft/vote",
            RpcKind::Snapshot => "/internal/raft/snapshot",
            RpcKind::Write => "/internal/raft/write",
        }
    }

    pub fn from_path(name: &str) -> Option<RpcKind> {
        Some(match name {
            "append" => RpcKind::Append,
            "vote" => RpcKind::Vote,
            "snapshot" => RpcKind::Snapshot,
            "write" => RpcKind::Write,
            _ => return None,
        })
    }
}

pub type RpcFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// How members reach each other: POST `body` to `kind.path()` on member `target` at
/// `address`, over mutual TLS. Implemented by the server crate.
pub trait Rpc: Send + Sync + 'static {
    fn call(&self, target: u64, address: &str, kind: RpcKind, body: Vec<u8>) -> RpcFuture;

    /// Streams a snapshot to [`RpcKind::Snapshot`]'s path on member `target`: one
    /// request whose body is `header` (one line of JSON, ending in a newline) followed by
    /// the bytes of `data`, read from its current position to its end. Resolves to the
    /// reply body. Must give up when the stream stalls, never hold the file in memory.
    fn send_snapshot(&self, target: u64, address: &str, header: Vec<u8>, data: std::fs::File) -> RpcFuture;
}

/// The largest append request sent to a member, unless a single entry is larger: a
/// batch of large records is split rather than refused by the receiver's bound.
pub const APPEND_BUDGET: usize = 1024 * 1024;

fn io_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::read(&e).into()
}

/// The Raft log and vote, in redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    growth: Arc<LogGrowth>,
}

impl LogStore {
    pub fn open(db: Arc<Database>, growth: Arc<LogGrowth>) -> Result<Self, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(LogStore { db, growth })
    }

    /// A snapshot that an earlier version kept inside the database, if any.
    fn take_legacy_snapshot(&self) -> Result<Option<SnapshotBody>, SError> {
        self.meta("snapshot")
    }

    fn remove_legacy_snapshot(&self) -> Result<(), SError> {
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(META)
            .map_err(io_err)?
            .remove("snapshot")
            .map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(read_err),
            None => Ok(None),
        }
    }

    fn set_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), SError> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(META)
            .map_err(io_err)?
            .insert(key, bytes.as_slice())
            .map_err(io_err)?;
        txn.commit().map_err(io_err)
    }
}

impl LogStore {
    /// The entries in `range`, stopping once they pass `budget` bytes (never fewer than
    /// one entry when the range holds any).
    fn entries(&self, range: impl RangeBounds<u64>, budget: usize) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        let mut size = 0;
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            size += v.value().len();
            if size > budget && !out.is_empty() {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        self.entries(range, usize::MAX)
    }

    /// What replication sends in one append: at most [`APPEND_BUDGET`] bytes of entries
    /// (a single larger entry goes alone), so large records never make one huge request.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        self.entries(start..end, APPEND_BUDGET)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let last_purged: Option<LogId<NodeId>> = self.meta("last_purged")?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        self.set_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        self.meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        self.set_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(self.meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let txn = self.db.begin_write().map_err(io_err)?;
        let mut appended = 0;
        {
            let mut table = txn.open_table(LOG).map_err(io_err)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(io_err)?;
                appended += bytes.len();
                table.insert(e.log_id.index, bytes.as_slice()).map_err(io_err)?;
            }
        }
        // redb's default durability fsyncs here: the entries are on disk before we say so.
        txn.commit().map_err(io_err)?;
        self.growth.appended(appended);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(LOG)
            .map_err(io_err)?
            .retain_in(log_id.index.., |_, _| false)
            .map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.set_meta("last_purged", &log_id)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(LOG)
            .map_err(io_err)?
            .retain_in(..=log_id.index, |_, _| false)
            .map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        // Rare (after a snapshot), and what decides whether a member that comes back
        // late needs a snapshot: worth a line.
        tracing::info!(index = log_id.index, "raft log purged up to index");
        Ok(())
    }
}

/// What a snapshot file holds: `{"meta": ..., "state": ...}`.
#[derive(Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: State,
}

/// The same, borrowed, for writing without a copy of the state.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    meta: &'a SnapshotMeta<NodeId, BasicNode>,
    state: &'a State,
}

/// A snapshot's bytes: an open file, read from the start. Renaming a newer snapshot
/// into place never changes what an open one reads.
#[derive(Debug)]
pub struct SnapshotFile {
    file: std::fs::File,
    /// Where a received snapshot was written, until it is installed.
    incoming: Option<PathBuf>,
}

impl SnapshotFile {
    /// The file, at its start, to stream to another member.
    pub fn into_file(self) -> std::io::Result<std::fs::File> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }
}

impl Drop for SnapshotFile {
    /// A received snapshot that was never installed is removed.
    fn drop(&mut self) {
        if let Some(path) = self.incoming.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Snapshots as files: `current` is the one in force; a new one is written under a
/// temporary name, fsynced, and renamed over it, so a crash leaves the old snapshot or
/// the new one, never half of one. Only a newer snapshot replaces `current`.
pub struct SnapshotDir {
    dir: PathBuf,
    /// The meta of `current`, held while it is replaced or opened so the two agree.
    current: std::sync::Mutex<Option<SnapshotMeta<NodeId, BasicNode>>>,
    seq: AtomicU64,
}

const CURRENT: &str = "current";

impl SnapshotDir {
    /// Opens (creating) `dir`, removes what an interrupted write left, and reads the
    /// snapshot in force, if any.
    fn open(dir: PathBuf) -> std::io::Result<(SnapshotDir, Option<SnapshotBody>)> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
            }
        }
        let body = match std::fs::File::open(dir.join(CURRENT)) {
            Ok(f) => Some(read_body(f)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let snapshots = SnapshotDir {
            dir,
            current: std::sync::Mutex::new(body.as_ref().map(|b| b.meta.clone())),
            seq: AtomicU64::new(0),
        };
        Ok((snapshots, body))
    }

    /// A new temporary file, readable by its owner only (a snapshot holds keys).
    fn temp_file(&self, kind: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{kind}-{n}.tmp"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((path, file))
    }

    /// A new file for a snapshot being received.
    fn incoming(&self) -> std::io::Result<SnapshotFile> {
        let (path, file) = self.temp_file("incoming")?;
        Ok(SnapshotFile {
            file,
            incoming: Some(path),
        })
    }

    /// Writes `state` as a snapshot and puts it in force (blocking).
    fn write(&self, meta: &SnapshotMeta<NodeId, BasicNode>, state: &State) -> std::io::Result<SnapshotFile> {
        let (path, file) = self.temp_file("build")?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let written = serde_json::to_writer(&mut out, &SnapshotBodyRef { meta, state });
        let file = written
            .map_err(std::io::Error::other)
            .and_then(|()| out.into_inner().map_err(|e| e.into_error()));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        self.commit(&path, &file, meta)?;
        Ok(SnapshotFile { file, incoming: None })
    }

    /// Fsyncs `file` (at `path`) and renames it over `current` if it is newer.
    fn commit(
        &self,
        path: &Path,
        file: &std::fs::File,
        meta: &SnapshotMeta<NodeId, BasicNode>,
    ) -> std::io::Result<()> {
        file.sync_all()?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.last_log_id > meta.last_log_id) {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        std::fs::rename(path, self.dir.join(CURRENT))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        *current = Some(meta.clone());
        Ok(())
    }

    /// The snapshot in force, opened, with its meta.
    fn open_current(&self) -> std::io::Result<Option<(SnapshotMeta<NodeId, BasicNode>, SnapshotFile)>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let file = std::fs::File::open(self.dir.join(CURRENT))?;
        Ok(Some((meta, SnapshotFile { file, incoming: None })))
    }
}

/// Parses a snapshot file, streaming: the file is never held in memory beside the
/// state it becomes.
fn read_body(mut file: std::fs::File) -> std::io::Result<SnapshotBody> {
    file.seek(SeekFrom::Start(0))?;
    serde_json::from_reader(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// Counts the bytes appended to the log since the last snapshot and asks for a
/// snapshot once they pass [`SNAPSHOT_AFTER_BYTES`]: a state of large records reaches a
/// snapshot (and a purged log) long before the entry-count policy would.
#[derive(Default)]
pub struct LogGrowth {
    bytes: AtomicU64,
    due: tokio::sync::Notify,
}

/// Log bytes after which a snapshot is taken and the log it covers purged.
pub const SNAPSHOT_AFTER_BYTES: u64 = 16 * 1024 * 1024;

impl LogGrowth {
    fn appended(&self, n: usize) {
        let before = self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if before < SNAPSHOT_AFTER_BYTES && before + n as u64 >= SNAPSHOT_AFTER_BYTES {
            self.due.notify_one();
        }
    }

    fn reset(&self) {
        self.bytes.store(0, Ordering::Relaxed);
    }
}

/// Takes a snapshot whenever [`LogGrowth`] says one is due, then purges the log up to
/// it. Runs until stopped.
pub async fn snapshot_on_growth(raft: Raft, growth: Arc<LogGrowth>) {
    loop {
        growth.due.notified().await;
        if let Some(index) = compact(&raft).await {
            tracing::info!(
                index,
                "snapshot taken after log growth; the log it covers is purged"
            );
        }
    }
}

/// Takes a snapshot of everything applied so far and purges the log it covers. Bounded;
/// `None` when it did not happen (it is then done on a later occasion).
pub async fn compact(raft: &Raft) -> Option<u64> {
    let applied = raft.metrics().borrow().last_applied?;
    raft.trigger().snapshot().await.ok()?;
    raft.wait(Some(std::time::Duration::from_secs(300)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
            "a snapshot of the applied log",
        )
        .await
        .ok()?;
    raft.trigger().purge_log(applied.index).await.ok()?;
    Some(applied.index)
}

/// The state machine: the replicated [`State`], published to readers after every
/// applied batch, and snapshots kept as files.
#[derive(Clone)]
pub struct StateMachine {
    snapshots: Arc<SnapshotDir>,
    growth: Arc<LogGrowth>,
    inner: Arc<tokio::sync::Mutex<SmInner>>,
    published: Arc<ArcSwap<State>>,
    changed: watch::Sender<u64>,
}

struct SmInner {
    /// The same `Arc` readers see: applying copies it once per batch, never per reader.
    state: Arc<State>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl StateMachine {
    /// Opens the state machine, starting from the last snapshot (or from `base`, the
    /// state a bootstrapping member already had). A snapshot kept in `db` by an earlier
    /// version is moved to a file.
    pub fn open(
        db: Arc<Database>,
        snapshot_dir: PathBuf,
        growth: Arc<LogGrowth>,
        base: State,
        published: Arc<ArcSwap<State>>,
        changed: watch::Sender<u64>,
    ) -> Result<Self, OpenError> {
        let (snapshots, mut body) =
            SnapshotDir::open(snapshot_dir.clone()).map_err(|source| OpenError::Snapshot {
                path: snapshot_dir.join(CURRENT),
                source,
            })?;
        let log = LogStore::open(db, growth.clone())?;
        if body.is_none() {
            if let Some(old) = log.take_legacy_snapshot()? {
                snapshots
                    .write(&old.meta, &old.state)
                    .map_err(|source| OpenError::Snapshot {
                        path: snapshot_dir.join(CURRENT),
                        source,
                    })?;
                log.remove_legacy_snapshot()?;
                body = Some(old);
            }
        }
        let inner = match body {
            Some(s) => SmInner {
                state: Arc::new(s.state),
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership,
            },
            None => SmInner {
                state: Arc::new(base),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        published.store(inner.state.clone());
        Ok(StateMachine {
            snapshots: Arc::new(snapshots),
            growth,
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            published,
            changed,
        })
    }
}

/// Why the Raft storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("cannot read the snapshot {path}: {source}")]
    Snapshot { path: PathBuf, source: std::io::Error },
}

impl From<SError> for OpenError {
    fn from(e: SError) -> Self {
        OpenError::Snapshot {
            path: PathBuf::from("raft.redb"),
            source: std::io::Error::other(e.to_string()),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (state, meta) = {
            let inner = self.inner.lock().await;
            let id = format!(
                "{}-{}",
                inner.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
                inner.last_applied.map(|l| l.index).unwrap_or(0)
            );
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: id,
            };
            (inner.state.clone(), meta)
        };
        self.growth.reset();
        let snapshots = self.snapshots.clone();
        let written = meta.clone();
        let file = blocking(move || snapshots.write(&written, &state))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SError> {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Result<(), StateError>>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner.lock().await;
        let mut out = Vec::new();
        // One copy per batch: `State::apply` leaves the state unchanged when a command
        // fails, so commands can share it.
        let mut next: Option<State> = None;
        for e in entries {
            inner.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Ok(())),
                EntryPayload::Normal(cmd) => {
                    let state = next.get_or_insert_with(|| (*inner.state).clone());
                    out.push(state.apply(&cmd));
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Ok(()));
                }
            }
        }
        if let Some(state) = next {
            inner.state = Arc::new(state);
        }
        self.published.store(inner.state.clone());
        self.changed.send_modify(|v| *v += 1);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, SError> {
        let snapshots = self.snapshots.clone();
        let file = blocking(move || snapshots.incoming())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), SError> {
        let mut snapshot = *snapshot;
        let incoming = snapshot.incoming.take();
        let file = snapshot
            .file
            .try_clone()
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        drop(snapshot);
        let snapshots = self.snapshots.clone();
        let committed = meta.clone();
        let body = blocking(move || {
            let installed = read_body(file.try_clone()?).and_then(|body| {
                if let Some(path) = &incoming {
                    snapshots.commit(path, &file, &committed)?;
                }
                Ok(body)
            });
            if installed.is_err() {
                if let Some(path) = &incoming {
                    let _ = std::fs::remove_file(path);
                }
            }
            installed
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut inner = self.inner.lock().await;
        inner.state = Arc::new(body.state);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        self.published.store(inner.state.clone());
        self.changed.send_modify(|v| *v += 1);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.open_current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Creates network clients over the [`Rpc`] transport.
pub struct Network {
    pub rpc: Arc<dyn Rpc>,
}

pub struct NetworkClient {
    target: NodeId,
    address: String,
    rpc: Arc<dyn Rpc>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> NetworkClient {
        NetworkClient {
            target,
            address: node.addr.clone(),
            rpc: self.rpc.clone(),
        }
    }
}

#[derive(Debug)]
struct Msg(String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

impl NetworkClient {
    async fn call<Resp, E>(
        &self,
        kind: RpcKind,
        body: Vec<u8>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let bytes = self
            .rpc
            .call(self.target, &self.address, kind, body)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))?;
        let res: Result<Resp, E> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encode<T: Serialize, E: std::error::Error>(req: &T) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, E>> {
    serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// The first line of a streamed snapshot: what it is, and from which leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// The length of the data after this line.
    size: u64,
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // The log reader already bounds a batch by its stored size; this catches what
        // it cannot see (encoding overhead), without encoding anything twice.
        let body = encode(&rpc)?;
        if body.len() > 2 * APPEND_BUDGET && rpc.entries.len() > 1 {
            let fit = (rpc.entries.len() as u64 / 2).max(1);
            return Err(PayloadTooLarge::new_entries_hint(fit).into());
        }
        self.call(RpcKind::Append, body).await
    }

    /// Streams the snapshot file to the member in one request: no chunks held in
    /// memory, no encoding of the bytes, and a bound of its own at the receiver.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let meta = snapshot.meta;
        let storage = |e: std::io::Error| -> StreamingError<TypeConfig, Fatal<NodeId>> {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)).into()
        };
        let file = snapshot.snapshot.into_file().map_err(storage)?;
        let size = file.metadata().map_err(storage)?.len();
        let mut header = serde_json::to_vec(&SnapshotHeader {
            vote,
            meta: meta.clone(),
            size,
        })
        .map_err(|e| NetworkError::new(&e))?;
        header.push(b'\n');
        tracing::debug!(member = self.target, size, snapshot = %meta.snapshot_id, "sending a snapshot");
        let send = self.rpc.send_snapshot(self.target, &self.address, header, file);
        tokio::pin!(cancel);
        let bytes = tokio::select! {
            r = send => r.map_err(|e| Unreachable::new(&Msg(e)))?,
            closed = &mut cancel => return Err(closed.into()),
        };
        let res: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            serde_json::from_slice(&bytes).map_err(|e| NetworkError::new(&e))?;
        res.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = encode(&rpc)?;
        self.call(RpcKind::Vote, body).await
    }

    /// After an unreachable peer: retry after 25 ms, doubling up to 500 ms. (openraft's
    /// default is a flat 500 ms, which delays a joining member whose first append
    /// arrives a moment before its Raft has started, and a member that just restarted.)
    fn backoff(&self) -> openraft::network::Backoff {
        let mut next = std::time::Duration::from_millis(25);
        openraft::network::Backoff::new(std::iter::from_fn(move || {
            let now = next;
            next = (next * 2).min(std::time::Duration::from_millis(500));
            Some(now)
        }))
    }
}

/// Keeps this member from starting elections while it receives a snapshot: the leader
/// sends nothing else to it meanwhile (not even heartbeats), and an election would
/// make the leader's snapshot stale the moment it arrives.
struct ElectionPause {
    raft: Raft,
    active: Arc<std::sync::Mutex<usize>>,
}

impl ElectionPause {
    fn new(raft: Raft, active: Arc<std::sync::Mutex<usize>>) -> Self {
        let mut n = active.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        if *n == 1 {
            raft.runtime_config().elect(false);
        }
        drop(n);
        ElectionPause { raft, active }
    }
}

impl Drop for ElectionPause {
    fn drop(&mut self) {
        let mut n = self.active.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.raft.runtime_config().elect(true);
        }
    }
}

/// Why a streamed snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(
        "the snapshot ({size} bytes) is larger than this member accepts ({limit} bytes, --max-snapshot-size)"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("bad snapshot header: {0}")]
    Header(String),
    #[error("the snapshot stream does not match its header: {0}")]
    Length(String),
    #[error("cannot store the snapshot: {0}")]
    Storage(String),
}

/// The longest snapshot header accepted (it holds the membership, nothing large).
const MAX_HEADER: usize = 64 * 1024;

/// A snapshot arriving from the leader, written to a file as it comes.
pub struct SnapshotReceiver {
    raft: Raft,
    limit: u64,
    header: Vec<u8>,
    parsed: Option<SnapshotHeader>,
    file: Option<tokio::fs::File>,
    snapshot: Option<Box<SnapshotFile>>,
    written: u64,
    _pause: ElectionPause,
}

impl SnapshotReceiver {
    pub(crate) fn new(raft: Raft, limit: u64, pauses: Arc<std::sync::Mutex<usize>>) -> Self {
        SnapshotReceiver {
            _pause: ElectionPause::new(raft.clone(), pauses),
            raft,
            limit,
            header: Vec::new(),
            parsed: None,
            file: None,
            snapshot: None,
            written: 0,
        }
    }

    /// Takes the next bytes of the request body.
    pub async fn write(&mut self, mut chunk: &[u8]) -> Result<(), ReceiveError> {
        if self.parsed.is_none() {
            match chunk.iter().position(|b| *b == b'\n') {
                None => {
                    self.header.extend_from_slice(chunk);
                    if self.header.len() > MAX_HEADER {
                        return Err(ReceiveError::Header("no end of line".into()));
                    }
                    return Ok(());
                }
                Some(i) => {
                    self.header.extend_from_slice(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    self.start().await?;
                }
            }
        }
        let size = self.parsed.as_ref().map(|h| h.size).unwrap_or(0);
        self.written += chunk.len() as u64;
        if self.written > size {
            return Err(ReceiveError::Length(format!("more than {size} bytes")));
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk)
                .await
                .map_err(|e| ReceiveError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// The header is complete: check it, and open the file the data goes to.
    async fn start(&mut self) -> Result<(), ReceiveError> {
        let header: SnapshotHeader =
            serde_json::from_slice(&self.header).map_err(|e| ReceiveError::Header(e.to_string()))?;
        if header.size > self.limit {
            return Err(ReceiveError::TooLarge {
                size: header.size,
                limit: self.limit,
            });
        }
        let snapshot = self
            .raft
            .begin_receiving_snapshot()
            .await
            .map_err(|e| ReceiveError::Storage(e.to_string()))?;
        let file = snapshot
            .file
            .try_clone()
            .map_err(|e| ReceiveError::Storage(e.to_string()))?;
        tracing::info!(size = header.size, snapshot = %header.meta.snapshot_id, "receiving a snapshot");
        self.file = Some(tokio::fs::File::from_std(file));
        self.snapshot = Some(snapshot);
        self.parsed = Some(header);
        Ok(())
    }

    /// The body ended: install what arrived. Returns the JSON reply for the leader.
    pub async fn finish(mut self) -> Result<Vec<u8>, ReceiveError> {
        let Some(header) = self.parsed.take() else {
            return Err(ReceiveError::Header("the body ended before the header".into()));
        };
        if self.written != header.size {
            return Err(ReceiveError::Length(format!(
                "{} of {} bytes arrived",
                self.written, header.size
            )));
        }
        if let Some(mut f) = self.file.take() {
            f.flush()
                .await
                .map_err(|e| ReceiveError::Storage(e.to_string()))?;
        }
        let snapshot = self
            .snapshot
            .take()
            .ok_or_else(|| ReceiveError::Storage("no snapshot file".into()))?;
        let res = self
            .raft
            .install_full_snapshot(
                header.vote,
                Snapshot {
                    meta: header.meta,
                    snapshot,
                },
            )
            .await;
        serde_json::to_vec(&res).map_err(|e| ReceiveError::Storage(e.to_string()))
    }
}

/// Raft timing: heartbeats every 100 ms and elections after 400-800 ms of silence, so
/// a lost leader is replaced well within 2 s.
pub fn config() -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "stapes".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        install_snapshot_timeout: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 200,
        ..Default::default()
    };
    Arc::new(c.validate().expect("valid raft config"))
}

/// Handles a Raft RPC arriving from another member; returns the JSON reply.
pub async fn serve_rpc(raft: &Raft, kind: RpcKind, body: &[u8]) -> Result<Vec<u8>, String> {
    fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(v).map_err(|e| e.to_string())
    }
    let bad = |e: serde_json::Error| format!("bad raft request: {e}");
    match kind {
        RpcKind::Append => enc(&raft
            .append_entries(serde_json::from_slice(body).map_err(bad)?)
            .await),
        RpcKind::Vote => enc(&raft.vote(serde_json::from_slice(body).map_err(bad)?).await),
        RpcKind::Snapshot => Err("snapshots are streamed, see SnapshotReceiver".into()),
        RpcKind::Write => Err("writes are handled by the store".into()),
    }
}

/// The cluster as Raft sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub id: u64,
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Every node in the configuration (voters and learners) with its address.
    pub nodes: BTreeMap<u64, String>,
    pub term: u64,
    pub last_applied: Option<u64>,
}

impl RaftView {
    pub fn of(raft: &Raft) -> RaftView {
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        RaftView {
            id: m.id,
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.id)
    }
}

pub use openraft::ChangeMembers;
pub type ClientWriteError = RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>;
pub use openraft::error::ClientWriteError as WriteError;
pub use openraft::BasicNode as Node;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replication_reads_at_most_the_budget_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("raft.redb")).unwrap());
        let mut log = LogStore::open(db, Default::default()).unwrap();
        let big = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Command::SetConfig {
                changes: [("k".to_string(), "x".repeat(APPEND_BUDGET / 3))].into(),
            }),
        };
        let txn = log.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(LOG).unwrap();
            for i in 1..=10 {
                t.insert(i, serde_json::to_vec(&big(i)).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        let batch = log.limited_get_log_entries(1, 11).await.unwrap();
        assert_eq!(batch.len(), 2, "a third of the budget each, and some: two fit");
        let all = log.try_get_log_entries(1..11).await.unwrap();
        assert_eq!(all.len(), 10);
        // One entry larger than the budget still goes, alone.
        let huge = Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 11),
            payload: EntryPayload::Normal(Command::SetConfig {
                changes: [("k".to_string(), "x".repeat(3 * APPEND_BUDGET))].into(),
            }),
        };
        let txn = log.db.begin_write().unwrap();
        txn.open_table(LOG)
            .unwrap()
            .insert(11, serde_json::to_vec(&huge).unwrap().as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(log.limited_get_log_entries(11, 12).await.unwrap().len(), 1);
    }

    fn meta(index: u64) -> SnapshotMeta<NodeId, BasicNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        }
    }

    fn state_with(key: &str) -> State {
        let mut s = State::default();
        s.config.insert(key.into(), "v".into());
        s
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (snaps, none) = SnapshotDir::open(dir.path().join("s")).unwrap();
        assert!(none.is_none());
        snaps.write(&meta(10), &state_with("ten")).unwrap();
        snaps.write(&meta(5), &state_with("five")).unwrap();
        let (m, f) = snaps.open_current().unwrap().unwrap();
        assert_eq!(m.last_log_id.unwrap().index, 10);
        let body = read_body(f.into_file().unwrap()).unwrap();
        assert!(body.state.config.contains_key("ten"));
        // Only the snapshot in force is left, and it is read back on open.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("s")).unwrap().collect();
        assert_eq!(names.len(), 1);
        let (_, body) = SnapshotDir::open(dir.path().join("s")).unwrap();
        assert_eq!(body.unwrap().meta.last_log_id.unwrap().index, 10);
    }

    #[test]
    fn an_interrupted_write_leaves_the_old_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (snaps, _) = SnapshotDir::open(path.clone()).unwrap();
        snaps.write(&meta(3), &state_with("three")).unwrap();
        let left = snaps.incoming().unwrap();
        std::fs::write(path.join("build-9.tmp"), b"{\"meta\":").unwrap();
        std::mem::forget(left);
        let (_, body) = SnapshotDir::open(path.clone()).unwrap();
        assert!(body.unwrap().state.config.contains_key("three"));
        assert_eq!(
            std::fs::read_dir(&path).unwrap().count(),
            1,
            "temporary files are removed"
        );
    }

    #[test]
    fn a_received_snapshot_that_is_dropped_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (snaps, _) = SnapshotDir::open(path.clone()).unwrap();
        drop(snaps.incoming().unwrap());
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    }
}
