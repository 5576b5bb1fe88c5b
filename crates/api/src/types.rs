//! JSON shapes of the Incus API, field for field.

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

/// A trust store entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub restricted: bool,
    pub projects: Vec<String>,
    pub certificate: String,
    pub description: String,
    pub fingerprint: String,
}

/// `PUT /1.0/certificates/{fingerprint}`; `PATCH` takes the same fields, all optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificatePut {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub restricted: Option<bool>,
    #[serde(default)]
    pub projects: Option<Vec<String>>,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /1.0/certificates`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificatesPost {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub restricted: bool,
    #[serde(default)]
    pub projects: Option<Vec<String>>,
    #[serde(default)]
    pub certificate: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub trust_token: String,
    #[serde(default)]
    pub token: bool,
}

/// The operation object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub class: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub status: String,
    pub status_code: u16,
    pub resources: Option<BTreeMap<String, Option<Vec<String>>>>,
    pub metadata: Option<BTreeMap<String, Value>>,
    pub may_cancel: bool,
    pub err: String,
    pub location: String,
}

/// An event on `/1.0/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub metadata: Value,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
}

/// The metadata of a `lifecycle` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLifecycle {
    pub action: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor: Option<EventLifecycleRequestor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLifecycleRequestor {
    pub username: String,
    pub protocol: String,
    pub address: String,
}

/// The metadata of a `logging` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogging {
    pub message: String,
    pub level: String,
    pub context: BTreeMap<String, String>,
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

/// Operation status codes as Incus numbers them.
pub mod status {
    pub const RUNNING: u16 = 103;
    pub const CANCELLING: u16 = 104;
    pub const PENDING: u16 = 105;
    pub const SUCCESS: u16 = 200;
    pub const FAILURE: u16 = 400;
    pub const CANCELLED: u16 = 401;

    pub fn name(code: u16) -> &'static str {
        match code {
            100 => "Operation created",
            101 => "Started",
            102 => "Stopped",
            RUNNING => "Running",
            CANCELLING => "Cancelling",
            PENDING => "Pending",
            SUCCESS => "Success",
            FAILURE => "Failure",
            CANCELLED => "Cancelled",
            _ => "Unknown",
        }
    }
}
