//! Mapping to HTTP, in one place: the Incus envelope, ETags, request bodies.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use api::ApiError;
use api::Envelope;

/// Request bodies larger than this are refused.
pub const MAX_BODY: usize = 1024 * 1024;

/// A handler's error, rendered as the Incus error envelope.
#[derive(Debug)]
pub struct Error(pub ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error(e)
    }
}

impl From<cluster::StoreError> for Error {
    fn from(e: cluster::StoreError) -> Self {
        use cluster::{StateError, StoreError};
        Error(match e {
            StoreError::State(StateError::CertificateExists)
            | StoreError::State(StateError::MemberExists(_))
            | StoreError::State(StateError::ProfileExists)
            | StoreError::State(StateError::InstanceExists(_)) => ApiError::conflict(e.to_string()),
            StoreError::State(StateError::AliasExists(_)) => ApiError::conflict(e.to_string()),
            StoreError::State(StateError::ImageExists) => ApiError::bad_request(e.to_string()),
            StoreError::State(StateError::MemberNotFound) => ApiError::not_found_msg(e.to_string()),
            StoreError::Unavailable(_) => ApiError::unavailable(e.to_string()),
            StoreError::State(StateError::CertificateNotFound)
            | StoreError::State(StateError::TokenNotFound)
            | StoreError::State(StateError::WarningNotFound)
            | StoreError::State(StateError::PoolNotFound)
            | StoreError::State(StateError::ProfileNotFound)
            | StoreError::State(StateError::InstanceNotFound) => ApiError::not_found_msg(e.to_string()),
            StoreError::State(StateError::ImageNotFound) | StoreError::State(StateError::AliasNotFound) => {
                ApiError::not_found_msg(e.to_string())
            }
            StoreError::State(StateError::Invalid(m)) => ApiError::bad_request(m),
            StoreError::State(StateError::TooManyTokens(_)) => ApiError::bad_request(e.to_string()),
            StoreError::Storage(_) => ApiError::unavailable(e.to_string()),
            StoreError::Db(_) | StoreError::Corrupt(_) | StoreError::Damaged(_) => {
                ApiError::internal(e.to_string())
            }
        })
    }
}

/// A snapshot the leader streams that this member will not take.
impl From<cluster::raft::ReceiveError> for Error {
    fn from(e: cluster::raft::ReceiveError) -> Self {
        use cluster::raft::ReceiveError as R;
        Error(match e {
            R::TooLarge { .. } => ApiError::new(413, e.to_string()),
            R::Storage(_) => ApiError::internal(e.to_string()),
            R::Header(_) | R::Length(_) => ApiError::bad_request(e.to_string()),
        })
    }
}

/// A listen address this member cannot open: the client asked for it, so 400.
impl From<crate::listeners::ListenError> for Error {
    fn from(e: crate::listeners::ListenError) -> Self {
        Error(ApiError::bad_request(e.to_string()))
    }
}

/// A proposed server configuration refused by the key table, in Incus's words.
impl From<api::config::ConfigErrors> for Error {
    fn from(e: api::config::ConfigErrors) -> Self {
        Error(ApiError::bad_request(e.to_string()))
    }
}

