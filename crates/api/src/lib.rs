//! The Incus REST API as data: JSON types, the response envelope, API errors and the
//! server configuration table.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of HTTP libraries,
//! TLS or storage. Everything here is plain data plus pure functions, so the server, the
//! client library and the tests all agree on one definition of every shape.

pub mod config;
pub mod envelope;
pub mod error;
pub mod expiry;
pub mod extensions;
pub mod filter;
pub mod schedule;
pub mod settings;
pub mod types;
pub mod units;
pub mod unsupported;

pub use envelope::Envelope;
pub use error::ApiError;
pub use settings::Settings;
