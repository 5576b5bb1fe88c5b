//! The store: the replicated state, written through one of two backends, and this
//! member's local configuration.
//!
//! ```text
//!   standalone: apply ─> State::apply on a copy ─> append to local log (fsync) ─> publish
//!   clustered : apply ─> leader? raft.client_write : Rpc::call(leader, Write)
//!                        └─> committed on a quorum ─> every member's state machine ─> publish
//! ```
//!
//! Standalone, `state.redb` holds a log of applied commands plus a snapshot every
//! [`COMPACT_EVERY`] entries; a command that fails is never logged, and an acknowledged
//! one is on disk. `cluster enable` starts Raft (`raft.redb`) seeded with that state;
//! joining starts an empty Raft that the leader fills. Either way readers see one
//! published `Arc<State>`, never a half-applied one.
//!
//! A write that fails on disk (a full disk, say) leaves redb refusing every later write
//! with "Previous I/O error": the store then reopens the database before the next write,
//! and says it is failing ([`Store::storage_problem`]) until a write succeeds again.
//! A member whose files are missing, empty or damaged is refused at open, naming the
//! file and what to do, rather than started as a new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::raft::{self, ChangeMembers, Node, Raft, RaftView, Rpc, RpcKind};
use crate::{Command, State, StateError};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Log entries kept before a snapshot replaces them (standalone).
pub const COMPACT_EVERY: u64 = 512;
/// The longest a write waits for the cluster before failing with "unavailable".
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("Cluster database is unavailable: {0}")]
    Unavailable(String),
    #[error("State database error: {0}")]
    Db(String),
    #[error("State database is corrupt: {0}")]
    Corrupt(String),
    #[error("State database write failed: {0}")]
    Storage(String),
    /// A file a member needs is missing, empty or unreadable.
    #[error("{0}")]
    Damaged(String),
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

/// Who this member is in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    pub id: u64,
    pub name: String,
}

/// What a member asks of the leader over [`RpcKind::Write`].
#[derive(Debug, Serialize, Deserialize)]
pub enum LeaderRequest {
    Command(Command),
    AddLearner {
        id: u64,
        address: String,
    },
    /// Make exactly these nodes voters (others stay as learners).
    SetVoters {
        ids: BTreeSet<u64>,
    },
    RemoveNode {
        id: u64,
    },
}

/// The leader's answer: the log index to wait for, or why not.
#[derive(Debug, Serialize, Deserialize)]
pub enum LeaderReply {
    Done { index: u64 },
    State(StateError),
    Unavailable(String),
}

struct RaftNode {
    raft: Raft,
    id: u64,
    /// Takes snapshots when the log grows large; stopped with the node.
    compactor: tokio::task::JoinHandle<()>,
}

/// The largest snapshot a member accepts by default (`--max-snapshot-size`).
pub const DEFAULT_SNAPSHOT_LIMIT: u64 = 4 * 1024 * 1024 * 1024;

pub struct Store {
    /// `state.redb`; `None` only while it is being reopened after a failed write.
    db: std::sync::Mutex<Option<Database>>,
    /// Why the last write failed, until one succeeds.
    failing: std::sync::Mutex<Option<String>>,
    dir: PathBuf,
    published: Arc<ArcSwap<State>>,
    changed: watch::Sender<u64>,
    local: ArcSwap<BTreeMap<String, String>>,
    identity: ArcSwapOption<MemberIdentity>,
    raft: ArcSwapOption<RaftNode>,
    rpc: Arc<dyn Rpc>,
    /// Serialises standalone writers and backend switches; readers never wait.
    writer: Mutex<u64>,
    /// The largest snapshot accepted from a leader, in bytes.
    snapshot_limit: std::sync::atomic::AtomicU64,
    /// Snapshots being received now (elections wait while there are any).
    receiving: Arc<std::sync::Mutex<usize>>,
}

