//! [`Client`]: requests to one remote, decoded from the Incus envelope.
//!
//! ```text
//!  Client::new(&Config, "n1")
//!    request(Request)  --connect()--> Stream --HTTP/1.1--> Response {status, headers, body}
//!    call(...)         = request + envelope decoding (error envelope -> ClientError::Api)
//!    query(...)        = call(...).metadata
//! ```
//!
//! Every wait is bounded: each connection attempt by the connect timeout (3 s), each
//! request by the request timeout (30 s unless changed), operation waits by the timeout
//! they ask the server for plus a margin.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, ETAG, HOST, USER_AGENT};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::addr::Endpoint;
use crate::config::Config;
use crate::connect::{connect_then, record_failure, Connected, DialSpec, ServerCheck, CONNECT_TIMEOUT};
use crate::oidc::{Challenge, LoginPrompt, OidcAuth, Prompt};
use crate::ClientError;

/// How long a whole request may take unless told otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `User-Agent` this library sends.
pub fn user_agent() -> String {
    format!("stapes/{}", env!("CARGO_PKG_VERSION"))
}

/// One request: method, path (with its query string), optional body, extra headers.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
    pub headers: Vec<(HeaderName, String)>,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
            body: None,
            content_type: None,
            headers: Vec::new(),
        }
    }

    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::GET, path)
    }

    /// A JSON body.
    pub fn json(mut self, body: &Value) -> Request {
        self.body = Some(serde_json::to_vec(body).expect("JSON values serialize"));
        self.content_type = Some("application/json".into());
        self
    }

    /// A body sent as is.
    pub fn raw_body(mut self, body: Vec<u8>, content_type: &str) -> Request {
        self.body = Some(body);
        self.content_type = Some(content_type.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Request {
        self.headers.push((name, value.into()));
        self
    }

    /// `If-Match` with an ETag from an earlier GET, when there is one.
    pub fn if_match(self, etag: Option<&str>) -> Request {
        match etag {
            Some(e) if !e.is_empty() => self.header(http::header::IF_MATCH, e),
            _ => self,
        }
    }
}

/// A raw response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The certificate (DER) the server presented, for TLS connections.
    pub peer_cert: Option<Vec<u8>>,
    /// The address that answered.
    pub endpoint: Endpoint,
}

impl Response {
    /// A whole HTTP response, with where it came from.
    pub(crate) fn from_http(
        resp: http::Response<Bytes>,
        peer_cert: Option<Vec<u8>>,
        endpoint: Endpoint,
    ) -> Response {
        let (parts, body) = resp.into_parts();
        Response {
            status: parts.status,
            headers: parts.headers,
            body,
            peer_cert,
            endpoint,
        }
    }

    pub fn etag(&self) -> Option<String> {
        self.headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn is_json(&self) -> bool {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    }

    /// Decodes the Incus envelope. An error envelope (or an error status without one)
    /// becomes [`ClientError::Api`].
    pub fn envelope(&self) -> Result<api::Envelope, ClientError> {
        decode_envelope(self.status.as_u16(), &self.body)
    }
}

/// Decodes a response body as the envelope, turning errors into [`ClientError::Api`].
pub fn decode_envelope(status: u16, body: &[u8]) -> Result<api::Envelope, ClientError> {
    match serde_json::from_slice::<api::Envelope>(body) {
        Ok(env) if env.kind == "error" => Err(ClientError::Api {
            status: if env.error_code != 0 {
                env.error_code
            } else {
                status
            },
            message: env.error,
        }),
        Ok(env) => Ok(env),
        Err(_) if status >= 400 => {
            let text = String::from_utf8_lossy(body).trim().to_string();
            let message = if text.is_empty() || text.len() > 200 {
                StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_string()
            } else {
                text
            };
            Err(ClientError::Api { status, message })
        }
        Err(e) => Err(ClientError::BadResponse(format!("not an API response ({e})"))),
    }
}

/// A decoded successful response.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub envelope: api::Envelope,
    pub etag: Option<String>,
}

/// Adds `key=value` to a path's query string unless the key is already there.
pub fn with_query(path: &str, key: &str, value: &str) -> String {
    let (base, query) = match path.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (path, None),
    };
    if let Some(q) = query {
        if q.split('&').any(|kv| kv.split('=').next() == Some(key)) {
            return path.to_string();
        }
    }
    let pair = format!("{key}={}", encode_query_value(value));
    match query {
        Some(q) if !q.is_empty() => format!("{base}?{q}&{pair}"),
        _ => format!("{base}?{pair}"),
    }
}

