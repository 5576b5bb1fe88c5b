//! Operations, events, and the shapes of an operation's `metadata`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

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

/// Operation classes.
pub mod class {
    /// A background task (`Location` to wait on).
    pub const TASK: &str = "task";
    /// Websockets to connect (exec, console, migration): `metadata.fds` holds secrets.
    pub const WEBSOCKET: &str = "websocket";
    /// A token (trust or join) shown as an operation.
    pub const TOKEN: &str = "token";
}

/// The name of the control websocket in `metadata.fds`.
pub const FD_CONTROL: &str = "control";

impl Operation {
    /// Whether the operation has ended (Success, Failure or Cancelled).
    pub fn is_final(&self) -> bool {
        status::is_final(self.status_code)
    }

    /// The metadata decoded as `T` (one of the shapes below), if it has that shape.
    pub fn metadata_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        let map = self.metadata.as_ref()?;
        let value = Value::Object(map.clone().into_iter().collect());
        serde_json::from_value(value).ok()
    }

    /// `metadata.progress`, while a task reports it.
    pub fn progress(&self) -> Option<OperationProgress> {
        let p = self.metadata.as_ref()?.get("progress")?;
        serde_json::from_value(p.clone()).ok()
    }

    /// `metadata.return`: the exit code of a finished exec.
    pub fn exit_code(&self) -> Option<i64> {
        self.metadata.as_ref()?.get("return")?.as_i64()
    }

    /// `metadata.fds`: the websocket secrets of a `websocket` operation, by name
    /// (`control`, `0`, `1`, `2`).
    pub fn fds(&self) -> BTreeMap<String, String> {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("fds"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

/// `metadata.progress` of a running task: all three are strings (`"42"`, a speed in
/// bytes per second, the stage's name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperationProgress {
    pub percent: String,
    pub speed: String,
    pub stage: String,
}

/// The metadata of an exec's `websocket` operation (`POST /1.0/instances/N/exec` with
/// `wait-for-websocket`). Go writes it from a map, so the keys are in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecMetadata {
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Secrets by websocket: `0`, `1`, `2` and `control` (non-interactive), or `0` and
    /// `control` (interactive).
    pub fds: BTreeMap<String, String>,
    pub interactive: bool,
}

/// The metadata of a finished exec: its exit code, and where `record-output` left
/// stdout (`1`) and stderr (`2`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<BTreeMap<String, String>>,
    #[serde(rename = "return")]
    pub code: i64,
}

/// The metadata of a console's `websocket` operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsoleMetadata {
    pub fds: BTreeMap<String, String>,
}

/// The metadata of a finished image upload (`POST /1.0/images`). `size` is a string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageUploadResult {
    pub fingerprint: String,
    pub size: String,
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

/// Status codes as Incus numbers them, for operations and instances alike
/// (`shared/api/status_code.go`).
pub mod status {
    pub const OPERATION_CREATED: u16 = 100;
    pub const STARTED: u16 = 101;
    pub const STOPPED: u16 = 102;
    pub const RUNNING: u16 = 103;
    pub const CANCELLING: u16 = 104;
    pub const PENDING: u16 = 105;
    pub const STARTING: u16 = 106;
    pub const STOPPING: u16 = 107;
    pub const ABORTING: u16 = 108;
    pub const FREEZING: u16 = 109;
    pub const FROZEN: u16 = 110;
    pub const THAWED: u16 = 111;
    pub const ERROR: u16 = 112;
    pub const READY: u16 = 113;
    pub const SUCCESS: u16 = 200;
    pub const FAILURE: u16 = 400;
    pub const CANCELLED: u16 = 401;

    /// The name Incus gives a code (`status` beside `status_code`).
    pub fn name(code: u16) -> &'static str {
        match code {
            OPERATION_CREATED => "Operation created",
            STARTED => "Started",
            STOPPED => "Stopped",
            RUNNING => "Running",
            CANCELLING => "Cancelling",
            PENDING => "Pending",
            STARTING => "Starting",
            STOPPING => "Stopping",
            ABORTING => "Aborting",
            FREEZING => "Freezing",
            FROZEN => "Frozen",
            THAWED => "Thawed",
            ERROR => "Error",
            READY => "Ready",
            SUCCESS => "Success",
            FAILURE => "Failure",
            CANCELLED => "Cancelled",
            _ => "Unknown",
        }
    }

    /// Whether an operation with this code has ended (Success, Failure, Cancelled).
    pub fn is_final(code: u16) -> bool {
        code >= SUCCESS
    }
}