impl Store {
    /// Opens the store in `dir`, replaying the standalone log or starting Raft.
    pub async fn open(dir: &Path, rpc: Arc<dyn Rpc>) -> Result<Store, StoreError> {
        let path = dir.join("state.redb");
        let db = open_db(&path).map_err(|e| damaged(&path, &e, STATE_ADVICE))?;

        let read = db.begin_read()?;
        let meta = read.open_table(META)?;
        let get =
            |k: &str| -> Result<Option<Vec<u8>>, StoreError> { Ok(meta.get(k)?.map(|v| v.value().to_vec())) };
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let mut state: State = match get("snapshot")? {
            Some(v) => serde_json::from_slice(&v).map_err(corrupt)?,
            None => State::default(),
        };
        let local: BTreeMap<String, String> = match get("local")? {
            Some(v) => serde_json::from_slice(&v).map_err(corrupt)?,
            None => BTreeMap::new(),
        };
        let identity: Option<MemberIdentity> = match get("identity")? {
            Some(v) => Some(serde_json::from_slice(&v).map_err(corrupt)?),
            None => None,
        };
        let mut last = match get("snapshot_index")? {
            Some(v) => decode_index(&v)?,
            None => 0,
        };
        let log = read.open_table(LOG)?;
        for entry in log.range(last + 1..)? {
            let (k, v) = entry?;
            let cmd: Command = serde_json::from_slice(v.value()).map_err(corrupt)?;
            state.apply(&cmd)?;
            last = k.value();
        }
        drop((log, meta, read));
        if let Some(id) = &identity {
            // A member of a cluster: its Raft database must be there, and not empty.
            let raft_db = dir.join("raft.redb");
            match std::fs::metadata(&raft_db) {
                Ok(m) if m.len() > 0 => {}
                Ok(_) => return Err(damaged(&raft_db, "empty", &raft_advice(&id.name))),
                Err(e) => return Err(damaged(&raft_db, &e.to_string(), &raft_advice(&id.name))),
            }
        }

        let store = Store {
            db: std::sync::Mutex::new(Some(db)),
            failing: Default::default(),
            dir: dir.to_path_buf(),
            published: Arc::new(ArcSwap::from_pointee(state)),
            changed: watch::channel(0).0,
            local: ArcSwap::from_pointee(local),
            identity: ArcSwapOption::from(identity.clone().map(Arc::new)),
            raft: ArcSwapOption::empty(),
            rpc,
            writer: Mutex::new(last),
            snapshot_limit: DEFAULT_SNAPSHOT_LIMIT.into(),
            receiving: Default::default(),
        };
        if let Some(id) = identity {
            store.start_raft(id.id, State::default()).await?;
            store.wait_caught_up().await;
        }
        Ok(store)
    }

    /// The current state: a snapshot that never changes under the reader.
    pub fn state(&self) -> Arc<State> {
        self.published.load_full()
    }

    /// Changes whenever the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// This member's local configuration.
    pub fn local(&self) -> Arc<BTreeMap<String, String>> {
        self.local.load_full()
    }

    /// This member's identity in the cluster; `None` while standalone.
    pub fn identity(&self) -> Option<Arc<MemberIdentity>> {
        self.identity.load_full()
    }

    pub fn clustered(&self) -> bool {
        self.raft.load().is_some()
    }

    /// On the leader: whether a majority has acknowledged it recently (1.5 s).
    pub fn leader_has_quorum(&self) -> bool {
        self.raft.load().as_ref().is_some_and(|n| {
            n.raft
                .metrics()
                .borrow()
                .millis_since_quorum_ack
                .is_some_and(|ms| ms <= 1500)
        })
    }

    /// The Raft view, when clustered.
    pub fn raft_view(&self) -> Option<RaftView> {
        self.raft.load().as_ref().map(|n| RaftView::of(&n.raft))
    }

    /// Applies a command durably; returns once it is visible to readers here.
    pub async fn apply(&self, cmd: Command) -> Result<Arc<State>, StoreError> {
        match self.raft.load_full() {
            Some(node) => {
                self.lead(&node, LeaderRequest::Command(cmd)).await?;
                Ok(self.state())
            }
            None => self.apply_standalone(cmd).await,
        }
    }

    async fn apply_standalone(&self, cmd: Command) -> Result<Arc<State>, StoreError> {
        let mut index = self.writer.lock().await;
        let mut next = (*self.published.load_full()).clone();
        next.apply(&cmd)?;
        let bytes = serde_json::to_vec(&cmd).expect("commands serialize");
        let new_index = *index + 1;
        let snapshot =
            (new_index % COMPACT_EVERY == 0).then(|| serde_json::to_vec(&next).expect("state serializes"));
        self.write(|txn| {
            let mut log = txn.open_table(LOG)?;
            log.insert(new_index, bytes.as_slice())?;
            if let Some(snap) = &snapshot {
                let mut meta = txn.open_table(META)?;
                meta.insert("snapshot", snap.as_slice())?;
                meta.insert("snapshot_index", new_index.to_be_bytes().as_slice())?;
                log.retain_in(..=new_index, |_, _| false)?;
            }
            Ok(())
        })?;
        *index = new_index;
        let next = Arc::new(next);
        self.published.store(next.clone());
        self.changed.send_modify(|v| *v += 1);
        tracing::debug!(command = cmd.name(), index = new_index, "state applied");
        Ok(next)
    }

