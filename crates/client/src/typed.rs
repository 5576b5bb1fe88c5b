//! Typed requests: metadata decoded into `api::types`, bodies encoded from them, and
//! operations waited on until they end.
//!
//! ```text
//!  get_typed::<T>(path)            GET -> envelope.metadata as T, plus the ETag
//!  send_typed(method, path, body)  JSON body from a typed value -> the sync answer
//!  send_operation(...)             ... -> the async answer's operation
//!  wait_done(op, limit)            GET /1.0/operations/ID/wait?timeout=N, repeated until the
//!                                  operation ends (or the limit): Success, else OperationFailed
//! ```
//!
//! Names in paths are escaped with [`seg`], as the Go client's `url.PathEscape` does.

use std::time::{Duration, Instant};

use api::types::Operation;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{operation_id, ApiResponse, Client, Request};
use crate::{ClientError, Method};

/// How long one operation wait request asks the server to hold it.
pub const WAIT_STEP: Duration = Duration::from_secs(30);

/// A path segment: everything but RFC 3986's unreserved characters and `:@!$&'()*+,;=`
/// percent-encoded (so `/`, `?`, `#`, `%` and spaces in a name stay in their segment).
pub fn seg(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b':'
            | b'@'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'=' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A query value as Go's `url.Values.Encode` writes it (`QueryEscape`: spaces as `+`).
pub fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Server-side filters as the Go client sends them: `key=value` pairs become
/// `key eq value`, joined with ` and ` (anything else is left to the caller).
pub fn filter_expression(filters: &[String]) -> String {
    filters
        .iter()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| format!("{k} eq {v}"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Whether an operation ended well: `Ok` for Success, else the failure as Incus words it.
pub fn operation_result(op: Operation) -> Result<Operation, ClientError> {
    if op.status_code == api::types::status::SUCCESS {
        return Ok(op);
    }
    let message = if op.err.is_empty() {
        op.status.clone()
    } else {
        op.err.clone()
    };
    Err(ClientError::OperationFailed {
        message,
        operation: Box::new(op),
    })
}

fn decode<T: DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|e| ClientError::BadResponse(format!("{what}: {e}")))
}

impl Request {
    /// A JSON body encoded from a typed value.
    pub fn json_body<T: Serialize + ?Sized>(mut self, body: &T) -> Result<Request, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Invalid(format!("Failed to encode the request: {e}")))?;
        self.body = Some(bytes);
        self.content_type = Some("application/json".into());
        Ok(self)
    }
}

impl Client {
    /// `GET path`: the metadata decoded as `T`, and the ETag.
    pub async fn get_typed<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Option<String>), ClientError> {
        let r = self.call(Request::get(path)).await?;
        Ok((decode(path, r.envelope.metadata)?, r.etag))
    }

    /// `method path` with an optional typed JSON body and `If-Match`.
    pub async fn send_typed<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        etag: Option<&str>,
    ) -> Result<ApiResponse, ClientError> {
        let mut req = Request::new(method, path).if_match(etag);
        if let Some(b) = body {
            req = req.json_body(b)?;
        }
        self.call(req).await
    }

    /// As [`Client::send_typed`], for requests Incus answers with an operation.
    pub async fn send_operation<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        etag: Option<&str>,
    ) -> Result<Operation, ClientError> {
        let r = self.send_typed(method, path, body, etag).await?;
        if r.envelope.kind != "async" {
            return Err(ClientError::BadResponse(format!(
                "{path}: expected an operation, got a {} answer",
                r.envelope.kind
            )));
        }
        decode(path, r.envelope.metadata)
    }

    /// `GET /1.0/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation, ClientError> {
        Ok(self
            .get_typed(&format!("/1.0/operations/{}", seg(operation_id(id))))
            .await?
            .0)
    }

    /// Waits for `op` to end, [`WAIT_STEP`] at a time, at most `limit` (none: until it
    /// ends), calling `on_update` with each state seen; then [`operation_result`].
    pub async fn wait_done_with(
        &self,
        op: &Operation,
        limit: Option<Duration>,
        step: Duration,
        mut on_update: impl FnMut(&Operation),
    ) -> Result<Operation, ClientError> {
        let start = Instant::now();
        let mut current = op.clone();
        while !current.is_final() {
            let step = match limit {
                Some(l) => {
                    let left = l.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(ClientError::Timeout {
                            what: format!("operation {}", op.id),
                            secs: l.as_secs(),
                        });
                    }
                    left.min(step)
                }
                None => step,
            };
            current = match self.wait_operation(&op.id, step).await {
                Ok(value) => decode("operation", value)?,
                // Incus answers the wait of a failed operation with its error alone:
                // the operation itself (its metadata, e.g. an exec's exit code) is
                // read once more.
                Err(e @ ClientError::Api { .. }) => match self.operation(&op.id).await {
                    Ok(failed) if failed.is_final() => failed,
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            };
            on_update(&current);
        }
        operation_result(current)
    }

    /// Waits for `op` to end (see [`Client::wait_done_with`]).
    pub async fn wait_done(&self, op: &Operation, limit: Option<Duration>) -> Result<Operation, ClientError> {
        self.wait_done_with(op, limit, WAIT_STEP, |_| {}).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_names_stay_in_their_segment() {
        assert_eq!(seg("c1"), "c1");
        assert_eq!(seg("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
        assert_eq!(seg("snap:1@x"), "snap:1@x");
        assert_eq!(query_value("status eq running"), "status+eq+running");
    }

    #[test]
    fn t10_filters_as_the_go_client_sends_them() {
        let f = vec!["status=running".to_string(), "type=container".into()];
        assert_eq!(filter_expression(&f), "status eq running and type eq container");
        assert_eq!(filter_expression(&[]), "");
    }

    #[test]
    fn t10_failed_operations_carry_their_error() {
        let op: Operation = serde_json::from_value(serde_json::json!({
            "id": "x", "class": "websocket", "description": "Executing command",
            "created_at": "2026-12-01T20:15:37Z", "updated_at": "2026-12-01T20:15:37Z",
            "status": "Failure", "status_code": 400, "resources": null,
            "metadata": {"return": 127}, "may_cancel": false, "err": "Command not found",
            "location": "node2"
        }))
        .unwrap();
        match operation_result(op) {
            Err(ClientError::OperationFailed { message, operation }) => {
                assert_eq!(message, "Command not found");
                assert_eq!(operation.exit_code(), Some(127));
            }
            other => panic!("{other:?}"),
        }
    }
}
