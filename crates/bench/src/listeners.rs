//! Event listeners held open on a side while the load runs (`LISTENERS`): each one takes
//! every event type over the unix socket, reads each frame and drops it, so that what is
//! measured is the daemon's cost of the fan-out, not the listeners' parsing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinSet;

use crate::lab::{unix_client, Member};

/// Listeners open on one daemon; closed when dropped.
pub struct Held {
    tasks: JoinSet<()>,
    frames: Arc<AtomicU64>,
}

impl Held {
    /// Event frames received so far, over all the listeners.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// How many listeners are still open.
    pub fn open(&self) -> usize {
        self.tasks.len()
    }
}

/// Opens `n` listeners taking every event type on `m`'s unix socket.
pub async fn hold(m: &Member, n: u32) -> anyhow::Result<Held> {
    let frames = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let client = unix_client(&m.socket, Duration::from_secs(10));
        let (mut ws, _) = client.websocket("/1.0/events").await?;
        let frames = frames.clone();
        tasks.spawn(async move {
            while let Some(Ok(_)) = ws.next().await {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    Ok(Held { tasks, frames })
}
