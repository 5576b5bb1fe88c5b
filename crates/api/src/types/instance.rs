//! Instances: `/1.0/instances`, their state, exec, console and snapshots
//! (`shared/api/instance*.go`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{is_false, null_default, ConfigMap, DeviceMap, Timestamp};

/// Instance types (`type`).
pub mod kind {
    pub const CONTAINER: &str = "container";
    pub const VIRTUAL_MACHINE: &str = "virtual-machine";
}

/// `PUT /1.0/instances/{name}`; also the writable part of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancePut {
    pub architecture: String,
    #[serde(deserialize_with = "null_default")]
    pub config: ConfigMap,
    #[serde(deserialize_with = "null_default")]
    pub devices: DeviceMap,
    pub ephemeral: bool,
    /// `None` (`null`) in a create request means the default profile; `[]` means none.
    pub profiles: Option<Vec<String>>,
    /// The snapshot to restore (`PUT` only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub restore: String,
    pub stateful: bool,
    pub description: String,
}

/// `POST /1.0/instances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancesPost {
    #[serde(flatten)]
    pub put: InstancePut,
    pub name: String,
    pub source: InstanceSource,
    /// A cloud instance type (`t2.micro`), empty for none.
    pub instance_type: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Start the instance once created (`instance_create_start`).
    pub start: bool,
}

/// Where a new instance comes from: `image`, `copy`, `migration` or `none`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceSource {
    #[serde(rename = "type")]
    pub kind: String,
    pub certificate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alias: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub properties: ConfigMap,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(rename = "base-image", skip_serializing_if = "String::is_empty")]
    pub base_image: String,
    /// Migration: `pull` (default), `push` or `relay`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// Migration: the source operation's URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// Migration: the source operation's websocket secrets.
    #[serde(
        rename = "secrets",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub websockets: BTreeMap<String, String>,
    /// Copy: the source instance (`c1` or `c1/snap0`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(skip_serializing_if = "is_false")]
    pub live: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub instance_only: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub refresh: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub refresh_exclude_older: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub project: String,
    pub allow_inconsistent: bool,
}

/// `POST /1.0/instances/{name}`: rename, or move (`migration`), to another member with
/// `?target=`, another pool or project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancePost {
    pub name: String,
    pub migration: bool,
    pub live: bool,
    pub instance_only: bool,
    pub target: Option<InstancePostTarget>,
    pub pool: String,
    pub project: String,
    pub allow_inconsistent: bool,
    /// Go declares these three without JSON tags, so they travel capitalised.
    #[serde(rename = "Config", deserialize_with = "null_default")]
    pub config: ConfigMap,
    #[serde(rename = "Devices", deserialize_with = "null_default")]
    pub devices: DeviceMap,
    #[serde(rename = "Profiles")]
    pub profiles: Option<Vec<String>>,
}

/// A push migration's destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancePostTarget {
    pub certificate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(
        rename = "secrets",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub websockets: BTreeMap<String, String>,
}

/// An instance (`GET /1.0/instances/{name}`, `?recursion=1` lists).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Instance {
    #[serde(flatten)]
    pub put: InstancePut,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub expanded_config: ConfigMap,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub expanded_devices: DeviceMap,
    pub name: String,
    pub status: String,
    pub status_code: u16,
    pub last_used_at: Timestamp,
    /// The cluster member that holds it (`none` on a standalone server).
    pub location: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub project: String,
}

impl Instance {
    /// The writable part (`PUT` body), as `incus config edit` shows it.
    pub fn writable(&self) -> InstancePut {
        self.put.clone()
    }

    /// Running, frozen or in between: anything but Stopped and Error (Incus's
    /// `IsActive`, which decides whether addresses are shown).
    pub fn is_active(&self) -> bool {
        !matches!(self.status_code, super::status::STOPPED | super::status::ERROR)
    }
}

/// An instance with its state, snapshots and backups (`?recursion=1` on one instance,
/// `?recursion=2` on the list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceFull {
    #[serde(flatten)]
    pub instance: Instance,
    pub backups: Option<Vec<InstanceBackup>>,
    pub state: Option<InstanceState>,
    pub snapshots: Option<Vec<InstanceSnapshot>>,
}

/// `PUT /1.0/instances/{name}/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStatePut {
    /// `start`, `stop`, `restart`, `freeze` or `unfreeze`.
    pub action: String,
    /// Seconds for a clean stop; `-1` waits (bounded by the server), `0` kills.
    pub timeout: i64,
    pub force: bool,
    pub stateful: bool,
}

/// `GET /1.0/instances/{name}/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceState {
    pub status: String,
    pub status_code: u16,
    #[serde(deserialize_with = "null_default")]
    pub disk: BTreeMap<String, InstanceStateDisk>,
    pub memory: InstanceStateMemory,
    /// `null` while stopped.
    pub network: Option<BTreeMap<String, InstanceStateNetwork>>,
    pub pid: i64,
    pub processes: i64,
    pub cpu: InstanceStateCpu,
    pub started_at: Timestamp,
    pub os_info: Option<InstanceStateOsInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateDisk {
    pub usage: i64,
    pub total: i64,
}

