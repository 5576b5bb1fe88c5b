//! The operations engine: what a member runs in the background for a request it has
//! already answered with `202 Accepted`.
//!
//! ```text
//!  handler ─ Engine::start(spec, run) ─> Pending ─> Running ─┬─> Success   (run returned Ok)
//!     │                                   (event)   (event)  ├─> Failure   (run returned Err: `err`)
//!     └─ 202 async, Location ─> client                       └─> Cancelling ─> Cancelled (DELETE)
//!                                       every transition and metadata update ─> `operation` event
//! ```
//!
//! Operations live in the memory of the member that runs them, as in Incus. Their id
//! says which member that is ([`new_id`], [`owner_of`]): a version-4 UUID whose free
//! bits hold the owner's member id, so any member can send `/1.0/operations/{id}/**` to
//! the owner without a replicated map or asking around.
//!
//! Invariants:
//! - a final status (Success, Failure, Cancelled) never changes again ([`Status::step`]);
//! - each status change and metadata update is published once, as Incus shapes it (the
//!   rendered operation as the metadata of an `operation` event, `location` = this
//!   member), so the relay carries it to every member's `/1.0/events`;
//! - a finished operation is kept [`KEEP`] (5 s, as Incus) for late readers and waiters,
//!   then dropped ([`Engine::sweep`], run on every access);
//! - websocket secrets are compared in constant time, and only for running operations.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::types::Operation;
use serde_json::Value;
use tokio::sync::watch;

use crate::events::EventHub;

/// How long a finished operation stays visible.
pub const KEEP: Duration = Duration::from_secs(5);
/// How long a cancelled run may take to wind down before it is dropped.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// The longest a single `wait` may block.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// An operation's status, with Incus's codes and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Cancelling,
    Success,
    Failure,
    Cancelled,
}

/// A status change that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("An operation cannot go from {from:?} to {to:?}")]
pub struct BadTransition {
    pub from: Status,
    pub to: Status,
}

impl Status {
    pub fn code(self) -> u16 {
        use api::types::status;
        match self {
            Status::Pending => status::PENDING,
            Status::Running => status::RUNNING,
            Status::Cancelling => status::CANCELLING,
            Status::Success => status::SUCCESS,
            Status::Failure => status::FAILURE,
            Status::Cancelled => status::CANCELLED,
        }
    }

    pub fn is_final(self) -> bool {
        self.code() >= 200
    }

    /// The status after moving to `to`, if that move is allowed.
    pub fn step(self, to: Status) -> Result<Status, BadTransition> {
        use Status::*;
        let ok = match self {
            Pending => matches!(to, Running | Failure | Cancelled),
            Running => matches!(to, Cancelling | Success | Failure | Cancelled),
            Cancelling => matches!(to, Cancelled | Failure),
            Success | Failure | Cancelled => false,
        };
        if ok {
            Ok(to)
        } else {
            Err(BadTransition { from: self, to })
        }
    }
}

/// The class of an operation, as Incus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Task,
    Websocket,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Task => "task",
            Class::Websocket => "websocket",
        }
    }
}

/// A new operation id naming `owner` (a member id; 0 for a standalone member), with 58
/// bits of `random`. It is a well-formed version-4 UUID.
pub fn new_id(owner: u64, random: u64) -> String {
    let payload: u128 = (u128::from(owner) << 58) | u128::from(random & ((1 << 58) - 1));
    // 122 free bits: 48 before the version nibble, 12 between it and the variant bits,
    // 62 after them.
    let high = (payload >> 74) & ((1 << 48) - 1);
    let middle = (payload >> 62) & 0xfff;
    let low = payload & ((1 << 62) - 1);
    let bits = (high << 80) | (0x4 << 76) | (middle << 64) | (0b10 << 62) | low;
    uuid::Uuid::from_u128(bits).hyphenated().to_string()
}

/// A new id for an operation owned by `owner`.
fn fresh_id(owner: u64) -> String {
    let bytes = trust::random_bytes16();
    let mut random = [0u8; 8];
    random.copy_from_slice(&bytes[..8]);
    new_id(owner, u64::from_le_bytes(random))
}

