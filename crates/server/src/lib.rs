//! The Incus REST API server.
//!
//! ```text
//!            ┌──────────── transport ─────────────┐
//!  client ──>│ accept ─> TLS (bounded) ─> ConnFacts│──> http::serve_conn (hyper h1/h2, upgrades)
//!            └─────────────────────────────────────┘          │ facts in request extensions
//!                                                             v
//!                                      auth::layer: ConnFacts + trust store -> Identity
//!                                                             │
//!                                      log::layer: one line + metrics per request
//!                                                             v
//!                                      routes::*: handlers read Arc<State>, write Commands
//! ```
//!
//! [`Daemon`] owns the pieces: the store, the served certificate, the listeners (the
//! HTTPS one opens, moves and closes when `core.https_address` changes), the event hub
//! and the metrics. Handlers get them through [`context::Ctx`].

mod acme;
mod anycast;
mod auth;
pub mod context;
mod daemon;
pub mod events;
mod forward;
mod gate;
mod http;
pub mod images;
mod listeners;
mod log;
mod member_h2;
mod membership;
mod memo;
mod metrics;
mod oidc;
mod operations;
pub mod ops;
mod peers;
mod relay;
mod response;
mod route;
mod routes;
mod sftp_relay;
mod snapshot_tasks;
mod state_files;
mod tunnel;
mod unread;
mod volumes;

pub use cluster::store::DEFAULT_SNAPSHOT_LIMIT as DEFAULT_MAX_SNAPSHOT_SIZE;
pub use daemon::{Daemon, DaemonConfig};
pub use events::EventHub;
pub use gate::DEFAULT_MAX_STREAM_BODY;
pub use listeners::HTTPS_PLACES as DEFAULT_MAX_CONNECTIONS;
