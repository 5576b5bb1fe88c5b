//! A client for the Incus REST API as stapes serves it: the remotes of a configuration
//! directory, certificate pinning, requests decoded from the Incus envelope, operation
//! waits and the events websocket.
//!
//! ```text
//!   Config (config.yml, servercerts/, client.crt/key)
//!      │ Client::new(&config, "remote")
//!      ▼
//!   Client ── connect() ──> Stream (TLS over TCP, pinned | unix socket), addresses raced
//!      │                        │
//!      ├─ request / call / query ─ HTTP/1.1 (hyper) ─> Envelope -> metadata | ClientError::Api
//!      ├─ wait_operation ──────── GET /1.0/operations/{id}/wait?timeout=N
//!      └─ events ──────────────── websocket on the same stream -> api::types::Event
//!   probe(endpoints) : first contact, records the server certificate for `remote add`
//! ```
//!
//! A remote with `auth_type: oidc` presents no client certificate; its requests carry an
//! OpenID access token, and a 401 from the server leads to a refresh or a device login
//! and one retry ([`oidc`]).
//!
//! # A client that never stalls on a sick member
//!
//! A remote may have several addresses (config.yml `addr: https://a:8443,https://b:8443`;
//! a host name with several A/AAAA records counts as several). Every connection goes
//! through [`connect::connect_then`], which races them RFC 8305 style: the first
//! candidate is dialled, and every [`connect::ATTEMPT_DELAY`] (250 ms) without a winner,
//! or at once when an attempt fails, the next one is started beside it; each attempt
//! (TCP, TLS and, for GET/HEAD requests, the exchange) has its own deadline
//! ([`connect::CONNECT_TIMEOUT`], 3 s, for the connection); the first success wins and
//! the others are cancelled. A remote made from a [`Config`] remembers, in
//! `remote-state/<name>.json`, the address that worked last (tried first) and those that
//! failed recently (tried last): [`connect::order_endpoints`]. One pinned fingerprint
//! covers every address (cluster members share the cluster certificate).
//!
//! A GET or HEAD whose connection breaks is retried on another address (operation waits
//! once); any other request is sent once, and a broken connection is reported as
//! [`ClientError::MaybeApplied`]. Requests are bounded as a whole by
//! [`client::REQUEST_TIMEOUT`] (30 s) unless [`Client::with_timeout`] says otherwise.
//!
//! Architecture invariant: this crate names no TLS library types. TLS configuration comes
//! from `transport::tls`; trust is a fingerprint ([`connect::ServerCheck`]).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use stapes_client::{Client, Config};
//!
//! # async fn run() -> Result<(), stapes_client::ClientError> {
//! let config = Config::load(stapes_client::config::default_dir())?;
//! // Every address of the remote is raced; the one that answers first is used.
//! let client = Client::new(&config, &config.default_remote)?.with_timeout(Duration::from_secs(10));
//! let (server, _etag) = client.server().await?;
//! println!("auth: {}", server["auth"]);
//!
//! // The members of a cluster, e.g. to add their URLs to the remote's addresses.
//! if server["environment"]["server_clustered"] == true {
//!     let members = client.get("/1.0/cluster/members?recursion=1").await?;
//!     for m in members.as_array().into_iter().flatten() {
//!         println!("member {} at {}", m["server_name"], m["url"]);
//!     }
//! }
//!
//! let mut events = client.events(&Default::default()).await?;
//! if let Some(event) = events.next().await {
//!     println!("{} sent {:?}", events.endpoint().url(), event?);
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
pub mod exec;
mod http;
pub mod images;
pub mod instances;
pub mod oidc;
pub mod profiles;
pub mod storage;
pub mod transfer;
pub mod typed;

pub use addr::{normalize_address, Endpoint};
pub use client::{probe, ApiResponse, Client, Probe, Request, Response};
pub use config::{Config, Remote};
pub use error::ClientError;
pub use events::{EventStream, EventsOptions, WebSocket};
pub use oidc::{DeviceLoginInfo, LoginPrompt};
pub use transfer::{Download, Part, Upgraded, Upload};

/// Re-exported so callers can name methods and headers without their own `http` dependency.
pub use ::http::{header, Method, StatusCode};