/// The member id an operation id names, if it is one of [`new_id`]'s shape (any
/// version-4 UUID in canonical form decodes; whether the member exists is the caller's
/// question).
pub fn owner_of(id: &str) -> Option<u64> {
    if id.len() != 36 {
        return None;
    }
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 4 || uuid.get_variant() != uuid::Variant::RFC4122 {
        return None;
    }
    let bits = uuid.as_u128();
    let high = (bits >> 80) & ((1 << 48) - 1);
    let middle = (bits >> 64) & 0xfff;
    let low = bits & ((1 << 62) - 1);
    let payload = (high << 74) | (middle << 62) | low;
    u64::try_from(payload >> 58).ok()
}

/// `?timeout=` in seconds, bounded by [`MAX_WAIT`]: absent, negative (Incus's -1 is
/// "no limit"), not a number or too large to represent all mean [`MAX_WAIT`].
pub fn wait_timeout(text: Option<&str>) -> Duration {
    text.and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|t| *t >= 0.0)
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
}

/// The member that runs an operation: its id (0 while standalone) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    pub id: u64,
    pub name: String,
}

/// Who started an operation (username and protocol, as Incus compares them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requestor {
    pub username: String,
    pub protocol: String,
}

impl Requestor {
    pub fn of(id: &trust::Identity) -> Requestor {
        Requestor {
            username: id.username.clone(),
            protocol: id.method.as_str().to_string(),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// What serves one connected websocket of an operation: the fd name and the socket.
pub type Connect = Arc<dyn Fn(String, axum::extract::ws::WebSocket) -> BoxFuture + Send + Sync>;

/// What a handler asks for.
pub struct Spec {
    pub class: Class,
    pub description: String,
    pub resources: Option<BTreeMap<String, Option<Vec<String>>>>,
    pub metadata: Option<BTreeMap<String, Value>>,
    /// Whether `DELETE` may cancel it (the run observes [`Progress::cancelled`]).
    pub may_cancel: bool,
    /// Websocket operations: the fd names given secrets (`metadata.fds`), and what
    /// serves a connected one.
    pub websockets: Vec<String>,
    pub connect: Option<Connect>,
    /// When set, only this caller may connect the websockets (Incus's requestor check).
    pub requestor: Option<Requestor>,
}

impl Spec {
    pub fn task(description: &str) -> Spec {
        Spec {
            class: Class::Task,
            description: description.into(),
            resources: None,
            metadata: None,
            may_cancel: false,
            websockets: Vec::new(),
            connect: None,
            requestor: None,
        }
    }
}

/// What a run learns and says while it runs.
#[derive(Clone)]
pub struct Progress {
    id: String,
    engine: Engine,
    cancel: watch::Receiver<bool>,
}

impl Progress {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Merges `metadata` into the operation's (progress, say) and publishes it.
    pub fn extend_metadata(&self, metadata: BTreeMap<String, Value>) {
        self.engine.update(&self.id, |e| {
            if e.status.is_final() {
                return false;
            }
            e.op.metadata.get_or_insert_with(BTreeMap::new).extend(metadata);
            true
        });
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves once cancellation is asked for (never, for one that is not cancelled).
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a websocket connection is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The caller is not who started the operation.
    RequestorMismatch,
    /// No fd has this secret.
    Forbidden,
    /// Not a running websocket operation, or the fd is connected already.
    Conflict(&'static str),
}

struct Entry {
    op: Operation,
    status: Status,
    secrets: Vec<(String, String)>,
    connected: Vec<String>,
    connect: Option<Connect>,
    requestor: Option<Requestor>,
    cancel: watch::Sender<bool>,
    done: watch::Sender<bool>,
    finished_at: Option<Instant>,
    keep: Duration,
}

/// The operations this member runs. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    table: Arc<Mutex<HashMap<String, Entry>>>,
    events: EventHub,
}

impl Engine {
    pub fn new(events: EventHub) -> Engine {
        Engine {
            table: Default::default(),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `run` as a new operation of member `here`; returns it as it is
    /// once running (what the 202 answer carries).
    pub fn start<F, Fut>(&self, here: Here, spec: Spec, run: F) -> Operation
    where
        F: FnOnce(Progress) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let id = fresh_id(here.id);
        let now = time::OffsetDateTime::now_utc();
        let secrets: Vec<(String, String)> = spec
            .websockets
            .iter()
            .map(|fd| (fd.clone(), trust::random_hex(32)))
            .collect();
        let mut metadata = spec.metadata;
        if !secrets.is_empty() {
            let fds: BTreeMap<&str, &str> = secrets.iter().map(|(f, s)| (f.as_str(), s.as_str())).collect();
            metadata
                .get_or_insert_with(BTreeMap::new)
                .insert("fds".into(), serde_json::json!(fds));
        }
        let op = Operation {
            id: id.clone(),
            class: spec.class.as_str().into(),
            description: spec.description,
            created_at: now,
            updated_at: now,
            status: String::new(),
            status_code: 0,
            resources: spec.resources,
            metadata,
            may_cancel: spec.may_cancel,
            err: String::new(),
            location: here.name.clone(),
        };
        let (cancel, cancel_rx) = watch::channel(false);
        let entry = Entry {
            op,
            status: Status::Pending,
            secrets,
            connected: Vec::new(),
            connect: spec.connect,
            requestor: spec.requestor,
            cancel,
            done: watch::channel(false).0,
            finished_at: None,
            keep: KEEP,
        };
        {
            let mut table = self.lock();
            sweep(&mut table, Instant::now());
            table.insert(id.clone(), entry);
        }
        self.transition(&id, Status::Pending, None);
        self.transition(&id, Status::Running, None);
        let shown = self.get(&id).expect("just started");
        let progress = Progress {
            id: id.clone(),
            engine: self.clone(),
            cancel: cancel_rx.clone(),
        };
        let engine = self.clone();
        tokio::spawn(async move {
            let run = run(progress);
            tokio::pin!(run);
            let mut cancel = cancel_rx;
            let result = tokio::select! {
                r = &mut run => r,
                _ = async { cancel.wait_for(|c| *c).await.is_ok() } => {
                    // Let the run wind down on its own, but not forever.
                    tokio::time::timeout(CANCEL_GRACE, run).await.unwrap_or(Ok(()))
                }
            };
            let cancelled = *cancel.borrow();
            match result {
                _ if cancelled => engine.transition(&id, Status::Cancelled, None),
                Ok(()) => engine.transition(&id, Status::Success, None),
                Err(e) => engine.transition(&id, Status::Failure, Some(e)),
            };
        });
        shown
    }

    /// Records an operation that finished already (what `PUT /1.0/cluster` answers
    /// with), kept for `keep` so that waiting on it works.
    pub fn record_finished(&self, here: Here, description: &str, keep: Duration) -> Operation {
        let id = fresh_id(here.id);
        let now = time::OffsetDateTime::now_utc();
        let op = Operation {
            id: id.clone(),
            class: "task".into(),
            description: description.into(),
            created_at: now,
            updated_at: now,
            status: api::types::status::name(Status::Success.code()).into(),
            status_code: Status::Success.code(),
            resources: None,
            metadata: None,
            may_cancel: false,
            err: String::new(),
            location: here.name.clone(),
        };
        let mut table = self.lock();
        sweep(&mut table, Instant::now());
        table.insert(
            id,
            Entry {
                op: op.clone(),
                status: Status::Success,
                secrets: Vec::new(),
                connected: Vec::new(),
                connect: None,
                requestor: None,
                cancel: watch::channel(false).0,
                done: watch::channel(true).0,
                finished_at: Some(Instant::now()),
                keep,
            },
        );
        op
    }

    /// Changes `id`'s entry with `change` (which says whether it changed anything) and
    /// publishes the result.
    fn update(&self, id: &str, change: impl FnOnce(&mut Entry) -> bool) {
        let shown = {
            let mut table = self.lock();
            let Some(e) = table.get_mut(id) else { return };
            if !change(e) {
                return;
            }
            e.op.updated_at = time::OffsetDateTime::now_utc();
            render(e)
        };
        self.publish(&shown);
    }

    fn transition(&self, id: &str, to: Status, err: Option<String>) {
        let mut finished = false;
        self.update(id, |e| {
            // Pending is where an entry starts: publishing it is its first "transition".
            let next = if e.status == to && to == Status::Pending {
                to
            } else {
                match e.status.step(to) {
                    Ok(s) => s,
                    Err(bad) => {
                        tracing::debug!(operation = %id, error = %bad, "transition refused");
                        return false;
                    }
                }
            };
            e.status = next;
            if let Some(err) = err {
                e.op.err = err;
            }
            if next.is_final() {
                e.finished_at = Some(Instant::now());
                e.connect = None;
                finished = true;
            }
            true
        });
        if finished {
            if let Some(e) = self.lock().get(id) {
                e.done.send_replace(true);
            }
        }
    }

    fn publish(&self, op: &Operation) {
        self.events.send(
            "operation",
            "default",
            serde_json::to_value(op).expect("operations serialize"),
        );
    }

    /// The operation `id`, as it is now.
    pub fn get(&self, id: &str) -> Option<Operation> {
        let mut table = self.lock();
        sweep(&mut table, Instant::now());
        table.get(id).map(render)
    }

    /// Every operation this member holds.
    pub fn list(&self) -> Vec<Operation> {
        let mut table = self.lock();
        sweep(&mut table, Instant::now());
        table.values().map(render).collect()
    }

    /// Waits until `id` is final or `timeout` passes; the operation as it is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<Operation> {
        let mut done = self.lock().get(id)?.done.subscribe();
        let _ = tokio::time::timeout(timeout, done.wait_for(|d| *d)).await;
        // Kept for [`KEEP`] after the end: a waiter that was woken still finds it.
        self.get(id)
    }

    /// Asks `id` to cancel (`DELETE`): Cancelling now, Cancelled when its run ends.
    pub fn cancel(&self, id: &str) -> Result<(), api::ApiError> {
        let mut result = Ok(());
        let mut found = false;
        self.update(id, |e| {
            found = true;
            if e.status != Status::Running {
                result = Err(api::ApiError::bad_request(
                    "Only running operations can be cancelled",
                ));
                return false;
            }
            if !e.op.may_cancel {
                result = Err(api::ApiError::bad_request("This operation can't be cancelled"));
                return false;
            }
            e.status = Status::Cancelling;
            e.cancel.send_replace(true);
            true
        });
        if !found {
            return Err(api::ApiError::not_found_msg("Operation not found"));
        }
        result
    }

    /// Checks a websocket connection to `id` with `secret` by `caller`, and claims the
    /// fd it opens: what serves it and its name.
    pub fn claim_websocket(
        &self,
        id: &str,
        secret: &str,
        caller: &Requestor,
    ) -> Result<(String, Connect), Refusal> {
        self.websocket(id, secret, caller, true)
    }

    /// As [`Engine::claim_websocket`], claiming nothing.
    pub fn check_websocket(&self, id: &str, secret: &str, caller: &Requestor) -> Result<(), Refusal> {
        self.websocket(id, secret, caller, false).map(|_| ())
    }

    fn websocket(
        &self,
        id: &str,
        secret: &str,
        caller: &Requestor,
        claim: bool,
    ) -> Result<(String, Connect), Refusal> {
        let mut table = self.lock();
        sweep(&mut table, Instant::now());
        let e = table.get_mut(id).ok_or(Refusal::NotFound)?;
        if e.requestor.as_ref().is_some_and(|r| r != caller) {
            return Err(Refusal::RequestorMismatch);
        }
        // Every secret is compared, so the time taken says nothing about which matched.
        let mut matched = None;
        for (fd, s) in &e.secrets {
            if trust::constant_time_eq(s.as_bytes(), secret.as_bytes()) {
                matched = Some(fd.clone());
            }
        }
        let fd = matched.ok_or(Refusal::Forbidden)?;
        if e.status != Status::Running {
            return Err(Refusal::Conflict("Only running operations can be connected"));
        }
        if e.connected.contains(&fd) {
            return Err(Refusal::Conflict("This websocket is already connected"));
        }
        let connect = e
            .connect
            .clone()
            .ok_or(Refusal::Conflict("Only websocket operations can be connected"))?;
        if claim {
            e.connected.push(fd.clone());
        }
        Ok((fd, connect))
    }

    /// Whether `id` is held here (running or recently finished).
    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }
}

fn render(e: &Entry) -> Operation {
    let mut op = e.op.clone();
    op.status = api::types::status::name(e.status.code()).into();
    op.status_code = e.status.code();
    op.may_cancel = e.op.may_cancel && e.status == Status::Running;
    op
}

/// Drops what finished longer ago than it is kept.
fn sweep(table: &mut HashMap<String, Entry>, now: Instant) {
    table.retain(|_, e| !expired(e.finished_at, e.keep, now));
}

/// Whether something that finished at `finished_at` and is kept `keep` is gone by `now`.
fn expired(finished_at: Option<Instant>, keep: Duration, now: Instant) -> bool {
    finished_at.is_some_and(|at| now.saturating_duration_since(at) >= keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn t10_ids_carry_their_owner_and_look_like_any_uuid() {
        for owner in [0, 1, 2, 7, 1 << 40, u64::MAX] {
            for random in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
                let id = new_id(owner, random);
                let uuid = uuid::Uuid::parse_str(&id).unwrap();
                assert_eq!(uuid.get_version_num(), 4, "{id}");
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
                assert_eq!(id, id.to_lowercase());
                assert_eq!(owner_of(&id), Some(owner), "{id}");
            }
        }
        assert_ne!(new_id(3, 1), new_id(3, 2));
        assert_ne!(new_id(3, 1), new_id(4, 1));
    }

    #[test]
    fn t30_malformed_ids_have_no_owner() {
        for id in [
            "",
            "x",
            "not-a-uuid-at-all-but-36-characters!",
            "5e2bb8fb63634ec08d3f541a7ed91bbe",
            "{5e2bb8fb-6363-4ec0-8d3f-541a7ed91bbe}",
            // version 1, and a non-RFC variant
            "5e2bb8fb-6363-1ec0-8d3f-541a7ed91bbe",
            "5e2bb8fb-6363-4ec0-cd3f-541a7ed91bbe",
            "../../1.0/certificates/xxxxxxxxxxxxxx",
        ] {
            assert_eq!(owner_of(id), None, "{id}");
        }
    }

    #[test]
    fn t10_transitions_follow_incus() {
        assert_eq!(Pending.step(Running), Ok(Running));
        assert_eq!(Running.step(Success), Ok(Success));
        assert_eq!(Running.step(Failure), Ok(Failure));
        assert_eq!(Running.step(Cancelling), Ok(Cancelling));
        assert_eq!(Cancelling.step(Cancelled), Ok(Cancelled));
        assert!(Running.step(Pending).is_err());
        assert!(Pending.step(Success).is_err());
        assert_eq!(
            (Pending.code(), Running.code(), Cancelling.code()),
            (105, 103, 104)
        );
        assert_eq!(
            (Success.code(), Failure.code(), Cancelled.code()),
            (200, 400, 401)
        );
    }

    #[test]
    fn t30_nothing_leaves_a_final_status() {
        let all = [Pending, Running, Cancelling, Success, Failure, Cancelled];
        for from in all.iter().filter(|s| s.is_final()) {
            for to in all {
                assert_eq!(from.step(to), Err(BadTransition { from: *from, to }));
            }
        }
        assert!(!Pending.is_final() && !Running.is_final() && !Cancelling.is_final());
    }

    #[test]
    fn t10_finished_entries_expire_after_keep() {
        let at = Instant::now();
        assert!(!expired(None, KEEP, at + Duration::from_secs(3600)));
        assert!(!expired(Some(at), KEEP, at));
        assert!(!expired(Some(at), KEEP, at + KEEP - Duration::from_millis(1)));
        assert!(expired(Some(at), KEEP, at + KEEP));
    }

    #[test]
    fn wait_timeouts_are_bounded_whatever_is_asked() {
        assert_eq!(wait_timeout(Some("1.5")), Duration::from_millis(1500));
        assert_eq!(wait_timeout(Some("0")), Duration::ZERO);
        for text in [
            None,
            Some("-1"),
            Some("1e20"),
            Some("1e308"),
            Some("inf"),
            Some("NaN"),
            Some("-inf"),
            Some("soon"),
            Some(""),
            Some("3601"),
        ] {
            assert_eq!(wait_timeout(text), MAX_WAIT, "{text:?}");
        }
    }

    fn here(id: u64) -> Here {
        Here {
            id,
            name: "node1".into(),
        }
    }

    fn engine() -> (Engine, crate::events::Subscription) {
        let hub = EventHub::new();
        hub.set_location("node1");
        let q = [("type".to_string(), "operation".to_string())].into();
        let sub = hub.subscribe(&crate::events::Filter::from_query(&q));
        (Engine::new(hub), sub)
    }

    async fn statuses(sub: &mut crate::events::Subscription, until: u16) -> Vec<u16> {
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("an event")
                .expect("open");
            assert_eq!(e.event.kind, "operation");
            assert_eq!(e.event.location, "node1");
            let code = e.event.metadata["status_code"].as_u64().unwrap() as u16;
            seen.push(code);
            if code == until {
                return seen;
            }
        }
    }

    #[tokio::test]
    async fn t10_a_run_reports_progress_and_succeeds() {
        let (engine, mut sub) = engine();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let op = engine.start(here(7), Spec::task("Demo"), |p| async move {
            p.extend_metadata([("progress".to_string(), serde_json::json!("50%"))].into());
            let _ = wait.await;
            Ok(())
        });
        assert_eq!(owner_of(&op.id), Some(7));
        assert_eq!((op.status_code, op.location.as_str()), (103, "node1"));
        let seen = statuses(&mut sub, 103).await;
        assert_eq!(seen, [105, 103]);
        let progress = sub.recv().await.unwrap();
        assert_eq!(progress.event.metadata["metadata"]["progress"], "50%");
        go.send(()).unwrap();
        let done = engine.wait(&op.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!((done.status.as_str(), done.status_code), ("Success", 200));
        assert!(!done.may_cancel);
        assert_eq!(statuses(&mut sub, 200).await, [200]);
    }

    #[tokio::test]
    async fn t20_failure_and_cancel() {
        let (engine, mut sub) = engine();
        let failed = engine.start(here(1), Spec::task("Fails"), |_| async {
            Err("it broke".to_string())
        });
        let done = engine.wait(&failed.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!((done.status_code, done.err.as_str()), (400, "it broke"));
        assert_eq!(statuses(&mut sub, 400).await, [105, 103, 400]);

        let mut spec = Spec::task("Cancellable");
        spec.may_cancel = true;
        let op = engine.start(here(1), spec, |p| async move {
            p.cancelled().await;
            Ok(())
        });
        assert!(op.may_cancel);
        engine.cancel(&op.id).unwrap();
        let done = engine.wait(&op.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!((done.status.as_str(), done.status_code), ("Cancelled", 401));
        assert_eq!(statuses(&mut sub, 401).await, [105, 103, 104, 401]);
        // Final: no second cancel, no more metadata.
        assert!(engine.cancel(&op.id).is_err());
        assert!(engine.cancel("unknown").is_err());

        let fixed = engine.start(here(1), Spec::task("Not cancellable"), |_| std::future::pending());
        assert_eq!(
            engine.cancel(&fixed.id).unwrap_err().message,
            "This operation can't be cancelled"
        );
    }

    #[tokio::test]
    async fn t90_websocket_secrets() {
        let (engine, _sub) = engine();
        let connect: Connect = Arc::new(|_, _| Box::pin(async {}));
        let mut spec = Spec::task("Sockets");
        spec.class = Class::Websocket;
        spec.websockets = vec!["0".into(), "control".into()];
        spec.connect = Some(connect.clone());
        spec.requestor = Some(Requestor {
            username: "alice".into(),
            protocol: "tls".into(),
        });
        let op = engine.start(here(1), spec, |_| std::future::pending());
        let other = engine.start(here(1), Spec::task("Other"), |_| std::future::pending());
        let fds = &op.metadata.as_ref().unwrap()["fds"];
        let secret = fds["0"].as_str().unwrap().to_string();
        assert_eq!(secret.len(), 64);
        let alice = Requestor {
            username: "alice".into(),
            protocol: "tls".into(),
        };
        let mallory = Requestor {
            username: String::new(),
            protocol: "untrusted".into(),
        };
        assert_eq!(
            engine.claim_websocket(&op.id, &secret, &mallory).err(),
            Some(Refusal::RequestorMismatch)
        );
        assert_eq!(
            engine.claim_websocket(&op.id, "nope", &alice).err(),
            Some(Refusal::Forbidden)
        );
        assert_eq!(
            engine.claim_websocket(&op.id, "", &alice).err(),
            Some(Refusal::Forbidden)
        );
        assert_eq!(
            engine.claim_websocket(&other.id, &secret, &alice).err(),
            Some(Refusal::Forbidden)
        );
        assert_eq!(
            engine.claim_websocket("x", &secret, &alice).err(),
            Some(Refusal::NotFound)
        );
        assert_eq!(engine.claim_websocket(&op.id, &secret, &alice).unwrap().0, "0");
        assert!(matches!(
            engine.claim_websocket(&op.id, &secret, &alice),
            Err(Refusal::Conflict(_))
        ));
    }
}
