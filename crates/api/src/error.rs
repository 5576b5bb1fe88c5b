//! API errors: an HTTP status and the message Incus would send.
//!
//! Every layer maps its own typed errors into [`ApiError`] at its boundary; the server
//! turns an `ApiError` into the error envelope in exactly one place.

use std::fmt;

/// An error as the API reports it. `status` is the HTTP status, and also `error_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }

    /// The message Incus uses for every untrusted access to a protected endpoint.
    pub fn forbidden() -> Self {
        Self::new(403, "not authorized")
    }

    pub fn not_found() -> Self {
        Self::new(404, "not found")
    }

    pub fn not_found_msg(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// Incus answers a wrong method with 501, not 405.
    pub fn not_implemented() -> Self {
        Self::new(501, "not implemented")
    }

    /// A part of the Incus API that this server does not implement yet.
    pub fn not_implemented_yet(feature: &str) -> Self {
        Self::new(501, format!("{feature} are not supported by this server yet"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    pub fn precondition_failed() -> Self {
        Self::new(412, "ETag doesn't match")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, format!("Request body larger than the {limit} bytes allowed"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}