/// Percent-encodes a query value (unreserved characters pass through).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A connection recipe for one remote plus per-request settings.
#[derive(Debug, Clone)]
pub struct Client {
    name: String,
    /// Set when the client was made from a configured remote (errors then name it).
    remote: Option<String>,
    dial: DialSpec,
    timeout: Duration,
    /// How long a transfer may go without moving a byte (`None`: see
    /// [`Client::idle_limit`]).
    idle: Option<Duration>,
    target: Option<String>,
    project: Option<String>,
    user_agent: String,
    /// OpenID tokens, for `auth_type: oidc` remotes (shared by clones).
    oidc: Option<Arc<OidcAuth>>,
    /// Whether a 401 may start a device login (otherwise only a refresh is tried).
    interactive_login: bool,
    prompt: Prompt,
}

impl Client {
    /// A client for a configured remote. For https remotes the pinned certificate must
    /// exist and the client certificate is generated if missing.
    pub fn new(config: &Config, remote: &str) -> Result<Client, ClientError> {
        let r = config.remote(remote)?;
        if r.public || (r.protocol != "incus" && !r.protocol.is_empty()) {
            return Err(ClientError::Invalid("The remote isn't a private server".into()));
        }
        let endpoints = r.endpoints()?;
        let unix = endpoints.iter().all(Endpoint::is_unix);
        let oidc = !unix && r.is_oidc();
        let mut client = if unix {
            Client::unix_endpoints(endpoints)
        } else {
            let pinned = config
                .pinned_fingerprint(remote)?
                .ok_or_else(|| ClientError::NotPinned {
                    remote: remote.to_string(),
                    path: config.server_cert_path(remote),
                })?;
            // OpenID remotes are reached without a client certificate: the server then
            // looks at the bearer token.
            let identity = if oidc {
                None
            } else {
                Some(config.ensure_client_cert()?.0)
            };
            Client::from_spec(DialSpec {
                endpoints,
                check: ServerCheck::Pinned(pinned),
                identity,
                connect_timeout: CONNECT_TIMEOUT,
                state_file: None,
            })
        };
        client.dial.state_file = Some(config.remote_state_path(remote));
        client.name = remote.to_string();
        client.remote = Some(remote.to_string());
        if oidc {
            client.oidc = Some(Arc::new(OidcAuth::from_file(config.oidc_tokens_path(remote))));
        }
        if !r.project.is_empty() && r.project != "default" {
            client.project = Some(r.project.clone());
        }
        Ok(client)
    }

    /// A client for the local daemon's socket (`$STAPES_SOCKET`, `$STAPES_DIR`, default).
    pub fn local() -> Client {
        Client::unix_endpoints(vec![Endpoint::Unix(None)])
    }

    /// A client for a unix socket at `path`.
    pub fn unix(path: impl Into<std::path::PathBuf>) -> Client {
        Client::unix_endpoints(vec![Endpoint::Unix(Some(path.into()))])
    }

    fn unix_endpoints(endpoints: Vec<Endpoint>) -> Client {
        Client::from_spec(DialSpec {
            endpoints,
            check: ServerCheck::Record,
            identity: None,
            connect_timeout: CONNECT_TIMEOUT,
            state_file: None,
        })
    }

    /// A client from an explicit dial recipe (tests, tools).
    pub fn from_spec(dial: DialSpec) -> Client {
        let name = dial.endpoints.first().map(Endpoint::url).unwrap_or_default();
        Client {
            name,
            remote: None,
            dial,
            timeout: REQUEST_TIMEOUT,
            idle: None,
            target: None,
            project: None,
            user_agent: user_agent(),
            oidc: None,
            interactive_login: true,
            prompt: Prompt::default(),
        }
    }

    /// Authenticates with OpenID tokens from `auth` (a client made with [`Client::new`]
    /// for an `oidc` remote has them already, stored in the configuration directory).
    pub fn with_oidc(mut self, auth: Arc<OidcAuth>) -> Client {
        self.oidc = Some(auth);
        self
    }

    /// The OpenID tokens in use, for `oidc` remotes.
    pub fn oidc(&self) -> Option<&Arc<OidcAuth>> {
        self.oidc.as_ref()
    }

    /// How a device login is shown to the user (by default [`crate::oidc::StderrPrompt`]).
    pub fn with_login_prompt(mut self, prompt: Arc<dyn LoginPrompt>) -> Client {
        self.prompt = Prompt(prompt);
        self
    }

