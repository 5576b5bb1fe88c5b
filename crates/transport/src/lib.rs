//! Transport: listeners, TLS policy and peer credentials.
//!
//! ```text
//!  TCP accept ──spawn──> TLS handshake (bounded) ──> Conn { TlsStream, ConnFacts }
//!  unix accept ─spawn──> SO_PEERCRED -> user name ──> Conn { UnixStream, ConnFacts }
//! ```
//!
//! Every accepted connection is handled in its own task, so a client that never finishes
//! its handshake holds up nobody else.
//!
//! Architecture invariant: this is the only crate that names rustls types, and the only
//! place a `CryptoProvider` is built ([`tls::provider`]). The rest of the workspace deals
//! in PEM, DER and fingerprints.

pub mod bundle;
pub mod listen;
pub mod proxy;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod unix;
pub mod web;

pub use listen::{Conn, ConnStream};
