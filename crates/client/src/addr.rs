//! Remote addresses: the URL forms `remote add` accepts, normalised the way Incus
//! normalises them, and parsed back into something to dial.
//!
//! ```text
//!   host            -> https://host:8443
//!   host:9000       -> https://host:9000
//!   ::1             -> https://[::1]:8443
//!   https://h       -> https://h:8443
//!   /run/x.socket   -> unix:///run/x.socket
//!   unix://         -> unix://            (the default socket, see `default_socket_path`)
//! ```
//!
//! Everything here is pure; `default_socket_path` only reads the environment.

use std::path::{Path, PathBuf};

use crate::ClientError;

/// The port Incus (and stapes) listen on by default.
pub const DEFAULT_PORT: u16 = 8443;

/// Where to dial one address of a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket; `None` is the default socket of this machine.
    Unix(Option<PathBuf>),
    /// An HTTPS server. `host` is a name or an IP address, without brackets.
    Https { host: String, port: u16 },
}

impl Endpoint {
    /// Parses one normalised address (`https://host:port`, `unix://`, `unix:///path`).
    pub fn parse(addr: &str) -> Result<Endpoint, ClientError> {
        let addr = addr.trim();
        if let Some(rest) = addr.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            return Ok(Endpoint::Unix((!path.is_empty()).then(|| PathBuf::from(path))));
        }
        let rest = addr
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Invalid(format!("Invalid URL scheme in {addr:?}")))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = split_host_port(authority)
            .map(|(h, p)| (h, Some(p)))
            .unwrap_or((authority.trim_start_matches('[').trim_end_matches(']'), None));
        if host.is_empty() {
            return Err(ClientError::Invalid(format!("Missing host in {addr:?}")));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| ClientError::Invalid(format!("Invalid port in {addr:?}")))?,
            None => DEFAULT_PORT,
        };
        Ok(Endpoint::Https {
            host: host.to_string(),
            port,
        })
    }

    /// The socket path to dial, resolving the default socket.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Endpoint::Unix(Some(p)) => Some(p.clone()),
            Endpoint::Unix(None) => Some(default_socket_path()),
            Endpoint::Https { .. } => None,
        }
    }

    /// `host:port` with IPv6 hosts bracketed: the HTTP `Host` header and what error
    /// messages name.
    pub fn authority(&self) -> String {
        match self {
            Endpoint::Https { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Https { host, port } => format!("{host}:{port}"),
            Endpoint::Unix(_) => "unix.socket".to_string(),
        }
    }

    /// The URL form, as stored in config.yml.
    pub fn url(&self) -> String {
        match self {
            Endpoint::Unix(None) => "unix://".to_string(),
            Endpoint::Unix(Some(p)) => format!("unix://{}", p.display()),
            Endpoint::Https { .. } => format!("https://{}", self.authority()),
        }
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Endpoint::Unix(_))
    }
}

/// The local daemon's socket: `$STAPES_SOCKET`, else `$STAPES_DIR/unix.socket`, else
/// `/var/lib/stapes/unix.socket`.
pub fn default_socket_path() -> PathBuf {
    socket_path_from(
        std::env::var_os("STAPES_SOCKET").map(PathBuf::from),
        std::env::var_os("STAPES_DIR").map(PathBuf::from),
    )
}

/// [`default_socket_path`] over explicit values, for tests.
pub fn socket_path_from(socket: Option<PathBuf>, dir: Option<PathBuf>) -> PathBuf {
    match (socket, dir) {
        (Some(s), _) if !s.as_os_str().is_empty() => s,
        (_, Some(d)) if !d.as_os_str().is_empty() => d.join("unix.socket"),
        _ => PathBuf::from("/var/lib/stapes/unix.socket"),
    }
}

