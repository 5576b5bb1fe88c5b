//! The server configuration table: every key stapes knows, with its scope, type, default
//! and description. The one table drives validation of `PUT/PATCH /1.0`, the output of
//! `GET /1.0/metadata/configuration`, and `docs/configuration.md`.
//!
//! Validation is pure: [`validate`] takes a whole proposed configuration and either
//! accepts all of it or names the first key that is wrong, so a rejected request applies
//! nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

/// Where a key's value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One value for the whole cluster, replicated.
    Global,
    /// One value per member (addresses, mostly).
    Local,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Local => "local",
        }
    }
}

/// The kind of value a key takes, and so how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Bool,
    /// An integer within the inclusive bounds.
    Integer {
        min: i64,
        max: i64,
    },
    /// A listen address: `host:port`, `[v6]:port`, `:port`, or a host with the default port.
    ListenAddress,
    /// Comma-separated IP addresses or CIDR ranges.
    AddressList,
    /// One IP address for this host alone: `ADDR`, `ADDR/32` (IPv4) or `ADDR/128` (IPv6).
    HostAddress,
    /// An Incus expiry expression: `<n>(S|M|H|d|w|m|y)` fields separated by spaces.
    Expiry,
    /// An `http://` or `https://` URL.
    Url,
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Integer { .. } => "integer",
            _ => "string",
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    /// The default, as text; `None` when unset means "nothing".
    pub default: Option<&'static str>,
    pub description: &'static str,
}

/// Every server configuration key, sorted by name.
pub const KEYS: &[Key] = &[
    Key {
        name: "acme.agree_tos",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: Some("false"),
        description: "Agree to ACME terms of service",
    },
    Key {
        name: "acme.ca_url",
        scope: Scope::Global,
        kind: Kind::Url,
        default: Some("https://acme-v02.api.letsencrypt.org/directory"),
        description: "URL to the directory resource of the ACME service",
    },
    Key {
        name: "acme.challenge",
        scope: Scope::Global,
        kind: Kind::OneOf(&["HTTP-01"]),
        default: Some("HTTP-01"),
        description: "ACME challenge type to use",
    },
    Key {
        name: "acme.domain",
        scope: Scope::Global,
        kind: Kind::String,
        default: None,
        description: "Domains for which the certificate is issued (comma-separated)",
    },
    Key {
        name: "acme.email",
        scope: Scope::Global,
        kind: Kind::String,
        default: None,
        description: "Email address used for the account registration",
    },
    Key {
        name: "acme.http.port",
        scope: Scope::Global,
        kind: Kind::ListenAddress,
        default: Some(":80"),
        description: "Port and interface for HTTP server (used by HTTP-01)",
    },
    Key {
        name: "cluster.forward_timeout",
        scope: Scope::Global,
        kind: Kind::Integer { min: 1, max: 3600 },
        default: Some("10"),
        description: "Seconds a request forwarded to another member may take before it fails (stapes)",
    },
    Key {
        name: "cluster.https_address",
        scope: Scope::Local,
        kind: Kind::ListenAddress,
        default: None,
        description: "Address to use for clustering traffic",
    },
    Key {
        name: "cluster.join_token_expiry",
        scope: Scope::Global,
        kind: Kind::Expiry,
        default: Some("3H"),
        description: "Time after which a cluster join token expires",
    },
    Key {
        name: "cluster.max_standby",
        scope: Scope::Global,
        kind: Kind::Integer { min: 0, max: 5 },
        default: Some("2"),
        description: "Number of database stand-by members",
    },
    Key {
        name: "cluster.max_voters",
        scope: Scope::Global,
        kind: Kind::Integer { min: 3, max: 99 },
        default: Some("3"),
        description: "Number of database voter members",
    },
    Key {
        name: "cluster.offline_threshold",
        scope: Scope::Global,
        kind: Kind::Integer { min: 1, max: 86_400 },
        default: Some("20"),
        description: "Threshold when an unresponsive member is considered offline (seconds)",
    },
    Key {
        name: "core.anycast_address",
        scope: Scope::Local,
        kind: Kind::HostAddress,
        default: None,
        description: "Address (/32 or /128) this member holds on `lo` while it is ready, for a routing daemon to announce (stapes)",
    },
    Key {
        name: "core.https_address",
        scope: Scope::Local,
        kind: Kind::ListenAddress,
        default: None,
        description: "Address to bind for the remote API (HTTPS)",
    },
    Key {
        name: "core.https_trusted_proxy",
        scope: Scope::Global,
        kind: Kind::AddressList,
        default: None,
        description: "Trusted servers to provide the client's address (PROXY protocol)",
    },
    Key {
        name: "core.remote_token_expiry",
        scope: Scope::Global,
        kind: Kind::Expiry,
        default: None,
        description: "Time after which a remote add token expires",
    },
    Key {
        name: "oidc.audience",
        scope: Scope::Global,
        kind: Kind::String,
        default: None,
        description: "Expected audience value for the application",
    },
    Key {
        name: "oidc.claim",
        scope: Scope::Global,
        kind: Kind::String,
        default: None,
        description: "OpenID Connect claim to use as the username",
    },
    Key {
        name: "oidc.client.id",
        scope: Scope::Global,
        kind: Kind::String,
        default: None,
        description: "OpenID Connect client ID",
    },
    Key {
        name: "oidc.issuer",
        scope: Scope::Global,
        kind: Kind::Url,
        default: None,
        description: "OpenID Connect Discovery URL for the provider",
    },
    Key {
        name: "oidc.scopes",
        scope: Scope::Global,
        kind: Kind::String,
        default: None,
        description: "Comma separated list of OpenID Connect scopes",
    },
];

