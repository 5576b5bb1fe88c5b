//! systemd's readiness protocol (`sd_notify(3)`), spoken without libsystemd.
//!
//! Under `Type=notify`, systemd passes a datagram socket in `NOTIFY_SOCKET` and waits
//! for `READY=1` before `systemctl start` returns and ordered units start. stapesd sends:
//!
//! ```text
//! Daemon::start returned (socket bound, database open, HTTPS listening) ─> READY=1
//! shutdown asked (SIGTERM, SIGINT, `admin shutdown`)  ─> STOPPING=1 + EXTEND_TIMEOUT_USEC
//!                                                        (the drain and the close fit)
//! ```
//!
//! Outside systemd (no `NOTIFY_SOCKET`) nothing is sent. A failed send is logged and
//! never stops the daemon: readiness is a courtesy to the service manager.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for, if any.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        match parse_address(value.as_encoded_bytes()) {
            Ok(addr) => Some(Notifier { addr }),
            Err(e) => {
                tracing::warn!(socket = ?value, "NOTIFY_SOCKET ignored: {e}");
                None
            }
        }
    }

    /// Sends one notification (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) {
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), &self.addr));
        if let Err(e) = sent {
            tracing::warn!("failed to notify the service manager: {e}");
        }
    }
}

/// A `NOTIFY_SOCKET` value: a path, or `@name` for the abstract namespace.
pub fn parse_address(value: &[u8]) -> std::io::Result<SocketAddr> {
    match value.first() {
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(value))),
        Some(b'@') if value.len() > 1 => SocketAddr::from_abstract_name(&value[1..]),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract socket name",
        )),
    }
}

/// `READY=1`, with a status line for `systemctl status`.
pub fn ready(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// `STOPPING=1`, with the stop timeout extended by `within` from now, so that a long
/// `--drain` is not cut short by `TimeoutStopSec`.
pub fn stopping(within: Duration, status: &str) -> String {
    format!(
        "STOPPING=1\nEXTEND_TIMEOUT_USEC={}\nSTATUS={}",
        within.as_micros(),
        one_line(status)
    )
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_messages() {
        assert_eq!(
            ready("Serving\non the socket"),
            "READY=1\nSTATUS=Serving on the socket"
        );
        assert_eq!(
            stopping(Duration::from_secs(65), "Stopping"),
            "STOPPING=1\nEXTEND_TIMEOUT_USEC=65000000\nSTATUS=Stopping"
        );
    }

    #[test]
    fn t10_addresses() {
        let path = parse_address(b"/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abs = parse_address(b"@/org/freedesktop/systemd1/notify/123").unwrap();
        assert_eq!(
            abs.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/123"[..])
        );
        for bad in [&b""[..], b"@", b"relative/path", b"vsock:2:1234"] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn t20_a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            addr: parse_address(path.as_os_str().as_bytes()).unwrap(),
        };
        notifier.send(&ready("up"));
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }
}
