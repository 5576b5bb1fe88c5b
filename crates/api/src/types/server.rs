//! The server itself: `GET/PUT /1.0` and warnings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// `GET /1.0`. Untrusted callers get the fields without `auth_user_*` and `environment`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Server {
    pub config: BTreeMap<String, Value>,
    pub api_extensions: Vec<String>,
    pub api_status: String,
    pub api_version: String,
    pub auth: String,
    pub public: bool,
    pub auth_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<ServerEnvironment>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StorageDriver {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Remote")]
    pub remote: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerEnvironment {
    pub addresses: Vec<String>,
    pub architectures: Vec<String>,
    pub certificate: String,
    pub certificate_fingerprint: String,
    pub driver: String,
    pub driver_version: String,
    pub firewall: String,
    pub kernel: String,
    pub kernel_architecture: String,
    pub kernel_features: BTreeMap<String, String>,
    pub kernel_version: String,
    pub lxc_features: BTreeMap<String, String>,
    pub os_name: String,
    pub os_version: String,
    pub project: String,
    pub server: String,
    pub server_clustered: bool,
    pub server_event_mode: String,
    pub server_name: String,
    pub server_pid: u32,
    pub server_version: String,
    pub storage: String,
    pub storage_version: String,
    pub storage_supported_drivers: Vec<StorageDriver>,
}

/// `PUT /1.0` and `PATCH /1.0`. Values may arrive as strings, numbers or booleans.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerPut {
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
}

/// A warning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub status: String,
    pub uuid: String,
    pub location: String,
    pub project: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub count: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    pub last_message: String,
    pub severity: String,
    pub entity_url: String,
}

/// `PUT /1.0/warnings/{uuid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarningPut {
    pub status: String,
}
