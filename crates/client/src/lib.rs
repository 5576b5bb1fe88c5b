//! A client for the Incus REST API as stapes serves it: the remotes of a configuration
//! directory, certificate pinning, requests decoded from the Incus envelope, operation
//! waits and the events websocket.
//!
//! ```text
//!   Config (config.yml, servercerts/, client.crt/key)
//!      │ Client::new(&config, "remote")
//!      ▼
//!   Client ── connect() ──> Stream (TLS over TCP, pinned | unix socket)
//!      │                        │
//!      ├─ request / call / query ─ HTTP/1.1 (hyper) ─> Envelope -> metadata | ClientError::Api
//!      ├─ wait_operation ──────── GET /1.0/operations/{id}/wait?timeout=N
//!      └─ events ──────────────── websocket on the same stream -> api::types::Event
//!   probe(endpoints) : first contact, records the server certificate for `remote add`
//! ```
//!
//! Every wait is bounded: 10 s per connection attempt ([`connect::CONNECT_TIMEOUT`]),
//! 30 s per request unless [`Client::with_timeout`] says otherwise
//! ([`client::REQUEST_TIMEOUT`]).
//!
//! Architecture invariant: this crate names no TLS library types. TLS configuration comes
//! from `transport::tls`; trust is a fingerprint ([`connect::ServerCheck`]).
//!
//! # Example
//!
//! ```no_run
//! use stapes_client::{Client, Config};
//!
//! # async fn run() -> Result<(), stapes_client::ClientError> {
//! let config = Config::load(stapes_client::config::default_dir())?;
//! let client = Client::new(&config, &config.default_remote)?;
//! let (server, _etag) = client.server().await?;
//! println!("auth: {}", server["auth"]);
//!
//! let mut events = client.events(&Default::default()).await?;
//! if let Some(event) = events.next().await {
//!     println!("{:?}", event?);
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod addr;
pub mod client;
pub mod config;
pub mod connect;
pub mod error;
pub mod events;
mod http;

pub use addr::{normalize_address, Endpoint};
pub use client::{probe, ApiResponse, Client, Probe, Request, Response};
pub use config::{Config, Remote};
pub use error::ClientError;
pub use events::{EventStream, EventsOptions};

/// Re-exported so callers can name methods and headers without their own `http` dependency.
pub use ::http::{header, Method, StatusCode};