/// Looks a key up by name.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Why a proposed configuration was refused. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("Unknown configuration key: {0}")]
    UnknownKey(String),
    #[error("Invalid value for configuration key \"{key}\": {reason}")]
    InvalidValue { key: String, reason: String },
}

/// Checks one value against its key. An empty value always means "unset" and is valid.
pub fn validate_value(name: &str, value: &str) -> Result<(), ConfigError> {
    let key = key(name).ok_or_else(|| ConfigError::UnknownKey(name.to_string()))?;
    if value.is_empty() {
        return Ok(());
    }
    check_kind(key.kind, value).map_err(|reason| ConfigError::InvalidValue {
        key: name.to_string(),
        reason,
    })
}

/// Checks every entry of a proposed configuration; all or nothing.
pub fn validate(config: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    config.iter().try_for_each(|(k, v)| validate_value(k, v))
}

fn check_kind(kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        Kind::String => Ok(()),
        Kind::Bool => match value {
            "true" | "false" | "1" | "0" | "yes" | "no" | "on" | "off" => Ok(()),
            _ => Err(format!("Invalid boolean {value:?}")),
        },
        Kind::Integer { min, max } => {
            let n: i64 = value.parse().map_err(|_| format!("Invalid integer {value:?}"))?;
            if n < min || n > max {
                return Err(format!("Value {n} out of range ({min} to {max})"));
            }
            Ok(())
        }
        Kind::ListenAddress => parse_listen_address(value, 8443).map(|_| ()),
        Kind::AddressList => {
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                parse_cidr(item)?;
            }
            Ok(())
        }
        Kind::HostAddress => parse_host_address(value).map(|_| ()),
        Kind::Expiry => parse_expiry(value).map(|_| ()),
        Kind::Url => {
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(())
            } else {
                Err(format!("{value:?} is not an http:// or https:// URL"))
            }
        }
        Kind::OneOf(allowed) => {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(format!("Must be one of: {}", allowed.join(", ")))
            }
        }
    }
}

/// A parsed listen address. `host` is `None` for a wildcard (`:8443`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    pub host: Option<String>,
    pub port: u16,
}

impl ListenAddress {
    /// The socket address to bind: a wildcard binds `[::]` (dual-stack).
    pub fn bind_string(&self) -> String {
        match &self.host {
            None => format!("[::]:{}", self.port),
            Some(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Some(h) => format!("{h}:{}", self.port),
        }
    }
}

/// Parses `host:port`, `[v6]:port`, `:port`, a bare host or a bare IPv6 address.
pub fn parse_listen_address(value: &str, default_port: u16) -> Result<ListenAddress, String> {
    let bad = || format!("Invalid address {value:?}: expected HOST:PORT, [IPV6]:PORT or :PORT");
    let port_of = |p: &str| p.parse::<u16>().map_err(|_| bad());
    if value.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(ListenAddress {
            host: wildcard_to_none(value),
            port: default_port,
        });
    }
    if let Some(port) = value.strip_prefix(':') {
        return Ok(ListenAddress {
            host: None,
            port: port_of(port)?,
        });
    }
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => default_port,
            p => port_of(p.strip_prefix(':').ok_or_else(bad)?)?,
        };
        return Ok(ListenAddress {
            host: wildcard_to_none(host),
            port,
        });
    }
    let (host, port) = match value.rsplit_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (value, default_port),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad());
    }
    Ok(ListenAddress {
        host: wildcard_to_none(host),
        port,
    })
}