    /// Whether a 401 may start a device login (the default); when not, only the refresh
    /// token is tried and otherwise the request fails with [`ClientError::Login`].
    pub fn with_interactive_login(mut self, interactive: bool) -> Client {
        self.interactive_login = interactive;
        self
    }

    /// The remote's name (or its first URL for ad-hoc clients).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dial_spec(&self) -> &DialSpec {
        &self.dial
    }

    /// Adds `?target=MEMBER` to every request.
    pub fn with_target(mut self, target: Option<String>) -> Client {
        self.target = target.filter(|t| !t.is_empty());
        self
    }

    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// Adds `?project=NAME` to every request.
    pub fn with_project(mut self, project: Option<String>) -> Client {
        self.project = project.filter(|p| !p.is_empty() && p != "default");
        self
    }

    /// The bound on each whole request (connect, send, read).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a streamed transfer (upload, download) may go without moving a byte.
    pub fn with_idle_limit(mut self, limit: Duration) -> Client {
        self.idle = Some(limit);
        self
    }

    pub(crate) fn idle_override(&self) -> Option<Duration> {
        self.idle
    }

    /// The path as sent: with `target` and `project` added.
    pub fn full_path(&self, path: &str) -> String {
        let mut p = path.to_string();
        if let Some(t) = &self.target {
            p = with_query(&p, "target", t);
        }
        if let Some(pr) = &self.project {
            p = with_query(&p, "project", pr);
        }
        p
    }

    /// Opens a connection (the single dial step every request goes through).
    pub async fn connect(&self) -> Result<Connected, ClientError> {
        self.connect_avoiding(&[]).await
    }

    /// Opens a connection, trying the endpoints in `avoid` last.
    pub async fn connect_avoiding(&self, avoid: &[Endpoint]) -> Result<Connected, ClientError> {
        connect_then(&self.dial, avoid, |c| async move { Ok(c) })
            .await
            .map_err(|e| self.name_remote(e))
    }

    /// Remembers that `endpoint` failed (e.g. a stream that broke), so the next
    /// connection tries it last.
    pub fn mark_failed(&self, endpoint: &Endpoint) {
        record_failure(&self.dial, endpoint);
    }

    /// Puts the remote's name into a pin mismatch, so the user knows which to accept.
    fn name_remote(&self, e: ClientError) -> ClientError {
        let Some(remote) = &self.remote else { return e };
        match e {
            ClientError::PinMismatch {
                addr,
                pinned,
                presented,
                ..
            } => ClientError::PinMismatch {
                addr,
                remote: Some(remote.clone()),
                pinned,
                presented,
            },
            ClientError::AllFailed(errors) => {
                ClientError::AllFailed(errors.into_iter().map(|e| self.name_remote(e)).collect())
            }
            other => other,
        }
    }

    /// Sends one request and returns the raw response, whatever its status. For `oidc`
    /// remotes, a 401 that names an OpenID provider is answered by a refresh or a device
    /// login and the request is sent once more (the login itself is not bounded by the
    /// request timeout: it waits for the user, up to the provider's code lifetime).
    pub async fn request(&self, req: Request) -> Result<Response, ClientError> {
        let Some(auth) = &self.oidc else {
            return self.request_bounded(req).await;
        };
        let token = auth.fresh_token().await;
        let resp = self.request_bounded(with_bearer(&req, &token)).await?;
        let Some(challenge) = Challenge::from_response(resp.status.as_u16(), &resp.headers) else {
            return Ok(resp);
        };
        let token = self.reauthenticate(&challenge, &token).await?;
        self.request_bounded(with_bearer(&req, &token)).await
    }

    /// After a 401 with `challenge` for `rejected`: the access token to retry with.
    pub(crate) async fn reauthenticate(
        &self,
        challenge: &Challenge,
        rejected: &str,
    ) -> Result<String, ClientError> {
        let auth = self
            .oidc
            .as_ref()
            .ok_or_else(|| ClientError::Login("this client has no OpenID tokens".into()))?;
        tracing::debug!(issuer = %challenge.issuer, "the server asks for an OpenID login");
        auth.reauthenticate(
            &self.name,
            challenge,
            rejected,
            self.interactive_login,
            self.prompt.0.as_ref(),
        )
        .await
    }

    /// One request under the request timeout.
    async fn request_bounded(&self, req: Request) -> Result<Response, ClientError> {
        let limit = self.timeout;
        let what = format!("{} {}", req.method, req.path);
        tokio::time::timeout(limit, self.request_inner(req))
            .await
            .map_err(|_| ClientError::Timeout {
                what,
                secs: limit.as_secs(),
            })?
    }

    /// Idempotent requests (GET, HEAD) other than operation waits race whole exchanges
    /// across the remote's addresses, so a member that connects but never answers is
    /// overtaken. Everything else races the connection only and then sends once; an
    /// idempotent request whose connection breaks is retried once on another address, a
    /// non-idempotent one is not ([`ClientError::MaybeApplied`]).
    async fn request_inner(&self, req: Request) -> Result<Response, ClientError> {
        let idempotent = matches!(req.method, Method::GET | Method::HEAD);
        let long_wait = req.path.starts_with("/1.0/operations/") && req.path.contains("/wait");
        if idempotent && !long_wait {
            return connect_then(&self.dial, &[], |conn| self.exchange(conn, &req))
                .await
                .map_err(|e| self.name_remote(e));
        }
        let conn = self.connect().await?;
        let endpoint = conn.endpoint.clone();
        match self.exchange(conn, &req).await {
            Err(e) if e.is_connection_level() && idempotent => {
                tracing::debug!(endpoint = %endpoint.url(), error = %e, "retrying on another address");
                self.mark_failed(&endpoint);
                let conn = self.connect_avoiding(std::slice::from_ref(&endpoint)).await?;
                self.exchange(conn, &req).await
            }
            Err(e) if e.is_connection_level() => {
                self.mark_failed(&endpoint);
                Err(ClientError::MaybeApplied {
                    addr: endpoint.authority(),
                    source: Box::new(e),
                })
            }
            other => other,
        }
    }

    /// One HTTP exchange on an open connection.
    async fn exchange(&self, conn: Connected, req: &Request) -> Result<Response, ClientError> {
        let endpoint = conn.endpoint.clone();
        let peer_cert = conn.peer_cert.clone();
        let body = crate::http::full(Bytes::from(req.body.clone().unwrap_or_default()));
        let http_req = self.http_request(&endpoint, req, body)?;
        let resp = crate::http::exchange(conn, http_req).await?;
        tracing::debug!(status = resp.status().as_u16(), body = %String::from_utf8_lossy(resp.body()), "Got response");
        Ok(Response::from_http(resp, peer_cert, endpoint))
    }

    /// The HTTP request for `req` sent to `endpoint`, with `body`: the path with
    /// `target` and `project`, `Host`, `User-Agent`, the content type and extra headers.
    pub(crate) fn http_request(
        &self,
        endpoint: &Endpoint,
        req: &Request,
        body: crate::http::RequestBody,
    ) -> Result<http::Request<crate::http::RequestBody>, ClientError> {
        let path = self.full_path(&req.path);
        tracing::debug!(method = %req.method, endpoint = %endpoint.url(), path = %path, "Sending request");
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(&path)
            .header(HOST, endpoint.authority())
            .header(USER_AGENT, &self.user_agent);
        if let Some(ct) = &req.content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        for (name, value) in &req.headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| ClientError::Invalid(format!("Invalid value for header {name}")))?;
            builder = builder.header(name, value);
        }
        builder
            .body(body)
            .map_err(|e| ClientError::Invalid(format!("Invalid request {path:?}: {e}")))
    }

    /// Sends a request and decodes the envelope; errors become [`ClientError::Api`].
    pub async fn call(&self, req: Request) -> Result<ApiResponse, ClientError> {
        let resp = self.request(req).await?;
        let envelope = resp.envelope()?;
        Ok(ApiResponse {
            envelope,
            etag: resp.etag(),
        })
    }

    /// `method path` with an optional JSON body; returns the metadata.
    pub async fn query(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut req = Request::new(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.call(req).await?.envelope.metadata)
    }

    /// GET, returning the metadata.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.query(Method::GET, path, None).await
    }

    /// GET, returning the metadata and the ETag.
    pub async fn get_with_etag(&self, path: &str) -> Result<(Value, Option<String>), ClientError> {
        let r = self.call(Request::get(path)).await?;
        Ok((r.envelope.metadata, r.etag))
    }

    /// `GET /1.0` and its ETag.
    pub async fn server(&self) -> Result<(Value, Option<String>), ClientError> {
        self.get_with_etag("/1.0").await
    }

    /// Waits for an operation (`id`, or its `/1.0/operations/ID` URL) to finish, asking
    /// the server to hold the request for at most `timeout`. Returns the operation object.
    pub async fn wait_operation(&self, id: &str, timeout: Duration) -> Result<Value, ClientError> {
        let path = format!(
            "/1.0/operations/{}/wait?timeout={}",
            operation_id(id),
            timeout.as_secs().max(1)
        );
        let waiter = self.clone().with_timeout(timeout + Duration::from_secs(10));
        waiter.get(&path).await
    }
}

