//! The errors of the client library, one enum for every boundary it crosses: the config
//! directory, the dial, TLS, HTTP and the API itself.

use std::path::PathBuf;

/// Everything that can go wrong talking to a remote. The `Display` text is what the CLI
/// prints after `Error: `, so API errors show the server's message alone, as Incus does.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope (or a bare HTTP error status).
    #[error("{message}")]
    Api { status: u16, message: String },

    /// Nothing listens on the unix socket.
    #[error("The stapes daemon doesn't appear to be started (socket path: {})", path.display())]
    DaemonNotRunning { path: PathBuf },

    /// The unix socket exists but we may not open it.
    #[error(
        "You don't have the needed permissions to talk to the stapes daemon (socket path: {})",
        path.display()
    )]
    SocketPermission { path: PathBuf },

    /// Every address of a remote failed; one line per address.
    #[error("{}", join_errors(.0))]
    AllFailed(Vec<ClientError>),

    /// A TCP or unix connection failed.
    #[error("Failed to connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// A connection or handshake did not finish within the connect timeout.
    #[error("Timed out connecting to {addr} after {secs}s")]
    ConnectTimeout { addr: String, secs: u64 },

    /// The TLS handshake failed for a reason other than a changed certificate.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// The server presented a certificate other than the one pinned for the remote: the
    /// server (or cluster) certificate was replaced, or someone is in the way.
    #[error("{}", pin_mismatch_text(addr, remote.as_deref(), pinned, presented))]
    PinMismatch {
        addr: String,
        /// The configured remote, when the client was made from one.
        remote: Option<String>,
        pinned: String,
        presented: String,
    },

    /// An https remote without a pinned certificate file.
    #[error("No pinned server certificate for remote {remote} (expected {})", path.display())]
    NotPinned { remote: String, path: PathBuf },

    /// Building the TLS client configuration failed (bad client certificate or key).
    #[error("Invalid TLS client configuration: {0}")]
    TlsConfig(#[from] transport::tls::TlsError),

    /// The whole request did not finish in time.
    #[error("Timed out waiting for {what} after {secs}s")]
    Timeout { what: String, secs: u64 },

    /// The connection broke during a request that is not safe to repeat: it may or may
    /// not have been applied, so it was not retried.
    #[error(
        "The connection to {addr} broke during the request; it may or may not have been applied: {source}"
    )]
    MaybeApplied {
        addr: String,
        #[source]
        source: Box<ClientError>,
    },

    /// HTTP framing errors.
    #[error("HTTP error talking to {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },

    /// The websocket handshake or stream failed.
    #[error("Websocket error: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),

    /// An operation ended in failure (or was cancelled); the text is the operation's
    /// `err`, as Incus prints it.
    #[error("{message}")]
    OperationFailed {
        message: String,
        /// The operation as it ended (exec keeps its exit code in `metadata.return`).
        operation: Box<api::types::Operation>,
    },

    /// The server answered something that is not the Incus envelope we expect.
    #[error("Invalid response from the server: {0}")]
    BadResponse(String),

    /// The remote name, URL or request was not usable.
    #[error("{0}")]
    Invalid(String),

    /// Reading or writing the configuration directory failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// config.yml could not be parsed.
    #[error("Unable to decode the configuration: {0}")]
    ConfigDecode(String),

    /// An OpenID Connect login or refresh failed (the provider refused, could not be
    /// reached, or a login was needed where none may be started).
    #[error("OpenID Connect login failed: {0}")]
    Login(String),

    /// Certificates: generation or parsing.
    #[error(transparent)]
    Cert(#[from] trust::CertError),
}

/// The text of [`ClientError::PinMismatch`]: what changed, the new fingerprint, and how
/// to accept it.
fn pin_mismatch_text(addr: &str, remote: Option<&str>, pinned: &str, presented: &str) -> String {
    let (what, accept) = match remote {
        Some(r) => (
            format!("remote {r} ({addr})"),
            format!("stapes remote accept-certificate {r}"),
        ),
        None => (
            addr.to_string(),
            "stapes remote accept-certificate NAME".to_string(),
        ),
    };
    format!(
        "The server certificate of {what} has changed: the cluster certificate was probably updated \
         (or something else answers at this address). The server now presents fingerprint {presented}; \
         the pinned fingerprint is {pinned}. If the change is expected, check the new fingerprint and \
         accept it with: {accept}"
    )
}

/// One line per failed address, except that the addresses of one remote that all
/// present the same changed certificate make one notice, naming them all.
fn join_errors(errors: &[ClientError]) -> String {
    // (remote, pinned, presented, addresses), in order of first appearance.
    type Notice<'a> = (Option<&'a str>, &'a str, &'a str, Vec<&'a str>);
    let mut notices: Vec<Notice<'_>> = Vec::new();
    let mut lines: Vec<Result<String, usize>> = Vec::new();
    for e in errors {
        if let ClientError::PinMismatch {
            addr,
            remote,
            pinned,
            presented,
        } = e
        {
            let key = (remote.as_deref(), pinned.as_str(), presented.as_str());
            match notices.iter().position(|(r, p, q, _)| (*r, *p, *q) == key) {
                Some(i) => notices[i].3.push(addr),
                None => {
                    lines.push(Err(notices.len()));
                    notices.push((key.0, key.1, key.2, vec![addr]));
                }
            }
        } else {
            lines.push(Ok(e.to_string()));
        }
    }
    lines
        .into_iter()
        .map(|line| match line {
            Ok(text) => text,
            Err(i) => {
                let (remote, pinned, presented, addrs) = &notices[i];
                pin_mismatch_text(&addrs.join(", "), *remote, pinned, presented)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl ClientError {
    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is a failure to reach or talk to the server (connect, TLS, HTTP
    /// framing), as opposed to an answer from it: such requests may be retried elsewhere.
    pub fn is_connection_level(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Tls { .. }
            | ClientError::Http { .. }
            | ClientError::DaemonNotRunning { .. } => true,
            ClientError::AllFailed(errors) => errors.iter().all(ClientError::is_connection_level),
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<api::ApiError> for ClientError {
    fn from(e: api::ApiError) -> Self {
        ClientError::Api {
            status: e.status,
            message: e.message,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(addr: &str, remote: &str, presented: &str) -> ClientError {
        ClientError::PinMismatch {
            addr: addr.into(),
            remote: Some(remote.into()),
            pinned: "old".into(),
            presented: presented.into(),
        }
    }

    /// A remote with three addresses that all present the new certificate: one notice.
    #[test]
    fn a_changed_certificate_is_told_once_per_remote() {
        let refused = ClientError::ConnectTimeout {
            addr: "10.0.0.9:8443".into(),
            secs: 3,
        };
        let all = ClientError::AllFailed(vec![
            mismatch("10.0.0.1:8443", "c1", "new"),
            refused,
            mismatch("10.0.0.2:8443", "c1", "new"),
            mismatch("10.0.0.3:8443", "c1", "new"),
        ]);
        let text = all.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with(
                "The server certificate of remote c1 (10.0.0.1:8443, 10.0.0.2:8443, 10.0.0.3:8443) has changed"
            ),
            "{text}"
        );
        assert_eq!(lines[0].matches("stapes remote accept-certificate c1").count(), 1);
        assert_eq!(lines[1], "Timed out connecting to 10.0.0.9:8443 after 3s");
        // Two different certificates are two notices.
        let split =
            ClientError::AllFailed(vec![mismatch("a:1", "c1", "new"), mismatch("b:1", "c1", "other")]);
        assert_eq!(split.to_string().lines().count(), 2);
    }
}
