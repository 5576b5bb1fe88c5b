//! Storage pools and the volumes a `dir` pool holds: `/1.0/storage-pools`
//! (`shared/api/storage_pool*.go`, `resource.go`).

use serde::{Deserialize, Serialize};

use super::{is_zero_u64, null_default, ConfigMap, Timestamp};

/// A pool's `status`: on a cluster, `Pending` until created on every member, then
/// `Created`; `Errored` when a member failed.
pub mod pool_status {
    pub const PENDING: &str = "Pending";
    pub const CREATED: &str = "Created";
    pub const ERRORED: &str = "Errored";
    pub const UNKNOWN: &str = "Unknown";
    pub const UNAVAILABLE: &str = "Unavailable";
}

/// `PUT /1.0/storage-pools/{name}`; the writable part of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePoolPut {
    #[serde(deserialize_with = "null_default")]
    pub config: ConfigMap,
    pub description: String,
}

/// `POST /1.0/storage-pools` (with `?target=` for a member's pending part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePoolsPost {
    #[serde(flatten)]
    pub put: StoragePoolPut,
    pub name: String,
    pub driver: String,
}

/// A storage pool (`GET /1.0/storage-pools/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePool {
    #[serde(flatten)]
    pub put: StoragePoolPut,
    pub name: String,
    pub driver: String,
    #[serde(deserialize_with = "null_default")]
    pub used_by: Vec<String>,
    pub status: String,
    /// The members it is defined on (`none` on a standalone server).
    #[serde(deserialize_with = "null_default")]
    pub locations: Vec<String>,
}

impl StoragePool {
    pub fn writable(&self) -> StoragePoolPut {
        self.put.clone()
    }
}

/// `GET /1.0/storage-pools/{name}/resources`: space and inodes, from the file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePoolState {
    pub space: StoragePoolSpace,
    pub inodes: StoragePoolInodes,
}

/// Go's `ResourcesStoragePool`, by its API name.
pub type ResourcesStoragePool = StoragePoolState;

/// Bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePoolSpace {
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub used: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePoolInodes {
    pub used: u64,
    pub total: u64,
}

/// `PUT /1.0/storage-pools/{pool}/volumes/{type}/{name}`; the writable part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolumePut {
    #[serde(deserialize_with = "null_default")]
    pub config: ConfigMap,
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub restore: String,
}

/// A volume in a pool: `container`, `image` (members hold these for instances and
/// images) or `custom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolume {
    #[serde(flatten)]
    pub put: StorageVolumePut,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "null_default")]
    pub used_by: Vec<String>,
    pub location: String,
    /// `filesystem` or `block`.
    pub content_type: String,
    pub project: String,
    pub created_at: Timestamp,
}

/// `POST /1.0/storage-pools/{pool}/volumes/{type}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolumesPost {
    #[serde(flatten)]
    pub put: StorageVolumePut,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: StorageVolumeSource,
    pub content_type: String,
}

/// Where a new volume comes from (a copy or a migration); empty for a blank volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolumeSource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub pool: String,
    pub certificate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(
        rename = "secrets",
        skip_serializing_if = "std::collections::BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub websockets: std::collections::BTreeMap<String, String>,
    pub volume_only: bool,
    pub refresh: bool,
    pub refresh_exclude_older: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub project: String,
    pub location: String,
}
