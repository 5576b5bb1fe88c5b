//! `/1.0/events`: a websocket streaming the events a listener asked for.
//!
//! A listener is woken by an event it may want, writes every event already waiting
//! (flushing every [`BATCH`]) and flushes once. Under a stream of events it is woken
//! at most once per [`GATHER`]: it writes what gathered meanwhile in one go, so that
//! the cost of many listeners is one wake-up and one write each per period rather than
//! per event (a lone event still goes out at once). One that falls behind skips what it
//! missed, and says so once per episode, under a target that never becomes an event.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::SinkExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use trust::Identity;

use crate::context::Ctx;
use crate::events::{Filter, MAX_LISTENERS, QUIET_TARGET};
use crate::response::{ApiError, Result};

/// How often an idle stream is pinged, so dead listeners are noticed.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Events written before one flush.
const BATCH: usize = 64;
/// A listener's read buffer. A listener sends next to nothing (pongs, a close), and the
/// websocket zero-fills this buffer on every read attempt, which comes with every wake-up:
/// at the default 128 KiB that memset was most of the cost of many listeners.
const LISTENER_READ_BUFFER: usize = 4 * 1024;
/// The least time between two wake-ups of a busy listener.
const GATHER: Duration = Duration::from_millis(10);
/// The most events written for one wake-up (the others wait for the next one).
const MOST_PER_WAKE: usize = crate::events::BACKLOG;

pub async fn stream(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response> {
    let Ok(upgrade) = upgrade else {
        // What Incus (gorilla/websocket) answers a plain GET.
        return Ok((
            StatusCode::BAD_REQUEST,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::SEC_WEBSOCKET_VERSION, "13"),
            ],
            "Bad Request\n",
        )
            .into_response());
    };
    let Some(place) = ctx.events.listener_place() else {
        tracing::warn!(target: QUIET_TARGET, max = MAX_LISTENERS, "refused an event listener: too many are open");
        return Err(ApiError::unavailable(format!(
            "Too many event listeners are connected (at most {MAX_LISTENERS}); try again later"
        ))
        .into());
    };
    let filter = Filter::from_query(&q);
    tracing::debug!(user = %id.username, ?filter, "event listener connected");
    Ok(upgrade
        .max_message_size(64 * 1024)
        .read_buffer_size(LISTENER_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            pump(ctx, socket, filter).await;
            drop(place);
        })
        .into_response())
}

/// `/internal/events`: this member's own lifecycle and operation events, for the
/// other members' relays.
pub async fn internal(
    State(ctx): State<Ctx>,
    upgrade: std::result::Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response> {
    let upgrade = upgrade.map_err(|_| crate::response::ApiError::bad_request("Expected a websocket"))?;
    let filter = Filter {
        types: vec!["lifecycle".into(), "operation".into()],
        project: String::new(),
        all_projects: true,
        only_own: true,
    };
    Ok(upgrade
        .read_buffer_size(LISTENER_READ_BUFFER)
        .on_upgrade(move |socket| pump(ctx, socket, filter))
        .into_response())
}

/// A listener's episodes of falling behind, said once each.
#[derive(Default)]
struct Lag {
    dropped: u64,
    behind: bool,
}

impl Lag {
    fn dropped(&mut self, n: u64) {
        if !self.behind {
            tracing::warn!(target: QUIET_TARGET, dropped = n, "event listener fell behind; it skips what it missed");
            self.behind = true;
        }
        self.dropped += n;
    }

    fn caught_up(&mut self) {
        if self.behind {
            tracing::info!(target: QUIET_TARGET, dropped = self.dropped, "event listener caught up");
            *self = Lag::default();
        }
    }
}

async fn pump(ctx: Ctx, mut socket: WebSocket, filter: Filter) {
    // Said when the member stops; the official client prints it as its error. (Made now:
    // by then the cluster may be torn down.)
    let reason = if ctx.store.clustered() {
        format!("Cluster member {:?} is shutting down", ctx.server_name())
    } else {
        "The server is shutting down".to_string()
    };
    let mut events = ctx.events.subscribe(&filter);
    let mut stop = ctx.closing.subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut lag = Lag::default();
    let mut last_wake: Option<tokio::time::Instant> = None;
    ping.tick().await;
    loop {
        tokio::select! {
            first = events.recv() => {
                // Busy: let what comes in the rest of the period gather first.
                if let Some(at) = last_wake {
                    tokio::time::sleep_until(at + GATHER).await;
                }
                last_wake = Some(tokio::time::Instant::now());
                let mut next = Some(first);
                let (mut written, mut unflushed) = (0, 0);
                let mut drained = false;
                while let Some(e) = next.take() {
                    match e {
                        Ok(p) if filter.accepts(&p.event) && (!filter.only_own || ctx.events.is_own(&p.event)) => {
                            if socket.feed(Message::Text(p.json.clone())).await.is_err() {
                                return;
                            }
                            written += 1;
                            unflushed += 1;
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => lag.dropped(n),
                        Err(RecvError::Closed) => return,
                    }
                    if unflushed == BATCH {
                        if socket.flush().await.is_err() {
                            return;
                        }
                        unflushed = 0;
                    }
                    if written < MOST_PER_WAKE {
                        next = match events.try_recv() {
                            Ok(p) => Some(Ok(p)),
                            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                            Err(TryRecvError::Empty) => {
                                drained = true;
                                None
                            }
                        };
                    }
                }
                if unflushed > 0 && socket.flush().await.is_err() {
                    return;
                }
                if drained {
                    lag.caught_up();
                }
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            _ = transport::listen::stopped(&mut stop) => {
                let frame = axum::extract::ws::CloseFrame {
                    code: 1001,
                    reason: reason.clone().into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}
