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
use std::io::Cursor;
use std::ops::RangeBounds;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftNetwork, RaftNetworkFactory,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
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
        SnapshotData = Cursor<Vec<u8>>,
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
}

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
}

impl LogStore {
    pub fn open(db: Arc<Database>) -> Result<Self, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(LogStore { db })
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
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
        {
            let mut table = txn.open_table(LOG).map_err(io_err)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(io_err)?;
                table.insert(e.log_id.index, bytes.as_slice()).map_err(io_err)?;
            }
        }
        // redb's default durability fsyncs here: the entries are on disk before we say so.
        txn.commit().map_err(io_err)?;
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
        txn.commit().map_err(io_err)
    }
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: State,
}

/// The state machine: the replicated [`State`], published to readers after every
/// applied entry, and snapshots kept in redb.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    inner: Arc<tokio::sync::Mutex<SmInner>>,
    published: Arc<ArcSwap<State>>,
    changed: watch::Sender<u64>,
}

struct SmInner {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl StateMachine {
    /// Opens the state machine, starting from the last snapshot (or from `base`, the
    /// state a bootstrapping member already had).
    pub fn open(
        db: Arc<Database>,
        base: State,
        published: Arc<ArcSwap<State>>,
        changed: watch::Sender<u64>,
    ) -> Result<Self, redb::Error> {
        let log = LogStore::open(db.clone())?;
        let snap: Option<SnapshotBody> = log.meta("snapshot").ok().flatten();
        let inner = match snap {
            Some(s) => SmInner {
                state: s.state,
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership,
            },
            None => SmInner {
                state: base,
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        published.store(Arc::new(inner.state.clone()));
        Ok(StateMachine {
            db,
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            published,
            changed,
        })
    }

    fn store_snapshot(&self, body: &SnapshotBody) -> Result<Vec<u8>, SError> {
        let bytes = serde_json::to_vec(body).map_err(io_err)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(META)
            .map_err(io_err)?
            .insert("snapshot", bytes.as_slice())
            .map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(bytes)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let inner = self.inner.lock().await;
        let id = format!(
            "{}-{}",
            inner.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            inner.last_applied.map(|l| l.index).unwrap_or(0)
        );
        let body = SnapshotBody {
            meta: SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: id,
            },
            state: inner.state.clone(),
        };
        drop(inner);
        let bytes = self.store_snapshot(&body)?;
        Ok(Snapshot {
            meta: body.meta,
            snapshot: Box::new(Cursor::new(bytes)),
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
        for e in entries {
            inner.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Ok(())),
                EntryPayload::Normal(cmd) => {
                    // Apply to a copy: a failing command leaves the state as it was.
                    let mut next = inner.state.clone();
                    let res = next.apply(&cmd);
                    if res.is_ok() {
                        inner.state = next;
                    }
                    out.push(res);
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Ok(()));
                }
            }
        }
        self.published.store(Arc::new(inner.state.clone()));
        self.changed.send_modify(|v| *v += 1);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let body: SnapshotBody = serde_json::from_slice(snapshot.get_ref()).map_err(read_err)?;
        let body = SnapshotBody {
            meta: meta.clone(),
            state: body.state,
        };
        self.store_snapshot(&body)?;
        let mut inner = self.inner.lock().await;
        inner.state = body.state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        self.published.store(Arc::new(inner.state.clone()));
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let log = LogStore { db: self.db.clone() };
        let body: Option<SnapshotBody> = log.meta("snapshot")?;
        Ok(body.map(|b| {
            let bytes = serde_json::to_vec(&b).unwrap_or_default();
            Snapshot {
                meta: b.meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }
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
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Append, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RpcKind::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &rpc).await
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
        RpcKind::Snapshot => enc(&raft
            .install_snapshot(serde_json::from_slice(body).map_err(bad)?)
            .await),
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
