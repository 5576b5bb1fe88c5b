//! Full-mesh events: every member relays the lifecycle and operation events that
//! originate on every other member, so `/1.0/events` on any member shows the whole
//! cluster, each event with its `location`.
//!
//! ```text
//!   member A ──ws /internal/events (mTLS)──> B's own events ──> A's hub ──> A's listeners
//! ```
//!
//! One relay task per other member; a broken stream is reopened with backoff (capped at
//! 2 s), so a member that dies and returns is picked up again. `/internal/events` sends
//! only events that originated on that member, so nothing is relayed twice.
//!
//! A member that hangs (stopped, wedged) keeps its TCP connections open, so a stream
//! that merely stays open proves nothing: the relay pings it every [`ping_every`] and
//! declares the member lost when nothing at all (event, pong) has come for
//! `cluster.forward_timeout`, the bound every forwarded request has. A member that is
//! only slow answers pings from its network task long before that. Declaring it lost
//! fails the operations it was seen running and ends, through [`Liveness`], what this
//! member relays to it (tunnelled exec and SFTP sessions, forwarded waits), each with an
//! error naming it.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::context::Ctx;

/// Keeps one relay per other member until shutdown.
pub async fn run(ctx: Ctx) {
    let mut relays: HashMap<String, (String, JoinHandle<()>)> = HashMap::new();
    let mut stop = ctx.closing.subscribe();
    loop {
        let state = ctx.store.state();
        let me = ctx.server_name();
        let wanted: HashMap<String, String> = if ctx.store.clustered() {
            state
                .members
                .values()
                .filter(|m| m.name != me)
                .map(|m| (m.name.clone(), m.address.clone()))
                .collect()
        } else {
            HashMap::new()
        };
        relays.retain(|name, (address, task)| {
            let keep = wanted.get(name) == Some(address) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, address) in wanted {
            relays.entry(name.clone()).or_insert_with(|| {
                let task = tokio::spawn(relay(ctx.clone(), name, address.clone()));
                (address, task)
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = transport::listen::stopped(&mut stop) => break,
        }
    }
    for (_, (_, task)) in relays {
        task.abort();
    }
}

async fn relay(ctx: Ctx, name: String, address: String) {
    let mut backoff = Duration::from_millis(100);
    // The member's operations seen running, by id (their last rendering): what a client
    // may be waiting on through this member.
    let mut running: HashMap<String, serde_json::Value> = HashMap::new();
    // Declared lost and not heard from since: each failed reopening says so again, for
    // what was sent to it meanwhile.
    let mut hung = false;
    loop {
        match ctx.peers.open_events(&address).await {
            Ok(mut ws) => {
                tracing::debug!(member = %name, "relaying events");
                backoff = Duration::from_millis(100);
                hung = false;
                if !running.is_empty() {
                    survivors(&ctx, &name, &address, &mut running).await;
                }
                // What ended while no stream was open (a member that just joined or came
                // back): a client may be waiting on it through this member.
                recently_finished(&ctx, &name, &address).await;
                let limit = ctx.settings().forward_timeout;
                let mut ping = tokio::time::interval(ping_every(limit));
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut heard = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        msg = ws.next() => {
                            heard = tokio::time::Instant::now();
                            match msg {
                                Some(Ok(Message::Text(text))) => {
                                    if let Ok(event) = serde_json::from_str::<api::types::Event>(&text) {
                                        track(&mut running, &event);
                                        ctx.events.relay(event);
                                    }
                                }
                                None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
                                Some(Ok(_)) => {}
                            }
                        }
                        _ = ping.tick() => {
                            if heard.elapsed() > limit {
                                tracing::warn!(member = %name, silent = ?heard.elapsed(), "a member stopped answering; declaring it lost");
                                hung = true;
                                break;
                            }
                            let sent = tokio::time::timeout(limit, ws.send(Message::Ping(Vec::new().into()))).await;
                            if !matches!(sent, Ok(Ok(()))) {
                                break;
                            }
                        }
                    }
                }
                if hung {
                    ctx.liveness.declare_lost(&name);
                    lost(&ctx, &name, running.drain().map(|(_, op)| op));
                } else {
                    tracing::debug!(member = %name, "event stream ended; reopening");
                }
            }
            Err(e) => {
                tracing::debug!(member = %name, error = %e, "cannot open event stream");
                if hung {
                    ctx.liveness.declare_lost(&name);
                }
                // Unreachable after its stream broke: what it ran died with it.
                lost(&ctx, &name, running.drain().map(|(_, op)| op));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// How often a member's event stream is pinged when its silence limit is `limit`: a few
/// times within it, so that one late pong is not the end.
fn ping_every(limit: Duration) -> Duration {
    (limit / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// Which members were declared lost while their connections stayed open, for what is
/// relayed to them: each declaration ends whatever watches that member.
pub struct Liveness {
    /// Member name -> how many times it was declared lost.
    lost: watch::Sender<HashMap<String, u64>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            lost: watch::channel(HashMap::new()).0,
        }
    }
}

impl Liveness {
    /// `member` stopped answering.
    pub fn declare_lost(&self, member: &str) {
        self.lost
            .send_modify(|m| *m.entry(member.to_string()).or_default() += 1);
    }

    /// Resolves when `member` is declared lost after this call (never, otherwise). Made
    /// before the work it watches starts, so that no declaration slips between.
    pub fn watch(&self, member: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.subscribe();
        let start = rx.borrow_and_update().get(member).copied().unwrap_or(0);
        let member = member.to_string();
        async move {
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if rx.borrow_and_update().get(&member).copied().unwrap_or(0) > start {
                    return;
                }
            }
        }
    }
}

/// Keeps `running` up to date from one relayed event.
fn track(running: &mut HashMap<String, serde_json::Value>, event: &api::types::Event) {
    if event.kind != "operation" {
        return;
    }
    let op = &event.metadata;
    let (Some(id), Some(code)) = (op["id"].as_str(), op["status_code"].as_u64()) else {
        return;
    };
    if code >= 200 {
        running.remove(id);
    } else if running.len() < MAX_TRACKED || running.contains_key(id) {
        running.insert(id.to_string(), op.clone());
    }
}

/// At most this many running operations are remembered per member.
const MAX_TRACKED: usize = 10_000;

/// The stream came back (a blip, or the member restarted): each operation seen running
/// is asked for again; one the member no longer has died with its previous life.
async fn survivors(ctx: &Ctx, name: &str, address: &str, running: &mut HashMap<String, serde_json::Value>) {
    let timeout = ctx.settings().forward_timeout;
    let mut gone = Vec::new();
    for (id, op) in running.iter() {
        let Ok(req) = http::Request::get(format!("/1.0/operations/{id}"))
            .header(crate::auth::FWD_PROTOCOL, "cluster")
            .header(crate::auth::FWD_USERNAME, "cluster")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
        else {
            continue;
        };
        match ctx.peers.send(address, req, timeout).await {
            Ok(resp) if resp.status() == http::StatusCode::NOT_FOUND => gone.push(id.clone()),
            Ok(resp) => {
                // Finished meanwhile: its end is relayed as the member said it.
                let now = serde_json::from_slice::<api::Envelope>(resp.body())
                    .ok()
                    .map(|env| env.metadata)
                    .filter(|m| m["status_code"].as_u64().is_some_and(|c| c >= 200));
                if let Some(done) = now {
                    ctx.events.relay(operation_event(name, done));
                    gone.push(id.clone());
                    let _ = op;
                }
            }
            Err(_) => gone.push(id.clone()),
        }
    }
    let lost_ops: Vec<serde_json::Value> = gone.iter().filter_map(|id| running.remove(id)).collect();
    lost(
        ctx,
        name,
        lost_ops
            .into_iter()
            .filter(|op| op["status_code"].as_u64().is_some_and(|c| c < 200)),
    );
}

/// Relays the end of each operation `member` finished within the last few seconds (it
/// keeps them for [`crate::ops::KEEP`]): the stream opens only after a member joins or
/// returns, and an operation of that member may have ended before, with a client
/// waiting on it through this member. A client that saw the end already ignores it.
async fn recently_finished(ctx: &Ctx, member: &str, address: &str) {
    let Ok(req) = http::Request::get("/1.0/operations?recursion=1")
        .header(crate::auth::FWD_PROTOCOL, "cluster")
        .header(crate::auth::FWD_USERNAME, "cluster")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
    else {
        return;
    };
    let Ok(resp) = ctx.peers.send(address, req, ctx.settings().forward_timeout).await else {
        return;
    };
    let Ok(env) = serde_json::from_slice::<api::Envelope>(resp.body()) else {
        return;
    };
    let Ok(map) = serde_json::from_value::<HashMap<String, Vec<serde_json::Value>>>(env.metadata) else {
        return;
    };
    for op in map.into_values().flatten() {
        let own = op["location"].as_str() == Some(member) && op["class"] != "token";
        if own && op["status_code"].as_u64().is_some_and(|c| c >= 200) {
            ctx.events.relay(operation_event(member, op));
        }
    }
}

/// Publishes each operation of `member` that died with it as failed, with an error
/// naming the member, so that clients waiting on it through this member stop waiting.
fn lost(ctx: &Ctx, member: &str, ops: impl Iterator<Item = serde_json::Value>) {
    for op in ops {
        let failed = lost_operation(op, member, time::OffsetDateTime::now_utc());
        tracing::info!(member = %member, operation = %failed["id"], "an operation was lost with its member");
        ctx.events.relay(operation_event(member, failed));
    }
}

/// `op` as a failure: the member that ran it went away.
pub(crate) fn lost_operation(
    mut op: serde_json::Value,
    member: &str,
    now: time::OffsetDateTime,
) -> serde_json::Value {
    let code = api::types::status::FAILURE;
    op["status"] = serde_json::json!(api::types::status::name(code));
    op["status_code"] = serde_json::json!(code);
    op["may_cancel"] = serde_json::json!(false);
    op["err"] = serde_json::json!(format!(
        "Cluster member \"{member}\" stopped answering: the operation it ran is lost"
    ));
    if let Ok(at) = now.format(&time::format_description::well_known::Rfc3339) {
        op["updated_at"] = serde_json::json!(at);
    }
    op
}

fn operation_event(member: &str, op: serde_json::Value) -> api::types::Event {
    api::types::Event {
        kind: "operation".into(),
        timestamp: time::OffsetDateTime::now_utc(),
        metadata: op,
        location: member.to_string(),
        project: "default".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, code: u16) -> api::types::Event {
        operation_event(
            "node2",
            serde_json::json!({"id": id, "status": "Running", "status_code": code, "err": "", "may_cancel": false}),
        )
    }

    #[test]
    fn running_operations_are_tracked_until_they_end() {
        let mut running = HashMap::new();
        track(&mut running, &event("a", 105));
        track(&mut running, &event("a", 103));
        track(&mut running, &event("b", 103));
        assert_eq!(running.len(), 2);
        track(&mut running, &event("a", 200));
        assert!(!running.contains_key("a") && running.contains_key("b"));
        let mut other = event("c", 103);
        other.kind = "lifecycle".into();
        track(&mut running, &other);
        assert_eq!(running.len(), 1);
    }

    #[tokio::test]
    async fn a_watch_ends_on_its_member_declared_lost_after_it_was_made() {
        let l = Liveness::default();
        l.declare_lost("node2");
        let before = l.watch("node2");
        let other = l.watch("node3");
        tokio::pin!(before, other);
        let quick = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(quick, &mut before).await.is_err(),
            "an earlier loss does not count"
        );
        l.declare_lost("node2");
        tokio::time::timeout(Duration::from_secs(30), &mut before)
            .await
            .expect("the loss ends the watch");
        assert!(
            tokio::time::timeout(quick, &mut other).await.is_err(),
            "another member's loss does not count"
        );
    }

    #[test]
    fn pings_come_several_times_within_the_limit() {
        assert_eq!(ping_every(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(ping_every(Duration::from_secs(3)), Duration::from_millis(600));
        assert_eq!(ping_every(Duration::from_secs(3600)), Duration::from_secs(2));
        assert_eq!(ping_every(Duration::from_millis(100)), Duration::from_millis(200));
    }

    #[test]
    fn a_lost_operation_fails_naming_its_member() {
        let op = serde_json::json!({"id": "b", "status": "Running", "status_code": 103, "err": "", "may_cancel": true, "metadata": {"x": 1}});
        let failed = lost_operation(op, "node2", time::OffsetDateTime::UNIX_EPOCH);
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["status_code"], 400);
        assert_eq!(failed["may_cancel"], false);
        assert_eq!(failed["metadata"]["x"], 1);
        assert!(failed["err"].as_str().unwrap().contains("\"node2\""), "{failed}");
        assert_eq!(failed["updated_at"], "1970-01-01T00:00:00Z");
    }
}
