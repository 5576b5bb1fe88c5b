//! The PROXY protocol (haproxy's `proxy-protocol.txt`, v1 text and v2 binary): a load
//! balancer in TCP mode tells us who its client was, in a header sent before the TLS
//! ClientHello.
//!
//! ```text
//!  TCP accept ──> read_header (bounded by time and size) ──┬─ PROXY/LOCAL header ─┐
//!                   │  loop: read a little, parse()         └─ not PROXY (0x16…) ──┤
//!                   │        (sans-IO, pure)                                       v
//!                   └──────────────────────── leftover bytes ──> Prefixed<S> ──> TLS acceptor
//! ```
//!
//! The subtle part is [`parse`], a pure function over the bytes received so far: it says
//! whether they are a complete header (and how long it is), the start of one, something
//! that is no PROXY header at all, or a malformed one. [`read_header`] is the thin async
//! loop around it. It never peeks: whatever it read past the header (at most a few bytes
//! of the ClientHello, or the whole start of a non-PROXY stream) comes back as "leftover",
//! which [`Prefixed`] replays in front of the socket so the TLS acceptor sees the stream
//! intact.
//!
//! Choices where the spec leaves room:
//! - v1 is parsed strictly: single spaces, exactly the fields the keyword calls for,
//!   addresses in the keyword's family, ports as plain decimal `0`..`65535` without sign
//!   or leading zeros. `UNKNOWN` may be followed by anything up to the CRLF, and yields no
//!   addresses.
//! - v2 `LOCAL` (haproxy's health checks) is accepted whatever its family and body; it
//!   carries no addresses and the caller uses the real peer address.
//! - v2 `PROXY` over `AF_UNSPEC`, or over `AF_UNIX` stream sockets, yields no addresses
//!   (the client has no IP address to report: like v1 `UNKNOWN`). Datagram transports are
//!   [`Parse::Invalid`]: stapes only serves streams, so such a header means a
//!   misconfigured proxy.
//! - v2 TLVs are walked to check that each one fits in the declared length, then ignored.
//! - v2 headers longer than [`MAX_V2_LEN`] are refused, to bound memory per connection.
//! - IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as sent by haproxy on a `v4v6` bind)
//!   are normalised to IPv4, in both source and destination.
//!
//! Whether a peer may send a PROXY header at all (the trusted-proxy list) is the caller's
//! decision, made before calling [`read_header`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What every v1 header starts with.
pub const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header the spec allows, CRLF included.
pub const MAX_V1_LEN: usize = 107;

/// The fixed part of a v2 header: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;

/// The longest v2 header we accept (the format allows 16 + 65535 bytes). haproxy's
/// headers without TLVs are 28 (IPv4) or 52 (IPv6) bytes.
pub const MAX_V2_LEN: usize = 2048;

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client as the proxy saw it; `None` for `LOCAL`, `UNKNOWN`, `AF_UNSPEC` and
    /// `AF_UNIX`: use the real peer address then.
    pub source: Option<SocketAddr>,
    /// The address the client dialled (the proxy's), when known.
    pub destination: Option<SocketAddr>,
    /// A v2 `LOCAL` header: the proxy speaking for itself, typically a health check.
    pub local: bool,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug)]
pub enum Parse {
    /// The bytes are the start of a PROXY header (or nothing yet): read more.
    Incomplete,
    /// The bytes cannot begin a PROXY header: the stream is something else (TLS).
    NotProxy,
    /// A complete header occupying `buf[..header_len]`.
    Done { header_len: usize, header: ProxyHeader },
    /// The stream claims to be PROXY but is malformed or too long. Always
    /// [`ProxyError::Invalid`].
    Invalid(ProxyError),
}

/// Why no PROXY header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY header not received in time")]
    Timeout,
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
    #[error("reading PROXY header")]
    Io(#[from] io::Error),
}

