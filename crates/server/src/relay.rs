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
    loop {
        match ctx.peers.open_events(&address).await {
            Ok(mut ws) => {
                tracing::debug!(member = %name, "relaying events");
                backoff = Duration::from_millis(100);
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(text)) => {
                            if let Ok(event) = serde_json::from_str::<api::types::Event>(&text) {
                                ctx.events.relay(event);
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                tracing::debug!(member = %name, "event stream ended; reopening");
            }
            Err(e) => tracing::debug!(member = %name, error = %e, "cannot open event stream"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