/// CPU time used, in nanoseconds, and the time allotted per second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateCpu {
    pub usage: i64,
    pub allocated_time: i64,
}

/// Memory in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateMemory {
    pub usage: i64,
    pub usage_peak: i64,
    pub total: i64,
    pub swap_usage: i64,
    pub swap_usage_peak: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateNetwork {
    #[serde(deserialize_with = "null_default")]
    pub addresses: Vec<InstanceStateNetworkAddress>,
    pub counters: InstanceStateNetworkCounters,
    pub hwaddr: String,
    pub host_name: String,
    pub mtu: i64,
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateNetworkAddress {
    /// `inet` or `inet6`.
    pub family: String,
    pub address: String,
    pub netmask: String,
    /// `global`, `link` or `local`.
    pub scope: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateNetworkCounters {
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub packets_received: i64,
    pub packets_sent: i64,
    pub errors_received: i64,
    pub errors_sent: i64,
    pub packets_dropped_outbound: i64,
    pub packets_dropped_inbound: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceStateOsInfo {
    pub os: String,
    pub os_version: String,
    pub kernel_version: String,
    pub hostname: String,
    pub fqdn: String,
}

/// `POST /1.0/instances/{name}/exec`. The official client always sends every field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceExecPost {
    pub command: Vec<String>,
    #[serde(rename = "wait-for-websocket")]
    pub wait_for_websocket: bool,
    pub interactive: bool,
    #[serde(deserialize_with = "null_default")]
    pub environment: BTreeMap<String, String>,
    /// The terminal's size (interactive), 0 when unknown.
    pub width: u32,
    pub height: u32,
    /// Keep stdout and stderr in the instance's logs (`exec-output/`).
    #[serde(rename = "record-output")]
    pub record_output: bool,
    pub user: u32,
    pub group: u32,
    pub cwd: String,
}

/// A JSON text message on an exec's `control` websocket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceExecControl {
    /// `window-resize` (args `width`, `height`, as strings) or `signal`.
    pub command: String,
    /// The official client sends `null` with `signal`.
    pub args: Option<BTreeMap<String, String>>,
    pub signal: i32,
}

impl InstanceExecControl {
    pub const WINDOW_RESIZE: &'static str = "window-resize";
    pub const SIGNAL: &'static str = "signal";

    /// `window-resize` with the terminal's new size.
    pub fn window_resize(width: u16, height: u16) -> InstanceExecControl {
        InstanceExecControl {
            command: Self::WINDOW_RESIZE.into(),
            args: Some(BTreeMap::from([
                ("width".to_string(), width.to_string()),
                ("height".to_string(), height.to_string()),
            ])),
            signal: 0,
        }
    }

    /// `signal` with a signal number to send to the command.
    pub fn signal(signal: i32) -> InstanceExecControl {
        InstanceExecControl {
            command: Self::SIGNAL.into(),
            args: None,
            signal,
        }
    }
}

/// `POST /1.0/instances/{name}/console`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceConsolePost {
    pub width: u32,
    pub height: u32,
    /// `console` (text) or `vga`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Take the console over from another client.
    pub force: bool,
}

/// A JSON text message on a console's `control` websocket (`window-resize`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceConsoleControl {
    pub command: String,
    pub args: Option<BTreeMap<String, String>>,
}

/// `POST /1.0/instances/{name}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceSnapshotsPost {
    pub name: String,
    pub stateful: bool,
    /// `null`: the instance's `snapshots.expiry` decides.
    pub expires_at: Option<Timestamp>,
}

/// `POST /1.0/instances/{name}/snapshots/{snapshot}`: rename, or migrate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceSnapshotPost {
    pub name: String,
    pub migration: bool,
    pub target: Option<InstancePostTarget>,
    #[serde(skip_serializing_if = "is_false")]
    pub live: bool,
}

/// `PUT /1.0/instances/{name}/snapshots/{snapshot}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceSnapshotPut {
    pub expires_at: Timestamp,
}

/// A snapshot of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceSnapshot {
    #[serde(flatten)]
    pub put: InstanceSnapshotPut,
    pub architecture: String,
    #[serde(deserialize_with = "null_default")]
    pub config: ConfigMap,
    pub created_at: Timestamp,
    #[serde(deserialize_with = "null_default")]
    pub devices: DeviceMap,
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub expanded_config: ConfigMap,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub expanded_devices: DeviceMap,
    pub last_used_at: Timestamp,
    /// The snapshot's own name (`s1`, not `c1/s1`).
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub profiles: Vec<String>,
    pub stateful: bool,
    /// Bytes on disk, `-1` when the driver cannot tell.
    pub size: i64,
}

/// A backup of an instance (listed in [`InstanceFull::backups`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceBackup {
    pub name: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub instance_only: bool,
    pub optimized_storage: bool,
}