    /// Runs a request on the leader (here, or over the wire) and waits until this
    /// member has applied its result.
    async fn lead(&self, node: &RaftNode, req: LeaderRequest) -> Result<(), StoreError> {
        let view = RaftView::of(&node.raft);
        let leader = view.leader.ok_or_else(|| {
            StoreError::Unavailable("no leader is elected (is a majority of members up?)".into())
        })?;
        let reply = if leader == node.id {
            self.serve_leader_request(req).await
        } else {
            let address = view
                .nodes
                .get(&leader)
                .cloned()
                .ok_or_else(|| StoreError::Unavailable("the leader's address is unknown".into()))?;
            let body = serde_json::to_vec(&req).expect("requests serialize");
            let bytes = tokio::time::timeout(
                WRITE_TIMEOUT,
                self.rpc.call(leader, &address, RpcKind::Write, body),
            )
            .await
            .map_err(|_| StoreError::Unavailable("the leader did not answer in time".into()))?
            .map_err(|e| StoreError::Unavailable(format!("cannot reach the leader: {e}")))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Unavailable(format!("bad answer from the leader: {e}")))?
        };
        match reply {
            LeaderReply::Done { index } => {
                let waited = node
                    .raft
                    .wait(Some(WRITE_TIMEOUT))
                    .applied_index_at_least(Some(index), "write applied here")
                    .await;
                waited
                    .map(|_| ())
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            }
            LeaderReply::State(e) => Err(StoreError::State(e)),
            LeaderReply::Unavailable(e) => Err(StoreError::Unavailable(e)),
        }
    }

    /// Executes a request as the leader. Called locally, or for another member through
    /// `POST /internal/raft/write`; never forwards again.
    pub async fn serve_leader_request(&self, req: LeaderRequest) -> LeaderReply {
        let Some(node) = self.raft.load_full() else {
            return LeaderReply::Unavailable("this member is not clustered".into());
        };
        let view = RaftView::of(&node.raft);
        if !view.is_leader() {
            return LeaderReply::Unavailable("this member is not the leader".into());
        }
        let quorum_age = node.raft.metrics().borrow().millis_since_quorum_ack;
        if view.voters.len() > 1 && quorum_age.is_none_or(|ms| ms > 1500) {
            return LeaderReply::Unavailable("the leader has lost contact with a majority of members".into());
        }
        let raft = &node.raft;
        let write = async {
            match req {
                LeaderRequest::Command(cmd) => raft.client_write(cmd).await.map(|r| (r.log_id.index, r.data)),
                LeaderRequest::AddLearner { id, address } => raft
                    .add_learner(id, Node::new(address), false)
                    .await
                    .map(|r| (r.log_id.index, Ok(()))),
                LeaderRequest::SetVoters { ids } => raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(ids), true)
                    .await
                    .map(|r| (r.log_id.index, Ok(()))),
                LeaderRequest::RemoveNode { id } => {
                    let mut voters = view.voters.clone();
                    if voters.remove(&id) {
                        raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
                            .await?;
                    }
                    raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                        .await
                        .map(|r| (r.log_id.index, Ok(())))
                }
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Err(_) => LeaderReply::Unavailable("timed out waiting for a majority of members".into()),
            Ok(Err(e)) => LeaderReply::Unavailable(e.to_string()),
            Ok(Ok((_, Err(e)))) => LeaderReply::State(e),
            Ok(Ok((index, Ok(())))) => LeaderReply::Done { index },
        }
    }

    /// Adds a node to Raft as a learner (it then receives the log).
    pub async fn add_learner(&self, id: u64, address: &str) -> Result<(), StoreError> {
        let node = self.raft_node()?;
        self.lead(
            &node,
            LeaderRequest::AddLearner {
                id,
                address: address.to_string(),
            },
        )
        .await
    }

    /// Makes exactly `ids` the voters.
    pub async fn set_voters(&self, ids: BTreeSet<u64>) -> Result<(), StoreError> {
        let node = self.raft_node()?;
        self.lead(&node, LeaderRequest::SetVoters { ids }).await
    }

    /// Takes a node out of Raft altogether.
    pub async fn remove_node(&self, id: u64) -> Result<(), StoreError> {
        let node = self.raft_node()?;
        self.lead(&node, LeaderRequest::RemoveNode { id }).await
    }

    fn raft_node(&self) -> Result<Arc<RaftNode>, StoreError> {
        self.raft
            .load_full()
            .ok_or_else(|| StoreError::Unavailable("this member is not clustered".into()))
    }

    /// Sets the largest snapshot this member accepts from a leader.
    pub fn set_snapshot_limit(&self, bytes: u64) {
        self.snapshot_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts receiving a snapshot streamed by the leader.
    pub fn receive_snapshot(&self) -> Result<raft::SnapshotReceiver, StoreError> {
        let node = self.raft_node()?;
        Ok(raft::SnapshotReceiver::new(
            node.raft.clone(),
            self.snapshot_limit.load(std::sync::atomic::Ordering::Relaxed),
            self.receiving.clone(),
        ))
    }

    /// Handles a Raft RPC from another member.
    pub async fn serve_rpc(&self, kind: RpcKind, body: &[u8]) -> Result<Vec<u8>, String> {
        if kind == RpcKind::Write {
            let req: LeaderRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let reply = self.serve_leader_request(req).await;
            return serde_json::to_vec(&reply).map_err(|e| e.to_string());
        }
        let node = self.raft.load_full().ok_or("this member is not clustered")?;
        raft::serve_rpc(&node.raft, kind, body).await
    }

    /// Turns a standalone member into a one-member cluster whose state is the one it
    /// had, plus `member` and the cluster certificate.
    pub async fn bootstrap(
        &self,
        member: crate::Member,
        cluster_cert: (String, String),
    ) -> Result<(), StoreError> {
        let _guard = self.writer.lock().await;
        if self.clustered() {
            return Err(StateError::Invalid("This server is already clustered".into()).into());
        }
        let identity = MemberIdentity {
            id: member.id,
            name: member.name.clone(),
        };
        let mut seed = (*self.state()).clone();
        seed.certificates
            .insert(member.fingerprint.clone(), member.server_certificate());
        seed.members = [(member.name.clone(), member.clone())].into();
        seed.cluster_certificate = Some(cluster_cert);
        let node = self.start_raft(member.id, seed.clone()).await?;
        node.raft
            .initialize(BTreeMap::from([(member.id, Node::new(member.address.clone()))]))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        node.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(member.id, "own leadership")
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        drop(_guard);
        self.lead(
            &node,
            LeaderRequest::Command(Command::Restore {
                state: Box::new(seed),
            }),
        )
        .await?;
        self.save_identity(&identity)?;
        // The first entry holds the whole standalone state: put it in a snapshot and
        // purge it, so members that join later receive it as a stream, not as one
        // append of unbounded size.
        raft::compact(&node.raft).await;
        Ok(())
    }

    /// Starts an empty Raft node for a member that is joining: the leader will fill it.
    /// Whatever state it had standalone is replaced by the cluster's.
    pub async fn start_joining(&self, identity: MemberIdentity) -> Result<(), StoreError> {
        let _guard = self.writer.lock().await;
        if self.clustered() {
            return Err(StateError::Invalid("This server is already clustered".into()).into());
        }
        self.start_raft(identity.id, State::default()).await?;
        self.save_identity(&identity)?;
        Ok(())
    }

    fn save_identity(&self, identity: &MemberIdentity) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(identity).expect("identity serializes");
        self.write(|txn| {
            txn.open_table(META)?.insert("identity", bytes.as_slice())?;
            Ok(())
        })?;
        self.identity.store(Some(Arc::new(identity.clone())));
        Ok(())
    }

    /// Renames this member's own identity (after a cluster rename).
    pub fn rename_identity(&self, new_name: &str) -> Result<(), StoreError> {
        if let Some(id) = self.identity() {
            self.save_identity(&MemberIdentity {
                id: id.id,
                name: new_name.to_string(),
            })?;
        }
        Ok(())
    }

    async fn start_raft(&self, id: u64, base: State) -> Result<Arc<RaftNode>, StoreError> {
        let path = self.dir.join("raft.redb");
        let db = Database::create(&path).map_err(|e| {
            let name = self.identity().map(|i| i.name.clone()).unwrap_or_default();
            damaged(&path, &format!("unreadable ({e})"), &raft_advice(&name))
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Db(e.to_string()))?;
        }
        let db = Arc::new(db);
        let growth = Arc::new(raft::LogGrowth::default());
        let log = raft::LogStore::open(db.clone(), growth.clone())?;
        let sm = raft::StateMachine::open(
            db,
            self.dir.join(SNAPSHOT_DIR),
            growth.clone(),
            base,
            self.published.clone(),
            self.changed.clone(),
        )
        .map_err(|e| StoreError::Db(e.to_string()))?;
        let network = raft::Network {
            rpc: self.rpc.clone(),
        };
        let r = Raft::new(id, raft::config(), network, log, sm)
            .await
            .map_err(|e| StoreError::Unavailable(format!("Raft failed to start: {e}")))?;
        let compactor = tokio::spawn(raft::snapshot_on_growth(r.clone(), growth));
        let node = Arc::new(RaftNode {
            raft: r,
            id,
            compactor,
        });
        self.raft.store(Some(node.clone()));
        Ok(node)
    }

    /// After a restart: wait (bounded) until the log committed before is applied.
    async fn wait_caught_up(&self) {
        let Some(node) = self.raft.load_full() else { return };
        let committed = node.raft.metrics().borrow().last_log_index;
        let _ = node
            .raft
            .wait(Some(Duration::from_secs(2)))
            .applied_index_at_least(committed, "replay")
            .await;
    }

    /// This member was removed from its cluster: stop taking part, forget the cluster,
    /// and carry on standalone with an empty state.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let _guard = self.writer.lock().await;
        if let Some(node) = self.raft.swap(None) {
            node.compactor.abort();
            let _ = node.raft.shutdown().await;
        }
        self.write(|txn| {
            txn.open_table(META)?.remove("identity")?;
            Ok(())
        })?;
        self.identity.store(None);
        let _ = std::fs::remove_file(self.dir.join("raft.redb"));
        let _ = std::fs::remove_dir_all(self.dir.join(SNAPSHOT_DIR));
        self.published.store(Arc::new(State::default()));
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Stops Raft (at shutdown).
    pub async fn shutdown(&self) {
        if let Some(node) = self.raft.swap(None) {
            node.compactor.abort();
            let _ = node.raft.shutdown().await;
        }
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
        self.write(|txn| {
            txn.open_table(META)?.insert("local", bytes.as_slice())?;
            Ok(())
        })?;
        self.local.store(Arc::new(next));
        Ok(())
    }

    /// One write transaction on `state.redb`, committed (fsynced). A failure marks the
    /// store as failing and has the database reopened before the next write, since redb
    /// refuses every write after an I/O error.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.dir.join("state.redb");
        let failing = self.failing.lock().map(|f| f.is_some()).unwrap_or(true);
        if failing || db.is_none() {
            // Release the file lock before taking it again.
            *db = None;
            *db = Some(open_db(&path).map_err(|e| self.failed(format!("{}: {e}", path.display())))?);
        }
        let Some(open) = db.as_ref() else {
            return Err(self.failed("the state database is not open".into()));
        };
        let attempt = (|| {
            let txn = open.begin_write()?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok::<T, StoreError>(out)
        })();
        match attempt {
            Ok(out) => {
                if let Ok(mut f) = self.failing.lock() {
                    if f.take().is_some() {
                        tracing::info!("the state database accepts writes again");
                    }
                }
                Ok(out)
            }
            Err(StoreError::State(e)) => Err(StoreError::State(e)),
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    fn failed(&self, why: String) -> StoreError {
        tracing::error!(error = %why, "a write to the state database failed; it is reopened before the next write");
        if let Ok(mut f) = self.failing.lock() {
            *f = Some(why.clone());
        }
        StoreError::Storage(why)
    }

    /// Why writes are failing now (the last one failed, none has succeeded since).
    pub fn storage_problem(&self) -> Option<String> {
        self.failing.lock().ok()?.clone()
    }

    /// While writes are failing, tries one small write (the database reopened first), so
    /// that the member recovers as soon as space returns, with or without other writes.
    pub async fn check_storage(&self) {
        if self.storage_problem().is_none() {
            return;
        }
        let _guard = self.writer.lock().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = self.write(|txn| {
            txn.open_table(META)?
                .insert("checked", now.to_be_bytes().as_slice())?;
            Ok(())
        });
    }

    /// Whether Raft has stopped for good (its storage failed), and why.
    pub fn raft_failure(&self) -> Option<String> {
        let node = self.raft.load_full()?;
        let m = node.raft.metrics().borrow().clone();
        m.running_state.err().map(|e| e.to_string())
    }
}