fn invalid(reason: &'static str) -> Parse {
    Parse::Invalid(ProxyError::Invalid(reason))
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`. Pure: no I/O, no allocation.
///
/// Decides as early as possible: a single byte that cannot start either form (a TLS
/// record's `0x16`) is [`Parse::NotProxy`]. Never looks past the header's declared length.
pub fn parse(buf: &[u8]) -> Parse {
    if buf.is_empty() {
        return Parse::Incomplete;
    }
    if is_prefix_of(buf, &V2_SIGNATURE) {
        return if buf.len() < V2_FIXED_LEN {
            Parse::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    if is_prefix_of(buf, V1_PREFIX) {
        return if buf.len() < V1_PREFIX.len() {
            Parse::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    Parse::NotProxy
}

/// True when `buf` and `sig` agree on their common length.
fn is_prefix_of(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let line_len = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => return invalid("v1: LF without CR"),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => i,
            Some(_) => return invalid("v1: CR not followed by LF"),
            None if window.len() == MAX_V1_LEN => return invalid("v1: longer than 107 bytes"),
            None => return Parse::Incomplete,
        },
        None if window.len() == MAX_V1_LEN => return invalid("v1: longer than 107 bytes"),
        None => return Parse::Incomplete,
    };
    let line = &buf[V1_PREFIX.len()..line_len];
    let (true, Ok(line)) = (line.is_ascii(), std::str::from_utf8(line)) else {
        return invalid("v1: not ASCII");
    };
    let header_len = line_len + 2;

    if let Some(rest) = line.strip_prefix("UNKNOWN") {
        // "the receiver must ignore anything presented before the CRLF"
        if rest.is_empty() || rest.starts_with(' ') {
            return Parse::Done {
                header_len,
                header: ProxyHeader {
                    source: None,
                    destination: None,
                    local: false,
                },
            };
        }
        return invalid("v1: unknown protocol");
    }

    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or_default();
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return invalid("v1: wrong number of fields");
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => match (src.parse::<Ipv4Addr>(), dst.parse::<Ipv4Addr>()) {
            (Ok(s), Ok(d)) => (s.into(), d.into()),
            _ => return invalid("v1: bad IPv4 address"),
        },
        "TCP6" => match (src.parse::<Ipv6Addr>(), dst.parse::<Ipv6Addr>()) {
            (Ok(s), Ok(d)) => (s.into(), d.into()),
            _ => return invalid("v1: bad IPv6 address"),
        },
        _ => return invalid("v1: unknown protocol"),
    };
    let (Some(sport), Some(dport)) = (parse_port(sport), parse_port(dport)) else {
        return invalid("v1: bad port");
    };
    Parse::Done {
        header_len,
        header: ProxyHeader {
            source: Some(socket(src, sport)),
            destination: Some(socket(dst, dport)),
            local: false,
        },
    }
}

/// A decimal port: digits only, no sign, no leading zero, at most 65535.
fn parse_port(s: &str) -> Option<u16> {
    let canonical = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return None;
    }
    s.parse::<u32>().ok().and_then(|p| u16::try_from(p).ok())
}

/// A socket address with IPv4-mapped IPv6 normalised to IPv4.
fn socket(ip: IpAddr, port: u16) -> SocketAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(ip, port)
}

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const T_UNSPEC: u8 = 0x0;
const T_STREAM: u8 = 0x1;
const T_DGRAM: u8 = 0x2;

/// `buf` starts with the full signature and holds at least [`V2_FIXED_LEN`] bytes.
fn parse_v2(buf: &[u8]) -> Parse {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_LEN + body_len;

    if ver_cmd >> 4 != 2 {
        return invalid("v2: unsupported version");
    }
    let cmd = ver_cmd & 0x0f;
    if cmd != CMD_LOCAL && cmd != CMD_PROXY {
        return invalid("v2: unknown command");
    }
    if total > MAX_V2_LEN {
        return invalid("v2: header too long");
    }
    if buf.len() < total {
        return Parse::Incomplete;
    }
    // From here on, only `body` is read: never past the declared length.
    let body = &buf[V2_FIXED_LEN..total];
    let none = ProxyHeader {
        source: None,
        destination: None,
        local: cmd == CMD_LOCAL,
    };
    if cmd == CMD_LOCAL {
        // "the receiver must accept this connection as valid and must use the real
        // connection endpoints and discard the protocol block including the family"
        return Parse::Done {
            header_len: total,
            header: none,
        };
    }

    let (addr_len, header) = match (fam >> 4, fam & 0x0f) {
        (AF_UNSPEC, T_UNSPEC) => {
            return Parse::Done {
                header_len: total,
                header: none,
            }
        }
        (AF_INET, T_STREAM) => {
            if body.len() < 12 {
                return invalid("v2: IPv4 address block too short");
            }
            let ip = |i: usize| Ipv4Addr::new(body[i], body[i + 1], body[i + 2], body[i + 3]);
            let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            (
                12,
                ProxyHeader {
                    source: Some(socket(ip(0).into(), port(8))),
                    destination: Some(socket(ip(4).into(), port(10))),
                    local: false,
                },
            )
        }
        (AF_INET6, T_STREAM) => {
            if body.len() < 36 {
                return invalid("v2: IPv6 address block too short");
            }
            let ip = |i: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[i..i + 16]);
                Ipv6Addr::from(a)
            };
            let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            (
                36,
                ProxyHeader {
                    source: Some(socket(ip(0).into(), port(32))),
                    destination: Some(socket(ip(16).into(), port(34))),
                    local: false,
                },
            )
        }
        (AF_UNIX, T_STREAM) => {
            if body.len() < 216 {
                return invalid("v2: unix address block too short");
            }
            (216, none)
        }
        (AF_INET | AF_INET6 | AF_UNIX, T_DGRAM) => {
            return invalid("v2: datagram transport on a stream listener")
        }
        _ => return invalid("v2: unknown address family or transport"),
    };

    let mut tlvs = &body[addr_len..];
    while !tlvs.is_empty() {
        let [_kind, hi, lo, rest @ ..] = tlvs else {
            return invalid("v2: truncated TLV");
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len > rest.len() {
            return invalid("v2: TLV overruns header");
        }
        tlvs = &rest[len..];
    }
    Parse::Done {
        header_len: total,
        header,
    }
}

/// How many more bytes are worth reading, given that `parse(buf)` is `Incomplete`:
/// enough to reach the next decision point, so that a v2 header is read exactly and a
/// v1 header over-reads by at most its 107-byte bound.
fn more_wanted(buf: &[u8]) -> usize {
    if buf.len() < V2_FIXED_LEN {
        return V2_FIXED_LEN - buf.len();
    }
    let limit = if buf.starts_with(&V2_SIGNATURE) {
        let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        (V2_FIXED_LEN + body_len).min(MAX_V2_LEN)
    } else {
        MAX_V1_LEN
    };
    limit.saturating_sub(buf.len()).max(1)
}

/// Reads a PROXY header from the start of `stream`, within `timeout` overall.
///
/// Returns the header (`None` when the stream does not start with one) and the bytes read
/// beyond it, which the caller must replay before anything else reads the stream: wrap it
/// in [`Prefixed`]. Returns as soon as the bytes cannot be a PROXY header (a TLS
/// ClientHello's first byte suffices). Reads at most [`MAX_V2_LEN`] bytes.
///
/// A stream that ends before a decision is [`ProxyError::Io`] (`UnexpectedEof`).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Option<ProxyHeader>, Vec<u8>), ProxyError> {
    tokio::time::timeout(timeout, read_header_unbounded(stream))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read_header_unbounded<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<ProxyHeader>, Vec<u8>), ProxyError> {
    let mut buf = Vec::with_capacity(V2_FIXED_LEN);
    loop {
        match parse(&buf) {
            Parse::Incomplete => {}
            Parse::NotProxy => return Ok((None, buf)),
            Parse::Done { header_len, header } => return Ok((Some(header), buf.split_off(header_len))),
            Parse::Invalid(e) => return Err(e),
        }
        let old = buf.len();
        buf.resize(old + more_wanted(&buf), 0);
        let n = stream.read(&mut buf[old..]).await?;
        buf.truncate(old + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the PROXY header was complete",
            )
            .into());
        }
    }
}

/// A stream with bytes already read from it put back in front: reads drain `prefix`
/// first, then go to `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream. Reading from it directly skips the unread prefix.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The prefix bytes not yet read, and the inner stream.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.pos);
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};
    use tokio::io::AsyncWriteExt;

    // ---- a small test-only encoder ----

    fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {proto} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes()
    }

    fn encode_v2(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        let fam = match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                0x11
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                0x21
            }
            _ => panic!("mixed families"),
        };
        body.extend_from_slice(&src.port().to_be_bytes());
        body.extend_from_slice(&dst.port().to_be_bytes());
        for (kind, value) in tlvs {
            body.push(*kind);
            body.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            body.extend_from_slice(value);
        }
        v2_raw(0x21, fam, &body)
    }

    fn v2_raw(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Parses `bytes`, insisting on `Done` with the header taking all of them.
    fn done(bytes: &[u8]) -> ProxyHeader {
        match parse(bytes) {
            Parse::Done { header_len, header } => {
                assert_eq!(header_len, bytes.len());
                header
            }
            other => panic!("expected Done for {bytes:02x?}, got {other:?}"),
        }
    }

    fn is_invalid(bytes: &[u8]) -> bool {
        matches!(parse(bytes), Parse::Invalid(ProxyError::Invalid(_)))
    }

    /// Every strict prefix of a header is Incomplete.
    fn assert_prefixes_incomplete(bytes: &[u8]) {
        for n in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..n]), Parse::Incomplete),
                "prefix {n} of {bytes:02x?}: {:?}",
                parse(&bytes[..n])
            );
        }
    }

    fn proxied(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader {
            source: Some(src.parse().unwrap()),
            destination: Some(dst.parse().unwrap()),
            local: false,
        }
    }

    /// The first bytes of a TLS 1.2/1.3 ClientHello record.
    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];

    // ---- t10: the forms ----

    #[test]
    fn t10_v1_tcp4() {
        let b = b"PROXY TCP4 198.51.100.2 198.51.100.5 43908 8443\r\n";
        assert_eq!(done(b), proxied("198.51.100.2:43908", "198.51.100.5:8443"));
        assert_prefixes_incomplete(b);
    }

    #[test]
    fn t10_v1_tcp6() {
        let b = b"PROXY TCP6 2001:db8::2 2001:db8::5 65535 0\r\n";
        assert_eq!(done(b), proxied("[2001:db8::2]:65535", "[2001:db8::5]:0"));
        assert_prefixes_incomplete(b);
    }

    #[test]
    fn t10_v1_unknown() {
        let none = ProxyHeader {
            source: None,
            destination: None,
            local: false,
        };
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), none);
        let b = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(done(b), none);
        assert_prefixes_incomplete(b);
    }

    #[test]
    fn t10_v1_header_then_tls() {
        let mut b = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
        let len = b.len();
        b.extend_from_slice(CLIENT_HELLO);
        assert!(matches!(parse(&b), Parse::Done { header_len, .. } if header_len == len));
    }

    #[test]
    fn t10_v2_haproxy_ipv4_capture() {
        // The 28 bytes captured from haproxy 2.6 in the HA lab.
        let b = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c,
            0xc6, 0x33, 0x64, 0x02, 0xc6, 0x33, 0x64, 0x05, 0xab, 0x84, 0x20, 0xfb,
        ];
        assert_eq!(done(&b), proxied("198.51.100.2:43908", "198.51.100.5:8443"));
        assert_prefixes_incomplete(&b);
    }

    #[test]
    fn t10_v2_ipv6() {
        let src: SocketAddr = "[2001:db8::2]:50000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::5]:8443".parse().unwrap();
        let b = encode_v2(src, dst, &[]);
        assert_eq!(b.len(), 52);
        assert_eq!(done(&b), proxied("[2001:db8::2]:50000", "[2001:db8::5]:8443"));
        assert_prefixes_incomplete(&b);
    }

    #[test]
    fn t10_v2_with_tlvs() {
        let tlvs = vec![
            (0x01, b"h2".to_vec()),               // ALPN
            (0x02, b"api.lab.test".to_vec()),     // authority
            (0x04, Vec::new()),                   // NOOP, empty
            (0x20, vec![0x01, 0, 0, 0, 0, 0x00]), // SSL, with nothing inside
        ];
        for (src, dst) in [
            (v4("10.0.0.1:1"), v4("10.0.0.2:2")),
            (
                "[2001:db8::1]:1".parse().unwrap(),
                "[2001:db8::2]:2".parse().unwrap(),
            ),
        ] {
            let b = encode_v2(src, dst, &tlvs);
            let h = done(&b);
            assert_eq!((h.source, h.destination), (Some(src), Some(dst)));
            assert_prefixes_incomplete(&b);
        }
    }

    #[test]
    fn t10_v2_local_health_check() {
        // haproxy's check-send-proxy: 16 bytes, LOCAL, AF_UNSPEC.
        let b = v2_raw(0x20, 0x00, &[]);
        let local = ProxyHeader {
            source: None,
            destination: None,
            local: true,
        };
        assert_eq!(done(&b), local);
        assert_prefixes_incomplete(&b);
        // LOCAL with an address block: accepted, addresses discarded.
        let b = encode_v2(v4("1.2.3.4:5"), v4("5.6.7.8:9"), &[]);
        let mut b = b.clone();
        b[12] = 0x20;
        assert_eq!(done(&b), local);
    }

    #[test]
    fn t10_v2_unspec_and_unix_carry_no_address() {
        let none = ProxyHeader {
            source: None,
            destination: None,
            local: false,
        };
        assert_eq!(done(&v2_raw(0x21, 0x00, &[])), none);
        assert_eq!(done(&v2_raw(0x21, 0x00, &[1, 2, 3])), none);
        assert_eq!(done(&v2_raw(0x21, 0x31, &[0; 216])), none);
        assert!(is_invalid(&v2_raw(0x21, 0x31, &[0; 215])));
    }

    #[test]
    fn t10_mapped_addresses_normalised() {
        let b = b"PROXY TCP6 ::ffff:198.51.100.2 ::ffff:198.51.100.5 1 8443\r\n";
        assert_eq!(done(b), proxied("198.51.100.2:1", "198.51.100.5:8443"));
        // haproxy's 52-byte form on a v4v6 bind.
        let src = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped(),
            43908,
            0,
            0,
        ));
        let dst = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(198, 51, 100, 5).to_ipv6_mapped(),
            8443,
            0,
            0,
        ));
        let b = encode_v2(src, dst, &[]);
        assert_eq!(b.len(), 52);
        assert_eq!(done(&b), proxied("198.51.100.2:43908", "198.51.100.5:8443"));
        // IPv4-compatible (::a.b.c.d) is not mapped and stays IPv6.
        let b = b"PROXY TCP6 ::198.51.100.2 ::1 1 2\r\n";
        assert!(done(b).source.unwrap().is_ipv6());
    }

    // ---- t30: edge cases and refusals ----

    #[test]
    fn t30_tls_and_other_protocols_are_not_proxy() {
        assert!(matches!(parse(&CLIENT_HELLO[..1]), Parse::NotProxy));
        assert!(matches!(parse(CLIENT_HELLO), Parse::NotProxy));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotProxy));
        assert!(matches!(parse(b"PO"), Parse::NotProxy));
        assert!(matches!(parse(b"PROXY\r\n"), Parse::NotProxy));
        assert!(matches!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Parse::NotProxy));
        assert!(matches!(parse(b"\r\n\r\n\0\r\nQUIX"), Parse::NotProxy));
        assert!(matches!(parse(b""), Parse::Incomplete));
    }

    #[test]
    fn t30_v1_strictness() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            b"PROXY UNKNOWN \xff\r\n",
        ] {
            assert!(
                is_invalid(bad),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
    }

    #[test]
    fn t30_v1_length_bound() {
        // Exactly 107 bytes with CRLF: accepted.
        let mut b = b"PROXY UNKNOWN ".to_vec();
        b.resize(105, b'x');
        b.extend_from_slice(b"\r\n");
        assert_eq!(b.len(), MAX_V1_LEN);
        assert!(!done(&b).local);
        assert_prefixes_incomplete(&b);
        // 108 bytes: refused, as soon as 107 bytes have arrived without a CRLF.
        let mut b = b"PROXY UNKNOWN ".to_vec();
        b.resize(106, b'x');
        assert!(matches!(parse(&b), Parse::Incomplete));
        b.push(b'\r');
        assert!(is_invalid(&b));
        b.push(b'\n');
        assert!(is_invalid(&b));
        let b = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(is_invalid(&b));
    }

    #[test]
    fn t30_v2_refusals() {
        let good = encode_v2(v4("1.2.3.4:5"), v4("5.6.7.8:9"), &[]);
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        assert!(is_invalid(&with(12, 0x11)), "version 1");
        assert!(is_invalid(&with(12, 0x31)), "version 3");
        assert!(is_invalid(&with(12, 0x22)), "command 2");
        assert!(is_invalid(&with(13, 0x12)), "UDP over IPv4");
        assert!(is_invalid(&with(13, 0x22)), "UDP over IPv6");
        assert!(is_invalid(&with(13, 0x32)), "unix datagram");
        assert!(is_invalid(&with(13, 0x10)), "IPv4, transport unspecified");
        assert!(is_invalid(&with(13, 0x01)), "unspecified family, stream");
        assert!(is_invalid(&with(13, 0x41)), "family 4");
        // The declared length is too short for the family.
        assert!(is_invalid(&v2_raw(0x21, 0x11, &[0; 11])));
        assert!(is_invalid(&v2_raw(0x21, 0x21, &[0; 35])));
        assert!(is_invalid(&v2_raw(0x21, 0x21, &[0; 12])));
    }

    #[test]
    fn t30_v2_bad_tlvs() {
        let base = encode_v2(v4("1.2.3.4:5"), v4("5.6.7.8:9"), &[]);
        let body = &base[V2_FIXED_LEN..];
        // A TLV header cut short.
        assert!(is_invalid(&v2_raw(0x21, 0x11, &[body, &[0x01, 0x00]].concat())));
        // A TLV whose length runs past the declared length, even though more bytes follow.
        let mut b = v2_raw(0x21, 0x11, &[body, &[0x01, 0x00, 0x05, b'a', b'b']].concat());
        b.extend_from_slice(b"cdefgh");
        assert!(is_invalid(&b));
    }

    #[test]
    fn t30_v2_oversize() {
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11]);
        // Refused from the 16 fixed bytes alone, without waiting for the body.
        let over = u16::try_from(MAX_V2_LEN - V2_FIXED_LEN + 1).unwrap();
        assert!(is_invalid(&[fixed.as_slice(), &over.to_be_bytes()].concat()));
        assert!(is_invalid(&[fixed.as_slice(), &[0xff, 0xff]].concat()));
        // The largest accepted header.
        let mut tlv = vec![0x04];
        tlv.extend_from_slice(&u16::try_from(MAX_V2_LEN - 28 - 3).unwrap().to_be_bytes());
        tlv.resize(MAX_V2_LEN - 28, 0);
        let b = encode_v2(v4("1.2.3.4:5"), v4("5.6.7.8:9"), &[]);
        let b = v2_raw(0x21, 0x11, &[&b[V2_FIXED_LEN..], &tlv].concat());
        assert_eq!(b.len(), MAX_V2_LEN);
        assert_eq!(done(&b).source, Some(v4("1.2.3.4:5")));
    }

    // ---- the reader ----

    #[tokio::test]
    async fn t10_reader_preserves_leftover() {
        let header = encode_v2(v4("198.51.100.2:43908"), v4("198.51.100.5:8443"), &[]);
        let input = [header.as_slice(), CLIENT_HELLO].concat();
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&input).await.unwrap();
        drop(client);
        let (h, leftover) = read_header(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h, Some(proxied("198.51.100.2:43908", "198.51.100.5:8443")));
        let mut rest = Vec::new();
        let mut p = Prefixed::new(leftover, server);
        p.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, CLIENT_HELLO);
    }

    #[tokio::test]
    async fn t10_reader_v1_leftover() {
        let header = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        let input = [header.as_slice(), CLIENT_HELLO].concat();
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&input).await.unwrap();
        drop(client);
        let (h, leftover) = read_header(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h, Some(proxied("1.2.3.4:1", "5.6.7.8:2")));
        // Everything after the header comes back, wherever the read stopped.
        let mut rest = Vec::new();
        Prefixed::new(leftover, server)
            .read_to_end(&mut rest)
            .await
            .unwrap();
        assert_eq!(rest, CLIENT_HELLO);
    }

    #[tokio::test]
    async fn t10_reader_plain_tls_promptly() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        // One byte, and the writer stays open: the reader must not wait for more.
        client.write_all(&[0x16]).await.unwrap();
        let (h, leftover) = read_header(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!((h, leftover.as_slice()), (None, &[0x16u8][..]));
        // The rest of the stream still reads through Prefixed, and writes pass through.
        client.write_all(&CLIENT_HELLO[1..]).await.unwrap();
        let mut p = Prefixed::new(leftover, server);
        let mut got = vec![0; CLIENT_HELLO.len()];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(got, CLIENT_HELLO);
        p.write_all(b"reply").await.unwrap();
        p.flush().await.unwrap();
        let mut reply = [0; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn t30_reader_slow_drip() {
        for header in [
            encode_v2(
                v4("10.1.2.3:4000"),
                v4("10.9.9.9:8443"),
                &[(0x01, b"h2".to_vec())],
            ),
            b"PROXY TCP4 10.1.2.3 10.9.9.9 4000 8443\r\n".to_vec(),
        ] {
            let input = [header.as_slice(), CLIENT_HELLO].concat();
            let (mut client, mut server) = tokio::io::duplex(4096);
            let writer = tokio::spawn(async move {
                for b in input {
                    client.write_all(&[b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            let (h, leftover) = read_header(&mut server, Duration::from_secs(10)).await.unwrap();
            assert_eq!(h, Some(proxied("10.1.2.3:4000", "10.9.9.9:8443")));
            let mut rest = Vec::new();
            Prefixed::new(leftover, server)
                .read_to_end(&mut rest)
                .await
                .unwrap();
            assert_eq!(rest, CLIENT_HELLO);
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn t30_reader_timeout() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        // Half a header, then silence.
        client.write_all(&V2_SIGNATURE[..6]).await.unwrap();
        let r = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
        drop(client);
    }

    #[tokio::test]
    async fn t30_reader_eof_and_invalid() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"PROXY TCP4").await.unwrap();
        drop(client);
        let r = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(
            matches!(&r, Err(ProxyError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{r:?}"
        );

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"PROXY TCP4 x\r\n").await.unwrap();
        let r = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ProxyError::Invalid(_))), "{r:?}");

        // An endless v1 line is refused at 107 bytes, not buffered.
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(b"PROXY UNKNOWN ").await.unwrap();
        client.write_all(&[b'x'; 10_000]).await.unwrap();
        let r = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ProxyError::Invalid(_))), "{r:?}");
    }

    #[tokio::test]
    async fn t30_prefixed_small_reads() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"world").await.unwrap();
        drop(client);
        let mut p = Prefixed::new(b"hello ".to_vec(), server);
        let mut one = [0u8; 4];
        let n = p.read(&mut one).await.unwrap();
        assert_eq!(&one[..n], b"hell");
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"o world");

        let (_c, server) = tokio::io::duplex(64);
        let mut p = Prefixed::new(b"abc".to_vec(), server);
        let mut one = [0u8; 1];
        p.read_exact(&mut one).await.unwrap();
        let (unread, _) = p.into_parts();
        assert_eq!(unread, b"bc");
    }

    // ---- properties ----

    fn any_v4() -> impl Strategy<Value = SocketAddr> {
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    }

    fn any_v6() -> impl Strategy<Value = SocketAddr> {
        let ip = prop_oneof![
            any::<u128>().prop_map(Ipv6Addr::from),
            any::<u32>().prop_map(|ip| Ipv4Addr::from(ip).to_ipv6_mapped()),
        ];
        (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)))
    }

    fn any_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![(any_v4(), any_v4()), (any_v6(), any_v6())]
    }

    fn any_tlvs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8)
    }

    /// Bytes that often get past the signature checks, to reach the deeper paths.
    fn plausible_bytes() -> impl Strategy<Value = Vec<u8>> {
        let tail = proptest::collection::vec(any::<u8>(), 0..256);
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            tail.clone().prop_map(|t| [V2_SIGNATURE.as_slice(), &t].concat()),
            (0u8..4, 0u8..0x40, 0u16..300, tail.clone()).prop_map(|(c, f, l, t)| {
                let mut b = V2_SIGNATURE.to_vec();
                b.extend_from_slice(&[0x20 | c, f]);
                b.extend_from_slice(&l.to_be_bytes());
                b.extend_from_slice(&t);
                b
            }),
            tail.prop_map(|t| [b"PROXY ".as_slice(), &t].concat()),
            "PROXY (TCP4|TCP6|UNKNOWN)( [0-9a-f.:]{0,40}){0,6}(\r\n)?[\\x00-\\xff]{0,8}"
                .prop_map(String::into_bytes),
        ]
    }

    fn normalised(a: SocketAddr) -> SocketAddr {
        socket(a.ip(), a.port())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn p_parse_never_panics_and_stays_in_bounds(buf in plausible_bytes()) {
            match parse(&buf) {
                Parse::Done { header_len, .. } => {
                    prop_assert!(header_len <= buf.len());
                    prop_assert!(header_len <= MAX_V2_LEN);
                }
                Parse::Invalid(e) => prop_assert!(matches!(e, ProxyError::Invalid(_))),
                Parse::Incomplete | Parse::NotProxy => {}
            }
        }

        #[test]
        fn p_v1_round_trip((src, dst) in any_pair(), junk in proptest::collection::vec(any::<u8>(), 0..32)) {
            let b = encode_v1(src, dst);
            prop_assert!(b.len() <= MAX_V1_LEN);
            let h = done(&b);
            prop_assert_eq!(h, ProxyHeader {
                source: Some(normalised(src)),
                destination: Some(normalised(dst)),
                local: false,
            });
            let with_junk = [b.as_slice(), &junk].concat();
            let parsed_len = match parse(&with_junk) {
                Parse::Done { header_len, .. } => Some(header_len),
                _ => None,
            };
            prop_assert_eq!(parsed_len, Some(b.len()));
            let cut = junk.len() % b.len();
            prop_assert!(matches!(parse(&b[..cut]), Parse::Incomplete));
        }

        #[test]
        fn p_v2_round_trip((src, dst) in any_pair(), tlvs in any_tlvs(), junk in proptest::collection::vec(any::<u8>(), 0..32)) {
            let b = encode_v2(src, dst, &tlvs);
            let h = done(&b);
            prop_assert_eq!(h, ProxyHeader {
                source: Some(normalised(src)),
                destination: Some(normalised(dst)),
                local: false,
            });
            let with_junk = [b.as_slice(), &junk].concat();
            let parsed_len = match parse(&with_junk) {
                Parse::Done { header_len, .. } => Some(header_len),
                _ => None,
            };
            prop_assert_eq!(parsed_len, Some(b.len()));
            let cut = junk.len() * 37 % b.len();
            prop_assert!(matches!(parse(&b[..cut]), Parse::Incomplete));
        }
    }
}