impl From<crate::membership::MembershipError> for ApiError {
    fn from(e: crate::membership::MembershipError) -> Self {
        use crate::membership::MembershipError as M;
        match e {
            M::TokenRefused(kind, refusal) => crate::operations::token_refusal(kind, refusal),
            M::Store(e) => Error::from(e).0,
            M::Refused { status, message } => ApiError::new(status, message),
            M::AlreadyClustered
            | M::NotClustered
            | M::NoAddress
            | M::InvalidName(_)
            | M::TrustTokenGiven
            | M::InvalidToken(_)
            | M::InvalidClusterCertificate(_)
            | M::InvalidClusterAddress(_)
            | M::InvalidServerAddress(_)
            | M::TokenForAnotherName { .. }
            | M::BadCertificate(_)
            | M::Listen(_) => ApiError::bad_request(e.to_string()),
            M::AdmitForAnotherName { .. } | M::CertificateNotTrusted(_) => ApiError::new(403, e.to_string()),
            M::NoMemberAddress
            | M::Unreachable(_)
            | M::WrongCluster(_)
            | M::StateLate
            | M::Unavailable(_) => ApiError::unavailable(e.to_string()),
            M::BadAnswer { .. } | M::Certificate(_) | M::Database(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::membership::MembershipError> for Error {
    fn from(e: crate::membership::MembershipError) -> Self {
        Error(e.into())
    }
}

impl From<crate::oidc::LoginError> for ApiError {
    fn from(e: crate::oidc::LoginError) -> Self {
        use crate::oidc::LoginError as L;
        match e {
            L::NotConfigured => ApiError::not_found_msg(e.to_string()),
            L::NoHost | L::MissingParameters => ApiError::bad_request(e.to_string()),
            L::Provider(_) | L::AuthorizeUrl(_) | L::Secret(_) => ApiError::unavailable(e.to_string()),
            L::Refused(_) => ApiError::unauthorized(e.to_string()),
            L::SecretMissing => ApiError::internal(e.to_string()),
        }
    }
}

/// A request that could not be handed to the member that owns it: 503, whatever the
/// cause (the member may come back, or be repaired), with a message that names the
/// member and says whether it refused, did not answer in time, or presented a
/// certificate the cluster does not trust for it.
impl From<crate::forward::ForwardError> for ApiError {
    fn from(e: crate::forward::ForwardError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn error_response(err: &ApiError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, &Envelope::error(err));
    resp.headers_mut()
        .insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = serde_json::to_vec(body).expect("envelopes serialize");
    bytes.push(b'\n');
    json_bytes_response(status, bytes.into())
}

/// A response whose body is JSON already rendered (see [`sync_body`]).
pub fn json_bytes_response(status: StatusCode, body: bytes::Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The body of a sync response, for a handler that keeps it (see `routes::server`).
pub fn sync_body(metadata: impl Serialize) -> bytes::Bytes {
    let value = serde_json::to_value(metadata).expect("metadata serializes");
    let mut bytes = serde_json::to_vec(&Envelope::sync(value)).expect("envelopes serialize");
    bytes.push(b'\n');
    bytes.into()
}

/// A sync response.
pub fn sync(metadata: impl Serialize) -> Response {
    json_bytes_response(StatusCode::OK, sync_body(metadata))
}

/// A sync response for a single object, with its ETag.
pub fn sync_etag(metadata: impl Serialize, etag_basis: &impl Serialize) -> Response {
    with_etag(sync(metadata), &etag(etag_basis))
}

/// Adds the ETag header (`etag` as [`etag`] makes it).
pub fn with_etag(mut resp: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `201 Created` with a `Location`, as Incus answers a creation.
pub fn created(location: &str) -> Response {
    let mut resp = json_response(StatusCode::CREATED, &Envelope::sync(Value::Null));
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `202 Accepted` for a new operation.
pub fn operation(op: &api::types::Operation) -> Response {
    let url = format!("/1.0/operations/{}", op.id);
    let metadata = serde_json::to_value(op).expect("operations serialize");
    let mut resp = json_response(StatusCode::ACCEPTED, &Envelope::operation(url.clone(), metadata));
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The ETag of an object: SHA-256 of its JSON.
pub fn etag(basis: &impl Serialize) -> String {
    trust::sha256_hex(&serde_json::to_vec(basis).expect("etag basis serializes"))
}

/// Honours `If-Match`: a request that names an ETag must name the current one.
pub fn check_if_match(headers: &HeaderMap, basis: &impl Serialize) -> Result<()> {
    let Some(wanted) = headers.get(header::IF_MATCH) else {
        return Ok(());
    };
    let wanted = wanted.to_str().unwrap_or("").trim().trim_matches('"');
    if wanted.is_empty() || wanted == "*" || wanted == etag(basis) {
        Ok(())
    } else {
        Err(ApiError::precondition_failed().into())
    }
}

/// Reads a JSON body: bounded in size, with a message that says what was wrong.
pub async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| crate::gate::body_error(e, MAX_BODY))?;
    parse_json(&bytes)
}

/// Parses a request body, which must be a JSON object: every request body the API takes
/// is one, and serde would otherwise read an array as the fields of a struct in order
/// (`[]` as a `PUT /1.0` that unsets every key).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ApiError::bad_request("Request body is empty: expected a JSON object").into()),
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::bad_request("Invalid JSON in request body: expected a JSON object").into())
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}")).into())
}

/// A collection, as Incus lists one: the objects with recursion, else their URLs
/// (`PREFIX/NAME`).
pub fn listing<'a, T: Serialize>(
    full: bool,
    prefix: &str,
    items: impl Iterator<Item = (&'a String, T)>,
) -> Response {
    if full {
        sync(items.map(|(_, v)| v).collect::<Vec<_>>())
    } else {
        sync(
            items
                .map(|(name, _)| format!("{prefix}/{name}"))
                .collect::<Vec<_>>(),
        )
    }
}

/// Whether `?recursion=` asks for objects rather than URLs.
pub fn recursion(query: &std::collections::HashMap<String, String>) -> bool {
    query
        .get("recursion")
        .is_some_and(|v| v.parse::<u32>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each domain error gets its status here, and its message unchanged.
    #[test]
    fn domain_errors_map_to_their_status() {
        use crate::forward::ForwardError;
        use crate::membership::MembershipError as M;
        use crate::peers::PeerError;
        let status = |e: ApiError| (e.status, e.message);
        assert_eq!(
            status(M::AlreadyClustered.into()),
            (400, "This server is already clustered".into())
        );
        assert_eq!(status(M::CertificateNotTrusted("n2".into()).into()).0, 403);
        assert_eq!(
            status(M::TokenRefused("join", cluster::TokenRefusal::Unknown).into()),
            (
                403,
                "No matching cluster join operation found: the token is unknown, already used or expired"
                    .into()
            )
        );
        assert_eq!(
            status(
                M::Refused {
                    status: 409,
                    message: "taken".into()
                }
                .into()
            ),
            (409, "taken".into())
        );
        assert_eq!(status(M::StateLate.into()).0, 503);
        assert_eq!(
            status(crate::oidc::LoginError::Refused("no".into()).into()),
            (401, "Failed to authenticate: no".into())
        );
        assert_eq!(status(crate::oidc::LoginError::NotConfigured.into()).0, 404);

        let address = "127.0.0.1:9".to_string();
        let refused = PeerError::Refused {
            address: address.clone(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let timeout = PeerError::Timeout {
            address: address.clone(),
            after: std::time::Duration::from_secs(3),
        };
        let mismatch = PeerError::CertificateMismatch { address };
        for (e, says) in [
            (refused, "refused the connection"),
            (timeout, "did not answer in time"),
            (
                mismatch,
                "presented a TLS certificate that is not the one the cluster trusts",
            ),
        ] {
            let (code, msg) = status(ForwardError::new("node3", e).into());
            assert_eq!(code, 503);
            assert!(msg.starts_with("Cluster member \"node3\" "), "{msg}");
            assert!(msg.contains(says), "{msg}");
        }
    }

    #[test]
    fn bodies_must_be_objects() {
        #[derive(Debug, serde::Deserialize, Default)]
        #[serde(default)]
        struct Put {
            #[allow(dead_code)]
            config: std::collections::BTreeMap<String, String>,
        }
        for bad in ["[]", " [ {} ]", "\"x\"", "1", "null"] {
            let e = parse_json::<Put>(bad.as_bytes()).unwrap_err();
            assert_eq!(e.0.status, 400, "{bad}");
            assert!(
                e.0.message.contains("expected a JSON object"),
                "{bad}: {}",
                e.0.message
            );
        }
        assert!(parse_json::<Put>(b" {} ").is_ok());
    }
}
