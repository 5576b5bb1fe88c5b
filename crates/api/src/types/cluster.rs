//! Cluster members: `/1.0/cluster/members` (`shared/api/cluster.go`).

use serde::{Deserialize, Serialize};

use super::{null_default, ConfigMap};

/// `PUT /1.0/cluster/members/{name}`; the writable part of a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterMemberPut {
    #[serde(deserialize_with = "null_default")]
    pub roles: Vec<String>,
    pub failure_domain: String,
    pub description: String,
    #[serde(deserialize_with = "null_default")]
    pub config: ConfigMap,
    #[serde(deserialize_with = "null_default")]
    pub groups: Vec<String>,
}

/// A cluster member (`GET /1.0/cluster/members/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterMember {
    #[serde(flatten)]
    pub put: ClusterMemberPut,
    pub server_name: String,
    pub url: String,
    pub database: bool,
    /// `Online`, `Offline`, `Evacuated`, `Blocked`.
    pub status: String,
    pub message: String,
    pub architecture: String,
}

/// `POST /1.0/cluster/members/{name}/state`: `evacuate` or `restore`, with a mode
/// (`stop`, `migrate`, `live-migrate`; empty for the instances' own `cluster.evacuate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterMemberStatePost {
    pub action: String,
    pub mode: String,
}