fn wildcard_to_none(host: &str) -> Option<String> {
    match host {
        "0.0.0.0" | "::" => None,
        h => Some(h.to_string()),
    }
}

/// An address range, `ADDR` or `ADDR/BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalise_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address it carries.
pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn parse_cidr(value: &str) -> Result<Cidr, String> {
    let (addr, bits) = match value.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (value, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address or CIDR range"))?;
    let addr = normalise_ip(addr);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => b
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{value:?} has an invalid prefix length"))?,
    };
    Ok(Cidr { addr, bits })
}

/// Parses a single host address, `ADDR`, `ADDR/32` or `ADDR/128`: one that can be put
/// on an interface and routed to (not unspecified, loopback, multicast or link-local).
pub fn parse_host_address(value: &str) -> Result<IpAddr, String> {
    let cidr = parse_cidr(value)?;
    let single = if cidr.addr.is_ipv4() { 32 } else { 128 };
    if cidr.bits != single {
        return Err(format!("{value:?} is a range: expected one address (/{single})"));
    }
    let unusable = match cidr.addr {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() || a.is_link_local()
        }
        IpAddr::V6(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local()
        }
    };
    if unusable {
        return Err(format!(
            "{value:?} cannot be announced: expected a unicast address that is not loopback or link-local"
        ));
    }
    Ok(cidr.addr)
}

/// Parses an Incus expiry expression (`"3H"`, `"1d 12H"`). Months count 30 days and
/// years 365; an empty expression means no expiry (`None`).
pub fn parse_expiry(value: &str) -> Result<Option<Duration>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let mut seen = Vec::new();
    let mut total = 0u64;
    for field in value.split(' ') {
        let bad = || {
            format!(
                "Invalid expiry expression {value:?}: expected fields like 3H or 1d (units S M H d w m y)"
            )
        };
        let unit = field.chars().last().ok_or_else(bad)?;
        let n: u64 = field[..field.len() - unit.len_utf8()]
            .parse()
            .map_err(|_| bad())?;
        let secs = match unit {
            'S' => 1,
            'M' => 60,
            'H' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'm' => 30 * 86_400,
            'y' => 365 * 86_400,
            _ => return Err(bad()),
        };
        if seen.contains(&unit) {
            return Err(bad());
        }
        seen.push(unit);
        total = total.saturating_add(n.saturating_mul(secs));
    }
    Ok(Some(Duration::from_secs(total)))
}

/// The effective value of a key: the configured one, else its default, else empty.
pub fn effective<'a>(config: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    match config.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => v,
        _ => key(name).and_then(|k| k.default).unwrap_or(""),
    }
}

/// `GET /1.0/metadata/configuration`, shaped as Incus shapes it:
/// `{"configs":{"server":{"<prefix>":{"keys":[{"<key>":{...}}]}}}}`.
pub fn metadata_configuration() -> Value {
    let mut groups: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for k in KEYS {
        let group = k.name.split('.').next().unwrap_or(k.name);
        let mut entry = json!({
            "scope": k.scope.as_str(),
            "shortdesc": k.description,
            "longdesc": "",
            "type": k.kind.type_name(),
        });
        if let Some(d) = k.default {
            entry["defaultdesc"] = json!(format!("`{d}`"));
        }
        groups.entry(group).or_default().push(json!({ k.name: entry }));
    }
    let server: serde_json::Map<String, Value> = groups
        .into_iter()
        .map(|(g, keys)| (g.to_string(), json!({ "keys": keys })))
        .collect();
    json!({ "configs": { "server": server } })
}