/// Splits `host:port` or `[v6]:port`; `None` when there is no port (Go's
/// `net.SplitHostPort` semantics: a bare IPv6 address has no port).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// Whether an address names an existing unix socket (`incus remote add x /path` style).
fn is_unix_socket(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(Path::new(path))
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// Normalises what a user typed into the stored URL form, as `incus remote add` does:
/// a missing scheme means https (or unix for a path), a missing port means 8443, IPv6
/// hosts get brackets. Returns the URL and whether it is a unix socket.
pub fn normalize_address(addr: &str) -> Result<(String, bool), ClientError> {
    if addr.is_empty() {
        return Err(ClientError::Invalid("Addresses cannot be empty".into()));
    }
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => match addr.strip_prefix("unix:") {
            Some(r) => (Some("unix"), r),
            None => (None, addr),
        },
    };
    let unix = match scheme {
        Some("unix") => true,
        Some("https") => false,
        Some(other) => {
            return Err(ClientError::Invalid(format!(
                "Invalid URL scheme \"{other}\" in \"{addr}\""
            )))
        }
        None => addr.starts_with('/') || is_unix_socket(addr),
    };
    if unix {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return Ok((format!("unix://{path}"), true));
    }
    // Drop any path after the authority.
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(ClientError::Invalid(format!("Missing host in \"{addr}\"")));
    }
    let (host, port) = match split_host_port(authority) {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (
            authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            DEFAULT_PORT.to_string(),
        ),
    };
    if port.parse::<u16>().is_err() {
        return Err(ClientError::Invalid(format!(
            "Invalid port \"{port}\" in \"{addr}\""
        )));
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok((format!("https://{host}:{port}"), false))
}

/// Splits a comma-separated `addr` value of config.yml into its addresses.
pub fn split_addrs(addr: &str) -> Vec<String> {
    addr.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalize_address(s).unwrap().0
    }

    #[test]
    fn t10_url_forms_normalise_like_incus() {
        assert_eq!(norm("host"), "https://host:8443");
        assert_eq!(norm("host:9000"), "https://host:9000");
        assert_eq!(norm("10.0.0.1"), "https://10.0.0.1:8443");
        assert_eq!(norm("10.0.0.1:8443"), "https://10.0.0.1:8443");
        assert_eq!(norm("https://h"), "https://h:8443");
        assert_eq!(norm("https://h:1234/some/path"), "https://h:1234");
        assert_eq!(norm("::1"), "https://[::1]:8443");
        assert_eq!(norm("[::1]:9000"), "https://[::1]:9000");
        assert_eq!(norm("https://[fe80::1]"), "https://[fe80::1]:8443");
        assert_eq!(norm("unix://"), "unix://");
        assert_eq!(norm("unix:///var/lib/x.socket"), "unix:///var/lib/x.socket");
        assert_eq!(norm("/var/lib/x.socket"), "unix:///var/lib/x.socket");
        assert!(normalize_address("/x").unwrap().1);
    }

    #[test]
    fn t30_bad_urls_are_refused_with_incus_messages() {
        let e = normalize_address("http://h").unwrap_err().to_string();
        assert_eq!(e, "Invalid URL scheme \"http\" in \"http://h\"");
        assert_eq!(
            normalize_address("").unwrap_err().to_string(),
            "Addresses cannot be empty"
        );
        assert!(normalize_address("h:notaport").is_err());
    }

    #[test]
    fn t10_endpoints_parse_back() {
        assert_eq!(
            Endpoint::parse("https://h:9000").unwrap(),
            Endpoint::Https {
                host: "h".into(),
                port: 9000
            }
        );
        let v6 = Endpoint::parse("https://[::1]:8443").unwrap();
        assert_eq!(v6.authority(), "[::1]:8443");
        assert_eq!(v6.url(), "https://[::1]:8443");
        assert_eq!(Endpoint::parse("unix://").unwrap(), Endpoint::Unix(None));
        assert_eq!(
            Endpoint::parse("unix:///a/b").unwrap(),
            Endpoint::Unix(Some("/a/b".into()))
        );
        assert_eq!(Endpoint::parse("https://h").unwrap().authority(), "h:8443");
    }

    #[test]
    fn t10_socket_path_precedence() {
        let p = socket_path_from(Some("/s".into()), Some("/d".into()));
        assert_eq!(p, PathBuf::from("/s"));
        let p = socket_path_from(None, Some("/d".into()));
        assert_eq!(p, PathBuf::from("/d/unix.socket"));
        let p = socket_path_from(Some("".into()), None);
        assert_eq!(p, PathBuf::from("/var/lib/stapes/unix.socket"));
    }

    #[test]
    fn t10_addr_lists_split() {
        assert_eq!(
            split_addrs("https://a:1, https://b:2,"),
            vec!["https://a:1", "https://b:2"]
        );
    }
}
