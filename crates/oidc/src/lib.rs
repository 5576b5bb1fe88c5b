//! OpenID Connect: what a member needs to accept access tokens from an OpenID provider
//! ([`Verifier`]), and what a client needs to obtain them ([`flow`]: the device
//! authorization grant, the authorization code grant with PKCE, refresh).
//!
//! ```text
//!  issuer ──/.well-known/openid-configuration──> Discovery ──jwks_uri──> KeySet
//!  Authorization: Bearer <JWT> ──jwt::verify(KeySet, iss, aud, exp)──> Claims ──> user name
//! ```
//!
//! [`jwt`] is pure (no I/O, time passed in); the fetching lives in [`Verifier`] and
//! [`flow`], over `transport::web`.

pub mod flow;
pub mod jwt;
mod verifier;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use verifier::{check_subnets, username, Verified, Verifier, VerifyError, LEEWAY_SECS, REFETCH_EVERY};

/// The server's OpenID settings (`oidc.*`), as the typed settings hold them.
pub use api::settings::Oidc as Config;

/// The scopes asked for when `oidc.scopes` is not set (its default in the key table).
pub const DEFAULT_SCOPES: &[&str] = &["openid", "offline_access", "email", "profile"];

/// The parts of a provider's discovery document that are used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Provider(String),
    #[error("{0}")]
    Refused(String),
}

pub(crate) async fn fetch_json(url: &str) -> Result<Value, OidcError> {
    let r = transport::web::get(url)
        .await
        .map_err(|e| OidcError::Provider(e.to_string()))?;
    if r.status != 200 {
        return Err(OidcError::Provider(format!("{url} answered {}", r.status)));
    }
    r.json()
        .ok_or_else(|| OidcError::Provider(format!("{url} did not return JSON")))
}

/// Fetches and checks the issuer's discovery document.
pub async fn discover(issuer: &str) -> Result<Discovery, OidcError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let v = fetch_json(&url).await?;
    let d: Discovery = serde_json::from_value(v).map_err(|e| OidcError::Provider(format!("{url}: {e}")))?;
    if d.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(OidcError::Provider(format!(
            "the discovery document names issuer {:?}, not {issuer:?}",
            d.issuer
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    /// The scopes a client asks for by default are those the server's key table names
    /// as `oidc.scopes`'s default.
    #[test]
    fn default_scopes_are_the_key_tables() {
        let table = api::config::key("oidc.scopes").and_then(|k| k.default);
        assert_eq!(table, Some(super::DEFAULT_SCOPES.join(", ").as_str()));
    }
}
