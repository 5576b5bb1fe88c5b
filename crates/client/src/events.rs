//! The `/1.0/events` websocket, opened over the same dial step as every request.
//!
//! ```text
//!  connect() -> Stream -- websocket handshake (GET /1.0/events?...) --> JSON text frames -> Event
//! ```

use futures_util::{SinkExt, StreamExt};
use http::header::USER_AGENT;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{encode_query_value, Client};
use crate::connect::Stream;
use crate::oidc::Challenge;
use crate::ClientError;

/// Which events to receive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsOptions {
    /// Event types (`lifecycle`, `logging`, `operation`); empty means all.
    pub types: Vec<String>,
    /// Events of every project (otherwise the client's project, by default `default`).
    pub all_projects: bool,
}

/// The path of the events websocket for these options.
pub fn events_path(opts: &EventsOptions) -> String {
    let mut query = Vec::new();
    if !opts.types.is_empty() {
        let types: Vec<String> = opts.types.iter().map(|t| encode_query_value(t)).collect();
        query.push(format!("type={}", types.join(",")));
    }
    if opts.all_projects {
        query.push("all-projects=true".to_string());
    }
    if query.is_empty() {
        "/1.0/events".to_string()
    } else {
        format!("/1.0/events?{}", query.join("&"))
    }
}

/// A live event stream. Dropping it closes the connection.
pub struct EventStream {
    ws: WebSocket,
    endpoint: crate::Endpoint,
    types: Vec<String>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("types", &self.types).finish()
    }
}

/// An open websocket to the server (events, an operation's websockets).
pub type WebSocket = WebSocketStream<Stream>;

impl Client {
    /// Opens the events websocket. The handshake is bounded by the request timeout; the
    /// stream then lasts until the server closes it or it is dropped.
    pub async fn events(&self, opts: &EventsOptions) -> Result<EventStream, ClientError> {
        self.events_avoiding(opts, &[]).await
    }

    /// As [`Client::events`], trying the endpoints in `avoid` last (to reconnect to
    /// another member after a stream broke).
    pub async fn events_avoiding(
        &self,
        opts: &EventsOptions,
        avoid: &[crate::Endpoint],
    ) -> Result<EventStream, ClientError> {
        let (ws, endpoint) = self.websocket_avoiding(&events_path(opts), avoid).await?;
        Ok(EventStream {
            ws,
            endpoint,
            types: opts.types.clone(),
        })
    }

    /// Opens a websocket on `path` (with `target` and `project` added), e.g. an
    /// operation's `/1.0/operations/ID/websocket?secret=S`. The handshake is bounded by
    /// the request timeout.
    pub async fn websocket(&self, path: &str) -> Result<(WebSocket, crate::Endpoint), ClientError> {
        self.websocket_avoiding(path, &[]).await
    }

    /// As [`Client::websocket`], trying the endpoints in `avoid` last.
    pub async fn websocket_avoiding(
        &self,
        path: &str,
        avoid: &[crate::Endpoint],
    ) -> Result<(WebSocket, crate::Endpoint), ClientError> {
        // For `oidc` remotes, a refused handshake that names the OpenID provider is
        // answered by a refresh or a device login (outside the handshake bound) and one
        // more handshake, as for requests.
        let token = match self.oidc() {
            Some(auth) => Some(auth.fresh_token().await),
            None => None,
        };
        match self.ws_bounded(path, avoid, token.as_deref()).await? {
            Handshake::Open(ws, endpoint) => Ok((ws, endpoint)),
            Handshake::Refused(e, challenge) => match (challenge, &token) {
                (Some(challenge), Some(rejected)) => {
                    let token = self.reauthenticate(&challenge, rejected).await?;
                    match self.ws_bounded(path, avoid, Some(&token)).await? {
                        Handshake::Open(ws, endpoint) => Ok((ws, endpoint)),
                        Handshake::Refused(e, _) => Err(e),
                    }
                }
                _ => Err(e),
            },
        }
    }

    async fn ws_bounded(
        &self,
        path: &str,
        avoid: &[crate::Endpoint],
        bearer: Option<&str>,
    ) -> Result<Handshake, ClientError> {
        let limit = self.timeout();
        tokio::time::timeout(limit, self.ws_inner(path, avoid, bearer))
            .await
            .map_err(|_| ClientError::Timeout {
                what: "the websocket handshake".into(),
                secs: limit.as_secs(),
            })?
    }

    async fn ws_inner(
        &self,
        path: &str,
        avoid: &[crate::Endpoint],
        bearer: Option<&str>,
    ) -> Result<Handshake, ClientError> {
        let conn = self.connect_avoiding(avoid).await?;
        let path = self.full_path(path);
        let scheme = if conn.endpoint.is_unix() { "ws" } else { "wss" };
        let url = format!("{scheme}://{}{path}", conn.endpoint.authority());
        tracing::debug!(url = %url, "Opening a websocket");
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            USER_AGENT,
            http::HeaderValue::from_str(&crate::client::user_agent()).expect("ascii user agent"),
        );
        if let Some(token) = bearer {
            let value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::Login("the stored access token is not a valid header value".into())
            })?;
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let endpoint = conn.endpoint.clone();
        let (ws, _resp) = match tokio_tungstenite::client_async(req, conn.stream).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let challenge = Challenge::from_response(status, resp.headers());
                let body = resp.body().clone().unwrap_or_default();
                let e = match crate::client::decode_envelope(status, &body) {
                    Err(e) => e,
                    Ok(_) => ClientError::Api {
                        status,
                        message: format!("websocket upgrade refused ({status})"),
                    },
                };
                return Ok(Handshake::Refused(e, challenge));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Handshake::Open(ws, endpoint))
    }
}

/// How a websocket handshake ended: open, or refused by the server (with where to log
/// in, when it said).
enum Handshake {
    Open(WebSocket, crate::Endpoint),
    Refused(ClientError, Option<Challenge>),
}

impl EventStream {
    /// The address the stream is connected to.
    pub fn endpoint(&self) -> &crate::Endpoint {
        &self.endpoint
    }

    /// The next event; `None` when the server closed the stream. Events of types not
    /// asked for are skipped (the server filters too; this keeps older servers honest).
    pub async fn next(&mut self) -> Option<Result<api::types::Event, ClientError>> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e.into())),
            };
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Message::Close(_) => return None,
                _ => continue, // ping/pong are answered by tungstenite
            };
            let event: api::types::Event = match serde_json::from_str(&text) {
                Ok(e) => e,
                Err(e) => return Some(Err(ClientError::BadResponse(format!("invalid event: {e}")))),
            };
            if self.types.is_empty() || self.types.contains(&event.kind) {
                return Some(Ok(event));
            }
        }
    }

    /// Closes the websocket politely.
    pub async fn close(mut self) {
        let _ = self.ws.send(Message::Close(None)).await;
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_events_path() {
        assert_eq!(events_path(&EventsOptions::default()), "/1.0/events");
        let opts = EventsOptions {
            types: vec!["lifecycle".into(), "logging".into()],
            all_projects: true,
        };
        assert_eq!(
            events_path(&opts),
            "/1.0/events?type=lifecycle,logging&all-projects=true"
        );
    }
}
