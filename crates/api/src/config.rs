//! The server configuration table: every key stapes knows, with its scope, type, default
//! and description. The one table drives validation of `PUT/PATCH /1.0`, the output of
//! `GET /1.0/metadata/configuration`, and `docs/configuration.md`.
//!
//! Validation is pure and follows Incus's rules key by key: [`check`] takes a whole
//! proposed configuration and either returns all of it normalised (booleans as
//! `true`/`false`, integers in canonical form, a value equal to its key's default as
//! unset) or refuses all of it, naming the keys that are wrong in Incus's words
//! (`cannot set 'K' to 'V': REASON`), so a rejected request applies nothing. Keys
//! `user.*` are free-form and global, as in Incus. Where stapes accepts other values
//! than Incus, `docs/differences.md` says so.
//!
//! The daemon reads values through [`crate::settings::Settings`], typed, never by key
//! name here: a default lives in this table alone.

use std::collections::BTreeMap;
use std::net::IpAddr;

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
    /// An odd integer of at least `min` (the number of database voters).
    OddInteger {
        min: i64,
    },
    /// A number of copies: at least 1, or -1 for every member.
    ReplicaCount,
    /// A listen address: `host:port`, `[v6]:port`, `:port`, or a host with the default
    /// port; a wildcard host (`:port`, `0.0.0.0`, `[::]`) only when `wildcard`.
    ListenAddress {
        wildcard: bool,
    },
    /// Comma-separated IP addresses or CIDR ranges.
    AddressList,
    /// One IP address for this host alone: `ADDR`, `ADDR/32` (IPv4) or `ADDR/128` (IPv6).
    HostAddress,
    /// An Incus expiry expression: `<n>(S|M|H|d|w|m|y)` fields separated by spaces
    /// (see [`crate::expiry`]), reaching at most 1000 years ahead.
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
            Kind::Integer { .. } | Kind::OddInteger { .. } | Kind::ReplicaCount => "integer",
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
        kind: Kind::ListenAddress { wildcard: true },
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
        kind: Kind::ListenAddress { wildcard: false },
        default: None,
        description: "Address to use for clustering traffic",
    },
    Key {
        name: "cluster.images_minimal_replica",
        scope: Scope::Global,
        kind: Kind::ReplicaCount,
        default: Some("3"),
        description: "Minimal number of cluster members that keep a copy of an image (1: only the member it was imported on, -1: all)",
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
        kind: Kind::OddInteger { min: 3 },
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
        kind: Kind::ListenAddress { wildcard: true },
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
        default: Some("openid, offline_access, email, profile"),
        description: "Comma separated list of OpenID Connect scopes",
    },
];

/// Looks a key up by name.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Whether `name` is a free-form user key (`user.*`): global, any value.
pub fn is_user_key(name: &str) -> bool {
    name.starts_with("user.")
}

/// Where a key's value lives: user keys are global.
pub fn scope(name: &str) -> Option<Scope> {
    if is_user_key(name) {
        return Some(Scope::Global);
    }
    key(name).map(|k| k.scope)
}

/// One refused value, in Incus's words: `cannot set 'K' to 'V': REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot set '{key}' to '{value}': {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Every refused value of a proposed configuration, sorted by key; shown as Incus
/// shows its error list: the first, and how many more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no errors"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(f, "{first} (and {} more errors)", rest.len()),
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Checks one value and returns it as it is stored: normalised, and empty (unset) when
/// it is empty or equal to the key's default.
pub fn check_value(name: &str, value: &str) -> Result<String, ConfigError> {
    let refuse = |reason: String| ConfigError {
        key: name.to_string(),
        value: value.to_string(),
        reason,
    };
    if let Some(suffix) = name.strip_prefix("user.") {
        if !suffix.chars().all(user_key_char) {
            return Err(refuse("Invalid key name".into()));
        }
        return Ok(value.to_string());
    }
    let key = key(name).ok_or_else(|| refuse("unknown key".into()))?;
    if value.is_empty() {
        return Ok(String::new());
    }
    let normal = check_kind(key.kind, value).map_err(refuse)?;
    let default = key
        .default
        .map(|d| check_kind(key.kind, d).unwrap_or_else(|_| d.to_string()));
    if default.as_deref() == Some(normal.as_str()) {
        return Ok(String::new());
    }
    Ok(normal)
}

