//! JSON shapes of the Incus API, field for field, one module per area.
//!
//! Each struct follows its Go definition in Incus's `shared/api`: the same JSON names,
//! the same field order (so printed YAML and JSON read as Incus's), and Go's encoding
//! rules made explicit:
//!
//! - a Go struct embedded in another (`InstancePut` in `Instance`) is a
//!   `#[serde(flatten)]` field named `put` (or after the embedded type), written in
//!   place, so `writable()` is a clone of it;
//! - `omitempty` is `skip_serializing_if`, and nothing else is skipped: a field Incus
//!   always writes is always written;
//! - a Go map or slice that Incus writes as `null` in real answers, or whose `null`
//!   means something (`profiles: null` asks for the default profile), is an `Option`;
//!   the others are plain maps and lists that read `null` as empty, as Go does;
//! - every struct reads missing fields as their zero value (`#[serde(default)]`), as Go's
//!   decoder does, and unknown fields are ignored;
//! - times are [`Timestamp`]s (Go's `RFC3339Nano`, zero time for "never").
//!
//! The unit tests decode real Incus 6.0 answers into these types, encode them again and
//! compare the JSON value for value, so a missing, misspelt or mistyped field fails.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

pub mod cluster;
pub mod image;
pub mod instance;
pub mod operation;
pub mod profile;
pub mod server;
pub mod storage;
pub mod timestamp;
pub mod trust;

pub use cluster::*;
pub use image::*;
pub use instance::*;
pub use operation::*;
pub use profile::*;
pub use server::*;
pub use storage::*;
pub use timestamp::Timestamp;
pub use trust::*;

/// `map[string]string`: configuration keys and their values.
pub type ConfigMap = BTreeMap<String, String>;

/// `map[string]map[string]string`: devices by name, each a map of its keys.
pub type DeviceMap = BTreeMap<String, BTreeMap<String, String>>;

/// Reads `null` as the empty value, as Go's decoder leaves a nil map or slice.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
pub(crate) mod samples;