/// The request with `Authorization: Bearer <token>` (replacing any it had).
pub(crate) fn with_bearer(req: &Request, token: &str) -> Request {
    let mut r = req.clone();
    r.headers.retain(|(name, _)| name != http::header::AUTHORIZATION);
    r.headers
        .push((http::header::AUTHORIZATION, format!("Bearer {token}")));
    r
}

/// The operation id of an id or an operation URL (`/1.0/operations/ID?project=p`).
pub fn operation_id(id_or_url: &str) -> &str {
    let no_query = id_or_url.split('?').next().unwrap_or(id_or_url);
    no_query.rsplit('/').next().unwrap_or(no_query)
}

/// The failure message of a finished operation object, if it failed.
pub fn operation_error(op: &Value) -> Option<String> {
    let err = op.get("err").and_then(Value::as_str).unwrap_or_default();
    if !err.is_empty() {
        return Some(err.to_string());
    }
    match op.get("status_code").and_then(Value::as_u64) {
        Some(code) if code >= 400 => Some(
            op.get("status")
                .and_then(Value::as_str)
                .unwrap_or("Operation failed")
                .to_string(),
        ),
        _ => None,
    }
}

/// What `remote add` learns on first contact.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The address that answered.
    pub endpoint: Endpoint,
    /// The server's certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Its SHA-256 fingerprint (lowercase hex).
    pub fingerprint: String,
    /// `GET /1.0` as this client sees it (`auth` says whether we are trusted).
    pub server: Value,
}

