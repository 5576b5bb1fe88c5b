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

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
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
    loop {
        match ctx.peers.open_events(&address).await {
            Ok(mut ws) => {
                tracing::debug!(member = %name, "relaying events");
                backoff = Duration::from_millis(100);
                if !running.is_empty() {
                    survivors(&ctx, &name, &address, &mut running).await;
                }
                // What ended while no stream was open (a member that just joined or came
                // back): a client may be waiting on it through this member.
                recently_finished(&ctx, &name, &address).await;
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(text)) => {
                            if let Ok(event) = serde_json::from_str::<api::types::Event>(&text) {
                                track(&mut running, &event);
                                ctx.events.relay(event);
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                tracing::debug!(member = %name, "event stream ended; reopening");
            }
            Err(e) => {
                tracing::debug!(member = %name, error = %e, "cannot open event stream");
                // Unreachable after its stream broke: what it ran died with it.
                lost(&ctx, &name, running.drain().map(|(_, op)| op));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
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
