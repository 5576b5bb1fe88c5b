//! The envelope every Incus response is wrapped in.
//!
//! ```text
//! sync : {"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":...}
//! async: {"type":"async","status":"Operation created","status_code":100,"operation":"/1.0/operations/ID",...}
//! error: {"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"not found","metadata":null}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ApiError;

/// One response body, exactly as Incus writes it (field order included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub status_code: u16,
    pub operation: String,
    pub error_code: u16,
    pub error: String,
    pub metadata: Value,
}

impl Envelope {
    pub fn sync(metadata: Value) -> Self {
        Envelope {
            kind: "sync".into(),
            status: "Success".into(),
            status_code: 200,
            operation: String::new(),
            error_code: 0,
            error: String::new(),
            metadata,
        }
    }

    /// An operation was created; `metadata` is the operation object.
    pub fn operation(url: String, metadata: Value) -> Self {
        Envelope {
            kind: "async".into(),
            status: "Operation created".into(),
            status_code: 100,
            operation: url,
            error_code: 0,
            error: String::new(),
            metadata,
        }
    }

    pub fn error(err: &ApiError) -> Self {
        Envelope {
            kind: "error".into(),
            status: String::new(),
            status_code: 0,
            operation: String::new(),
            error_code: err.status,
            error: err.message.clone(),
            metadata: Value::Null,
        }
    }

    /// Turns a received envelope back into a result, as a client sees it.
    pub fn into_result(self) -> Result<Value, ApiError> {
        if self.kind == "error" {
            Err(ApiError::new(self.error_code, self.error))
        } else {
            Ok(self.metadata)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_matches_incus_bytes() {
        let body = serde_json::to_string(&Envelope::error(&ApiError::not_found())).unwrap();
        assert_eq!(
            body,
            r#"{"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"not found","metadata":null}"#
        );
    }

    #[test]
    fn sync_round_trips() {
        let env = Envelope::sync(serde_json::json!(["/1.0"]));
        let back: Envelope = serde_json::from_slice(&serde_json::to_vec(&env).unwrap()).unwrap();
        assert_eq!(back.into_result().unwrap(), serde_json::json!(["/1.0"]));
    }
}
