//! Profiles: `/1.0/profiles` (`shared/api/profile.go`).

use serde::{Deserialize, Serialize};

use super::{null_default, ConfigMap, DeviceMap};

/// `PUT /1.0/profiles/{name}`; the writable part of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfilePut {
    #[serde(deserialize_with = "null_default")]
    pub config: ConfigMap,
    pub description: String,
    #[serde(deserialize_with = "null_default")]
    pub devices: DeviceMap,
}

/// `POST /1.0/profiles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfilesPost {
    #[serde(flatten)]
    pub put: ProfilePut,
    pub name: String,
}

/// `POST /1.0/profiles/{name}`: rename.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfilePost {
    pub name: String,
}

/// A profile (`GET /1.0/profiles/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    #[serde(flatten)]
    pub put: ProfilePut,
    pub name: String,
    /// The instances (and other profiles' users) that use it, as API paths.
    #[serde(deserialize_with = "null_default")]
    pub used_by: Vec<String>,
    pub project: String,
}

impl Profile {
    pub fn writable(&self) -> ProfilePut {
        self.put.clone()
    }
}