/// What to do about a missing or damaged `state.redb`.
const STATE_ADVICE: &str =
    "Restore it from a backup of the state directory. To start over as a new member instead, \
     move the whole state directory aside (a cluster member must then be removed on another member with \
     `incus cluster remove NAME --force` and join again)";

fn raft_advice(name: &str) -> String {
    format!(
        "Restore it from a backup of the state directory, or remove this member on another member \
         (`incus cluster remove {name} --force`) and join it again with an empty state directory"
    )
}

fn damaged(path: &Path, what: &str, advice: &str) -> StoreError {
    StoreError::Damaged(format!("{} is {what}. {advice}", path.display()))
}

/// Opens (creating) a database file readable by its owner only: it holds keys and
/// secrets. An existing empty file is damage, not a new database. The error says what
/// is wrong with the file.
fn open_db(path: &Path) -> Result<Database, String> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err("empty".into());
    }
    let unreadable = |e: &dyn std::fmt::Display| format!("unreadable ({e})");
    let db = Database::create(path).map_err(|e| unreadable(&e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| unreadable(&e))?;
    let txn = db.begin_write().map_err(|e| unreadable(&e))?;
    txn.open_table(LOG).map_err(|e| unreadable(&e))?;
    txn.open_table(META).map_err(|e| unreadable(&e))?;
    txn.commit().map_err(|e| unreadable(&e))?;
    Ok(db)
}

