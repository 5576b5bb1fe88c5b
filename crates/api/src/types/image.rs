//! Images and their aliases: `/1.0/images` (`shared/api/image.go`).

use serde::{Deserialize, Serialize};

use super::{null_default, ConfigMap, Timestamp};

/// `PUT /1.0/images/{fingerprint}`; also the writable part of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagePut {
    pub auto_update: bool,
    #[serde(deserialize_with = "null_default")]
    pub properties: ConfigMap,
    pub public: bool,
    pub expires_at: Timestamp,
    #[serde(deserialize_with = "null_default")]
    pub profiles: Vec<String>,
}

/// An image (`GET /1.0/images/{fingerprint}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Image {
    #[serde(flatten)]
    pub put: ImagePut,
    #[serde(deserialize_with = "null_default")]
    pub aliases: Vec<ImageAlias>,
    pub architecture: String,
    pub cached: bool,
    pub filename: String,
    pub fingerprint: String,
    /// Bytes (a number here, unlike the upload operation's string).
    pub size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_source: Option<ImageSource>,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub uploaded_at: Timestamp,
    pub project: String,
}

impl Image {
    pub fn writable(&self) -> ImagePut {
        self.put.clone()
    }
}

/// An alias as listed in [`Image::aliases`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageAlias {
    pub name: String,
    pub description: String,
}

/// Where a cached image came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageSource {
    pub alias: String,
    pub certificate: String,
    pub protocol: String,
    pub server: String,
    pub image_type: String,
}

/// `POST /1.0/images` with a JSON body (copy from a remote, or from an instance). A
/// file upload sends the file itself instead, with `X-Incus-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagesPost {
    #[serde(flatten)]
    pub put: ImagePut,
    pub filename: String,
    pub source: Option<ImagesPostSource>,
    pub compression_algorithm: String,
    #[serde(deserialize_with = "null_default")]
    pub aliases: Vec<ImageAlias>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagesPostSource {
    #[serde(flatten)]
    pub image: ImageSource,
    pub mode: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub name: String,
    pub fingerprint: String,
    pub secret: String,
    pub project: String,
}

/// `POST /1.0/images/{fingerprint}/export`: push an image to another server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageExportPost {
    pub target: String,
    pub secret: String,
    pub certificate: String,
    #[serde(deserialize_with = "null_default")]
    pub aliases: Vec<ImageAlias>,
    pub project: String,
    #[serde(deserialize_with = "null_default")]
    pub profiles: Vec<String>,
}

/// `PUT /1.0/images/aliases/{name}`; the writable part of an alias.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageAliasesEntryPut {
    pub description: String,
    /// The image's fingerprint.
    pub target: String,
}

/// An alias (`GET /1.0/images/aliases/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageAliasesEntry {
    #[serde(flatten)]
    pub put: ImageAliasesEntryPut,
    pub name: String,
    /// The image's type; empty in a create request.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `POST /1.0/images/aliases` (answered 201 with `Location`).
pub type ImageAliasesPost = ImageAliasesEntry;

/// `POST /1.0/images/aliases/{name}`: rename.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageAliasesEntryPost {
    pub name: String,
}
