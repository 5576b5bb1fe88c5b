//! The trust store: `/1.0/certificates`.

use serde::{Deserialize, Serialize};

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