/// First contact: connect accepting any certificate (recording it), `GET /1.0`, and
/// return the certificate so the caller can ask the user to accept it.
pub async fn probe(
    endpoints: Vec<Endpoint>,
    identity: Option<trust::CertPair>,
) -> Result<Probe, ClientError> {
    let client = Client::from_spec(DialSpec {
        endpoints,
        check: ServerCheck::Record,
        identity,
        connect_timeout: CONNECT_TIMEOUT,
        state_file: None,
    });
    let resp = client.request(Request::get("/1.0")).await?;
    let certificate_der = resp
        .peer_cert
        .clone()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ClientError::BadResponse("the server presented no certificate".into()))?;
    let server = resp.envelope()?.metadata;
    Ok(Probe {
        endpoint: resp.endpoint,
        fingerprint: trust::fingerprint(&certificate_der),
        certificate_der,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_query_parameters_are_added_once() {
        assert_eq!(with_query("/1.0", "target", "node2"), "/1.0?target=node2");
        assert_eq!(
            with_query("/1.0/certificates?recursion=1", "target", "n 2"),
            "/1.0/certificates?recursion=1&target=n%202"
        );
        assert_eq!(with_query("/1.0?target=a", "target", "b"), "/1.0?target=a");
        assert_eq!(with_query("/1.0?", "x", "y"), "/1.0?x=y");
    }

    #[test]
    fn t10_operation_ids_from_urls() {
        assert_eq!(operation_id("/1.0/operations/abc?project=p"), "abc");
        assert_eq!(operation_id("abc"), "abc");
    }

    #[test]
    fn t10_error_envelopes_become_api_errors() {
        let body = br#"{"type":"error","status":"","status_code":0,"operation":"","error_code":403,"error":"not authorized","metadata":null}"#;
        let e = decode_envelope(403, body).unwrap_err();
        assert_eq!(e.to_string(), "not authorized");
        assert_eq!(e.status(), Some(403));
        let e = decode_envelope(400, b"Bad Request\n").unwrap_err();
        assert_eq!(e.to_string(), "Bad Request");
        assert!(matches!(
            decode_envelope(200, b"nope"),
            Err(ClientError::BadResponse(_))
        ));
        let ok = decode_envelope(200, br#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":["/1.0"]}"#).unwrap();
        assert_eq!(ok.metadata, serde_json::json!(["/1.0"]));
    }

    #[test]
    fn t10_operation_errors() {
        assert_eq!(
            operation_error(&serde_json::json!({"status_code":200,"err":""})),
            None
        );
        assert_eq!(
            operation_error(&serde_json::json!({"status_code":400,"status":"Failure","err":"boom"})),
            Some("boom".into())
        );
    }
}