/// The characters Incus allows after `user.`: letters, digits and punctuation (Go's
/// `unicode.Punct`, which has no symbols such as `+`, `$` or `=`).
fn user_key_char(c: char) -> bool {
    c.is_alphanumeric() || (c.is_ascii_punctuation() && !"$+<=>^`|~".contains(c))
}

/// Checks every entry of a proposed configuration and returns it normalised; all or
/// nothing.
pub fn check(config: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigErrors> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (k, v) in config {
        match check_value(k, v) {
            Ok(normal) => {
                out.insert(k.clone(), normal);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Checks a value against its kind and returns its normal form.
fn check_kind(kind: Kind, value: &str) -> Result<String, String> {
    let integer = |value: &str| value.parse::<i64>().map_err(|_| "invalid integer".to_string());
    match kind {
        Kind::String => Ok(value.to_string()),
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok("true".into()),
            "false" | "0" | "no" | "off" => Ok("false".into()),
            _ => Err("invalid boolean".into()),
        },
        Kind::Integer { min, max } => {
            let n = integer(value)?;
            if n < min || n > max {
                return Err(format!("Value must be between {min} and {max}"));
            }
            Ok(n.to_string())
        }
        Kind::ReplicaCount => {
            let n = value
                .parse::<i64>()
                .map_err(|_| "Minimal image replica count is not a number".to_string())?;
            if n < 1 && n != -1 {
                return Err("Invalid value for image replica count".into());
            }
            Ok(n.to_string())
        }
        Kind::OddInteger { min } => {
            let n = integer(value)?;
            if n < min || n % 2 != 1 {
                return Err(format!(
                    "Value must be an odd number equal to or higher than {min}"
                ));
            }
            Ok(n.to_string())
        }
        Kind::ListenAddress { wildcard } => {
            let parsed = parse_listen_address(value, 8443)?;
            if parsed.host.is_none() && !wildcard {
                return Err("Wildcard addresses aren't allowed".into());
            }
            Ok(value.to_string())
        }
        Kind::AddressList => {
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                parse_cidr(item)?;
            }
            Ok(value.to_string())
        }
        Kind::HostAddress => parse_host_address(value).map(|_| value.to_string()),
        Kind::Expiry => crate::expiry::parse_bounded(value)
            .map(|_| value.to_string())
            .map_err(|e| e.to_string()),
        Kind::Url => {
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(value.to_string())
            } else {
                Err(format!("{value:?} is not an http:// or https:// URL"))
            }
        }
        Kind::OneOf(allowed) => {
            if allowed.contains(&value) {
                Ok(value.to_string())
            } else {
                Err(format!(
                    "Invalid value {value:?} (not one of [{}])",
                    allowed.join(" ")
                ))
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
         An empty value unsets a key, and so does a value equal to the key's default.\n\
         Keys `user.*` are free-form and global: any name of letters, digits and\n\
         punctuation after `user.`, any value.\n\n\
         | key | scope | type | default | description |\n|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let kind = match k.kind {
            Kind::Integer { min, max } => format!("integer ({min} to {max})"),
            Kind::OddInteger { min } => format!("odd integer ({min} or more)"),
            Kind::ReplicaCount => "integer (1 or more, -1 for all)".into(),
            Kind::ListenAddress { wildcard: true } => "address".into(),
            Kind::ListenAddress { wildcard: false } => "address (not a wildcard)".into(),
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
    fn defaults_are_valid_values_in_normal_form() {
        for k in KEYS {
            if let Some(d) = k.default {
                let normal = check_kind(k.kind, d).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                assert_eq!(normal, d, "{}", k.name);
            }
        }
    }

    fn refused(key: &str, value: &str) -> String {
        match check_value(key, value) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{key}={value:?} accepted as {v:?}"),
        }
    }

    fn stored(key: &str, value: &str) -> String {
        check_value(key, value).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A key, its accepted values with how each is stored, and refused values with a
    /// part of the reason.
    type Row = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [(&'static str, &'static str)],
    );

    /// Every key, the values Incus accepts and refuses for it (its schema in
    /// `internal/server/cluster/config` and `internal/server/node/config.go`), and how
    /// each accepted value is stored.
    #[test]
    fn every_key_accepts_what_incus_accepts() {
        #[rustfmt::skip]
        let table: &[Row] = &[
            ("acme.agree_tos", &[("true", "true"), ("YES", "true"), ("on", "true"), ("1", "true"), ("false", ""), ("0", ""), ("off", "")], &[("maybe", "invalid boolean"), ("tru", "invalid boolean")]),
            ("acme.ca_url", &[("https://ca.example/dir", "https://ca.example/dir"), ("https://acme-v02.api.letsencrypt.org/directory", "")], &[("ca.example", "is not an http:// or https:// URL")]),
            ("acme.challenge", &[("HTTP-01", "")], &[("DNS-01", "Invalid value \"DNS-01\" (not one of [HTTP-01])"), ("http-01", "not one of")]),
            ("acme.domain", &[("a.example,b.example", "a.example,b.example")], &[]),
            ("acme.email", &[("ops@example.org", "ops@example.org")], &[]),
            ("acme.http.port", &[(":8080", ":8080"), ("127.0.0.1:80", "127.0.0.1:80"), (":80", "")], &[(":http", "Invalid address")]),
            ("cluster.forward_timeout", &[("1", "1"), ("3600", "3600"), ("+30", "30"), ("10", "")], &[("0", "Value must be between 1 and 3600"), ("3601", "between"), ("ten", "invalid integer")]),
            ("cluster.https_address", &[("10.0.0.1:8443", "10.0.0.1:8443"), ("[2001:db8::1]:8443", "[2001:db8::1]:8443"), ("node1.example", "node1.example")], &[(":8443", "Wildcard addresses aren't allowed"), ("0.0.0.0:8443", "Wildcard"), ("[::]:8443", "Wildcard"), ("a b", "Invalid address")]),
            ("cluster.images_minimal_replica", &[("1", "1"), ("-1", "-1"), ("5", "5"), ("3", "")], &[("0", "Invalid value for image replica count"), ("-2", "Invalid value for image replica count"), ("all", "Minimal image replica count is not a number")]),
            ("cluster.join_token_expiry", &[("1d 12H", "1d 12H"), ("1000y", "1000y"), ("3H", "")], &[("3h", "Invalid expiry expression"), ("8000y", "Expiry must be at most 1000 years")]),
            ("cluster.max_standby", &[("0", "0"), ("5", "5"), ("2", "")], &[("6", "Value must be between 0 and 5"), ("-1", "between"), ("x", "invalid integer")]),
            ("cluster.max_voters", &[("5", "5"), ("7", "7"), ("1001", "1001"), ("03", "")], &[("4", "Value must be an odd number equal to or higher than 3"), ("1", "odd number"), ("-3", "odd number"), ("2", "odd number"), ("three", "invalid integer")]),
            ("cluster.offline_threshold", &[("1", "1"), ("86400", "86400"), ("20", "")], &[("0", "Value must be between 1 and 86400"), ("99999999999999999999", "invalid integer")]),
            ("core.anycast_address", &[("203.0.113.10", "203.0.113.10"), ("2001:db8::10/128", "2001:db8::10/128")], &[("203.0.113.0/24", "is a range"), ("127.0.0.5", "cannot be announced")]),
            ("core.https_address", &[(":8443", ":8443"), ("[::]:8443", "[::]:8443"), ("127.0.0.1:8443", "127.0.0.1:8443"), ("::1", "::1")], &[("127.0.0.1:99999", "Invalid address")]),
            ("core.https_trusted_proxy", &[("127.0.0.1, 10.0.0.0/8", "127.0.0.1, 10.0.0.0/8")], &[("10.0.0.0/99", "invalid prefix length"), ("proxy.example", "not an IP address")]),
            ("core.remote_token_expiry", &[("3H", "3H"), ("1y 2m", "1y 2m")], &[("9999y", "Expiry must be at most 1000 years"), ("3 H", "Invalid expiry expression")]),
            ("oidc.audience", &[("https://stapes.example", "https://stapes.example")], &[]),
            ("oidc.claim", &[("email", "email")], &[]),
            ("oidc.client.id", &[("stapes", "stapes")], &[]),
            ("oidc.issuer", &[("https://idp.example/", "https://idp.example/")], &[("idp.example", "is not an http:// or https:// URL")]),
            ("oidc.scopes", &[("openid, email", "openid, email")], &[]),
        ];
        let keys: Vec<&str> = table.iter().map(|(k, _, _)| *k).collect();
        let all: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(keys, all, "one row per key of the table");
        for (key, good, bad) in table {
            for (value, as_stored) in *good {
                assert_eq!(&stored(key, value), as_stored, "{key}={value:?}");
            }
            for (value, reason) in *bad {
                let err = refused(key, value);
                assert!(
                    err.starts_with(&format!("cannot set '{key}' to '{value}': ")) && err.contains(reason),
                    "{key}={value:?}: {err}"
                );
            }
            assert_eq!(stored(key, ""), "", "an empty value unsets {key}");
        }
    }

    #[test]
    fn user_keys_are_free_form_and_global() {
        assert_eq!(stored("user.foo", "bar"), "bar");
        assert_eq!(stored("user.rack-2.location_x", "a b, c"), "a b, c");
        assert_eq!(stored("user.clé", "v"), "v");
        assert_eq!(stored("user.foo", ""), "");
        assert_eq!(scope("user.foo"), Some(Scope::Global));
        assert_eq!(scope("core.https_address"), Some(Scope::Local));
        assert_eq!(scope("core.nope"), None);
        for bad in ["user.a b", "user.a=b", "user.a+b", "user.a$", "user.tab\t"] {
            assert_eq!(
                refused(bad, "v"),
                format!("cannot set '{bad}' to 'v': Invalid key name")
            );
        }
        // Only the prefix `user.` makes a user key.
        assert!(refused("users.foo", "v").ends_with("unknown key"));
        assert!(refused("user", "v").ends_with("unknown key"));
    }

    #[test]
    fn unknown_keys_and_several_errors_read_as_incus_says_them() {
        assert_eq!(
            refused("core.nope", "x"),
            "cannot set 'core.nope' to 'x': unknown key"
        );
        let proposed: BTreeMap<String, String> = [
            ("core.nope", "x"),
            ("cluster.max_voters", "4"),
            ("user.ok", "fine"),
            ("cluster.offline_threshold", "ten"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let err = check(&proposed).unwrap_err();
        assert_eq!(err.0.len(), 3);
        assert_eq!(
            err.to_string(),
            "cannot set 'cluster.max_voters' to '4': Value must be an odd number equal to or higher than 3 (and 2 more errors)"
        );
        let ok: BTreeMap<String, String> = [
            ("user.ok", "fine"),
            ("acme.agree_tos", "YES"),
            ("cluster.max_voters", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let normal = check(&ok).unwrap();
        assert_eq!(normal["acme.agree_tos"], "true");
        assert_eq!(normal["cluster.max_voters"], "", "the default is stored as unset");
        assert_eq!(normal["user.ok"], "fine");
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
        assert!(refused("core.anycast_address", "203.0.113.0/24").contains("core.anycast_address"));
        assert_eq!(stored("core.anycast_address", ""), "");
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