/// `docs/configuration.md`, rendered from [`KEYS`].
pub fn markdown() -> String {
    let mut out = String::from(
        "# Server configuration\n\n\
         Generated from the key table in `crates/api/src/config.rs` (a test fails when this\n\
         file is stale; `UPDATE_DOCS=1 cargo test -p stapes-api` rewrites it).\n\n\
         Global keys are replicated to every member; local keys belong to one member.\n\
         An empty value unsets a key.\n\n\
         | key | scope | type | default | description |\n|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let kind = match k.kind {
            Kind::Integer { min, max } => format!("integer ({min} to {max})"),
            Kind::ListenAddress => "address".into(),
            Kind::AddressList => "addresses/CIDRs".into(),
            Kind::HostAddress => "IP address (/32, /128)".into(),
            Kind::Expiry => "expiry (e.g. `3H`, `1d 12H`)".into(),
            Kind::Url => "URL".into(),
            Kind::OneOf(v) => format!("one of {}", v.join(", ")),
            other => other.type_name().into(),
        };
        let default = k.default.map(|d| format!("`{d}`")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            k.name,
            k.scope.as_str(),
            kind,
            default,
            k.description
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_configuration_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let want = markdown();
        if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            have, want,
            "docs/configuration.md is stale: run UPDATE_DOCS=1 cargo test -p stapes-api"
        );
    }

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(KEYS.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn defaults_are_valid_values() {
        for k in KEYS {
            if let Some(d) = k.default {
                check_kind(k.kind, d).unwrap_or_else(|e| panic!("{}: {e}", k.name));
            }
        }
    }

    #[test]
    fn listen_addresses() {
        let a = parse_listen_address(":8443", 8443).unwrap();
        assert_eq!((a.host, a.port), (None, 8443));
        assert_eq!(
            parse_listen_address("0.0.0.0:9000", 8443).unwrap().bind_string(),
            "[::]:9000"
        );
        assert_eq!(parse_listen_address("[::]:8443", 8443).unwrap().host, None);
        assert_eq!(
            parse_listen_address("127.0.0.2:8443", 1).unwrap().bind_string(),
            "127.0.0.2:8443"
        );
        assert_eq!(
            parse_listen_address("[::1]:1", 1).unwrap().bind_string(),
            "[::1]:1"
        );
        assert_eq!(
            parse_listen_address("::1", 8443).unwrap().bind_string(),
            "[::1]:8443"
        );
        assert_eq!(parse_listen_address("localhost", 8443).unwrap().port, 8443);
        for bad in ["127.0.0.1:99999", "a b:1", "[::1", ":x", "[zz]:1", "h:"] {
            assert!(parse_listen_address(bad, 8443).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_key_and_bad_values_name_the_key() {
        let err = validate_value("core.nope", "x").unwrap_err();
        assert_eq!(err.to_string(), "Unknown configuration key: core.nope");
        let err = validate_value("cluster.offline_threshold", "ten").unwrap_err();
        assert!(err.to_string().contains("cluster.offline_threshold"));
        assert!(validate_value("cluster.max_voters", "2").is_err());
        assert!(validate_value("core.https_address", "").is_ok());
    }

    #[test]
    fn expiry_expressions() {
        assert_eq!(parse_expiry("3H").unwrap(), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(
            parse_expiry("1d 30M").unwrap(),
            Some(Duration::from_secs(86_400 + 1800))
        );
        assert_eq!(parse_expiry("").unwrap(), None);
        assert!(parse_expiry("3H 3H").is_err());
        assert!(parse_expiry("3h").is_err());
        assert!(parse_expiry("H").is_err());
    }

    #[test]
    fn cidr_matching() {
        let c = parse_cidr("127.0.0.0/8").unwrap();
        assert!(c.contains("127.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!c.contains("128.0.0.1".parse().unwrap()));
        assert!(parse_cidr("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::5".parse().unwrap()));
        assert!(parse_cidr("0.0.0.0/0")
            .unwrap()
            .contains("203.0.113.1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }

    #[test]
    fn host_addresses() {
        assert_eq!(
            parse_host_address("203.0.113.10").unwrap().to_string(),
            "203.0.113.10"
        );
        assert_eq!(
            parse_host_address("203.0.113.10/32").unwrap().to_string(),
            "203.0.113.10"
        );
        assert_eq!(
            parse_host_address("2001:db8::10/128").unwrap().to_string(),
            "2001:db8::10"
        );
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(
            parse_host_address("::ffff:203.0.113.10").unwrap().to_string(),
            "203.0.113.10"
        );
        for bad in [
            "203.0.113.0/24",
            "2001:db8::/64",
            "203.0.113.10/33",
            "0.0.0.0",
            "::",
            "127.0.0.5",
            "::1",
            "224.0.0.1",
            "ff02::1",
            "169.254.1.1",
            "fe80::1",
            "255.255.255.255",
            "nope",
            "203.0.113.10 lo",
        ] {
            assert!(parse_host_address(bad).is_err(), "{bad}");
        }
        let err = validate_value("core.anycast_address", "203.0.113.0/24").unwrap_err();
        assert!(err.to_string().contains("core.anycast_address"), "{err}");
        assert!(validate_value("core.anycast_address", "").is_ok());
    }

    #[test]
    fn metadata_has_scope_and_default() {
        let m = metadata_configuration();
        let core = &m["configs"]["server"]["core"]["keys"];
        let https = core
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("core.https_address"))
            .unwrap();
        assert_eq!(https["scope"], "local");
        let cluster = &m["configs"]["server"]["cluster"]["keys"];
        assert!(cluster.to_string().contains("`20`"));
    }
}