/// Where Raft keeps its snapshots, beside `raft.redb`.
const SNAPSHOT_DIR: &str = "raft-snapshots";

fn decode_index(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("bad snapshot index".into()))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoNet;

    impl Rpc for NoNet {
        fn call(&self, _: u64, _: &str, _: RpcKind, _: Vec<u8>) -> raft::RpcFuture {
            Box::pin(async { Err("no network in this test".to_string()) })
        }

        fn send_snapshot(&self, _: u64, _: &str, _: Vec<u8>, _: std::fs::File) -> raft::RpcFuture {
            Box::pin(async { Err("no network in this test".to_string()) })
        }
    }

    fn set(k: &str, v: &str) -> Command {
        Command::SetConfig {
            changes: [(k.to_string(), v.to_string())].into(),
        }
    }

    #[tokio::test]
    async fn writes_survive_reopen_across_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
            for i in 0..(COMPACT_EVERY + 10) {
                store.apply(set(&format!("k{i}"), "v")).await.unwrap();
            }
            store
                .set_local(&[("core.https_address".to_string(), "127.0.0.1:8443".to_string())].into())
                .await
                .unwrap();
        }
        let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
        assert_eq!(store.state().config.len() as u64, COMPACT_EVERY + 10);
        assert_eq!(store.local()["core.https_address"], "127.0.0.1:8443");
        store.apply(set("after", "reopen")).await.unwrap();
        drop(store);
        let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
        assert_eq!(store.state().config["after"], "reopen");
    }

    #[tokio::test]
    async fn rejected_command_is_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
        let err = store
            .apply(Command::DeleteCertificate {
                fingerprint: "nope".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::State(StateError::CertificateNotFound)));
        drop(store);
        let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
        assert_eq!(*store.state(), State::default());
    }

    #[tokio::test]
    async fn bootstrap_keeps_state_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let member = crate::Member {
            name: "node1".into(),
            id: 7,
            address: "127.0.0.1:1".into(),
            certificate: String::new(),
            fingerprint: "fp".into(),
            description: String::new(),
            failure_domain: "default".into(),
            architecture: "x86_64".into(),
        };
        {
            let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
            store.apply(set("before", "cluster")).await.unwrap();
            store
                .bootstrap(member, ("crt".into(), "key".into()))
                .await
                .unwrap();
            assert!(store.clustered());
            store.apply(set("after", "bootstrap")).await.unwrap();
            let s = store.state();
            assert_eq!(s.config["before"], "cluster");
            assert!(s.members.contains_key("node1"));
            store.shutdown().await;
        }
        let store = Store::open(dir.path(), Arc::new(NoNet)).await.unwrap();
        assert_eq!(store.identity().unwrap().name, "node1");
        let s = store.state();
        assert_eq!(s.config["after"], "bootstrap");
        assert_eq!(s.cluster_certificate.as_ref().unwrap().0, "crt");
        store.shutdown().await;
    }
}
