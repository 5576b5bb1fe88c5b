//! Trust and join tokens in Incus's format: padded standard base64 of a JSON object.
//!
//! ```text
//! trust: {"client_name","fingerprint","addresses","secret","expires_at"}
//! join : {"server_name","fingerprint","addresses","secret","expires_at"}
//! ```

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The zero time Go writes for "never expires".
pub const NO_EXPIRY: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustToken {
    pub client_name: String,
    pub fingerprint: String,
    pub addresses: Vec<String>,
    pub secret: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub server_name: String,
    pub fingerprint: String,
    pub addresses: Vec<String>,
    pub secret: String,
    pub expires_at: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("Failed to decode the token: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(token: &T) -> String {
    let json = serde_json::to_vec(token).expect("tokens serialize");
    base64::engine::general_purpose::STANDARD.encode(json)
}

pub fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, TokenError> {
    let text = text.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|e| TokenError::Decode(e.to_string()))?;
    serde_json::from_slice(&raw).map_err(|e| TokenError::Decode(e.to_string()))
}

/// Formats an expiry for a token: RFC 3339, or Go's zero time for none.
pub fn format_expiry(at: Option<OffsetDateTime>) -> String {
    match at {
        Some(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| NO_EXPIRY.to_string()),
        None => NO_EXPIRY.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_token_round_trip() {
        let t = TrustToken {
            client_name: "c1".into(),
            fingerprint: "ab".into(),
            addresses: vec!["127.0.0.1:8443".into()],
            secret: "s".into(),
            expires_at: NO_EXPIRY.into(),
        };
        let text = encode(&t);
        assert_eq!(decode::<TrustToken>(&text).unwrap(), t);
        assert!(decode::<TrustToken>("!!!").is_err());
        assert!(decode::<JoinToken>(&text).is_err());
    }
}
