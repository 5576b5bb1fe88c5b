//! The server configuration as typed values: what the daemon reads, instead of looking
//! keys up by name.
//!
//! [`Settings::new`] is made from the global (replicated) and member-local key maps
//! once per change of either (the server keeps the last one made, see its `memo`), and
//! every default comes from [`crate::config::KEYS`] and nowhere else: a key that is
//! unset takes the table's default, so the table, `/1.0/metadata/configuration` and
//! `docs/configuration.md` say what the daemon does. Values were checked against the
//! table when they were written; one that does not parse anyway (a state written by an
//! older version) counts as unset, so it takes the default too.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{self, Cidr, ListenAddress};
use crate::expiry::{self, Expiry};

/// The port `acme.http.port` means when it names none (HTTP).
const HTTP_PORT: u16 = 80;

/// Every server setting, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `acme.*`.
    pub acme: Acme,
    /// `cluster.forward_timeout`: how long a request forwarded to another member may take.
    pub forward_timeout: Duration,
    /// `cluster.images_minimal_replica`: how many members keep a copy of an image
    /// (`usize::MAX` for all, from `-1`).
    pub images_minimal_replica: usize,
    /// `cluster.join_token_expiry`; `None` never expires.
    pub join_token_expiry: Option<Expiry>,
    /// `core.remote_token_expiry`; `None` never expires.
    pub remote_token_expiry: Option<Expiry>,
    /// `cluster.max_standby`.
    pub max_standby: usize,
    /// `cluster.max_voters`.
    pub max_voters: usize,
    /// `cluster.offline_threshold`: silence after which a member counts as offline.
    pub offline_threshold: Duration,
    /// `core.https_trusted_proxy`: peers whose PROXY header is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `oidc.*`, when `oidc.issuer` and `oidc.client.id` are both set.
    pub oidc: Option<Oidc>,
    /// `core.https_address` as configured (may be a wildcard); empty when unset.
    pub https_address: String,
    /// `cluster.https_address`, when set.
    pub cluster_https_address: Option<String>,
    /// `core.anycast_address`, when set.
    pub anycast_address: Option<IpAddr>,
}

/// The `acme.*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    pub agree_tos: bool,
    pub ca_url: String,
    pub challenge: String,
    /// `acme.domain`: lower-cased, blanks dropped.
    pub domains: Vec<String>,
    pub email: String,
    /// `acme.http.port`: where the HTTP-01 listener binds (a wildcard host is `None`).
    pub http_port: ListenAddress,
}

impl Acme {
    /// Whether certificates are to be fetched: domains named and the terms agreed to.
    pub fn wanted(&self) -> bool {
        self.agree_tos && !self.domains.is_empty()
    }
}

/// The `oidc.*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oidc {
    pub issuer: String,
    pub client_id: String,
    pub audience: Option<String>,
    pub claim: Option<String>,
    pub scopes: Vec<String>,
}

impl Default for Settings {
    /// The settings of an empty configuration: every key at its default.
    fn default() -> Self {
        Settings::new(&BTreeMap::new(), &BTreeMap::new())
    }
}

impl Settings {
    /// The settings of a global configuration and a member's local one.
    pub fn new(global: &BTreeMap<String, String>, local: &BTreeMap<String, String>) -> Settings {
        let get = |name: &str| lookup(global, local, name);
        let seconds =
            |name: &str| Duration::from_secs(value(get(name), name, |v| v.parse::<u64>().ok()).max(1));
        let count = |name: &str| value(get(name), name, |v| v.parse::<usize>().ok());
        let token_expiry = |name: &str| optional(get(name), name, |v| expiry::parse(v).ok().flatten());
        let text = |name: &str| optional(get(name), name, |v| Some(v.to_string()));
        let trimmed = |name: &str| {
            get(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let scopes = value(get("oidc.scopes"), "oidc.scopes", |v| {
            Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        });
        let oidc = match (trimmed("oidc.issuer"), trimmed("oidc.client.id")) {
            (Some(issuer), Some(client_id)) => Some(Oidc {
                issuer,
                client_id,
                audience: trimmed("oidc.audience"),
                claim: trimmed("oidc.claim"),
                scopes,
            }),
            _ => None,
        };
        Settings {
            acme: Acme {
                agree_tos: value(get("acme.agree_tos"), "acme.agree_tos", parse_bool),
                ca_url: value(get("acme.ca_url"), "acme.ca_url", |v| Some(v.to_string())),
                challenge: value(get("acme.challenge"), "acme.challenge", |v| Some(v.to_string())),
                domains: text("acme.domain")
                    .unwrap_or_default()
                    .split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect(),
                email: text("acme.email").unwrap_or_default(),
                http_port: optional(get("acme.http.port"), "acme.http.port", |v| {
                    config::parse_listen_address(v, HTTP_PORT).ok()
                })
                .unwrap_or(ListenAddress {
                    host: None,
                    port: HTTP_PORT,
                }),
            },
            forward_timeout: seconds("cluster.forward_timeout"),
            images_minimal_replica: value(
                get("cluster.images_minimal_replica"),
                "cluster.images_minimal_replica",
                parse_replicas,
            ),
            join_token_expiry: token_expiry("cluster.join_token_expiry"),
            remote_token_expiry: token_expiry("core.remote_token_expiry"),
            max_standby: count("cluster.max_standby"),
            max_voters: count("cluster.max_voters"),
            offline_threshold: seconds("cluster.offline_threshold"),
            trusted_proxies: text("core.https_trusted_proxy")
                .unwrap_or_default()
                .split(',')
                .filter_map(|item| config::parse_cidr(item.trim()).ok())
                .collect(),
            oidc,
            https_address: text("core.https_address").unwrap_or_default(),
            cluster_https_address: text("cluster.https_address"),
            anycast_address: optional(get("core.anycast_address"), "core.anycast_address", |v| {
                config::parse_host_address(v).ok()
            }),
        }
    }

    /// Whether `ip` may send a PROXY header (`core.https_trusted_proxy`).
    pub fn trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|cidr| cidr.contains(ip))
    }
}

/// A key's configured value, from the map its scope says; `None` when unset or empty.
fn lookup<'a>(
    global: &'a BTreeMap<String, String>,
    local: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    let map = match config::scope(name) {
        Some(config::Scope::Local) => local,
        _ => global,
    };
    map.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// The value of a key, configured or else its default; `None` when neither parses.
fn optional<T>(configured: Option<&str>, name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    configured
        .and_then(&parse)
        .or_else(|| config::key(name).and_then(|k| k.default).and_then(&parse))
}

/// The value of a key that has a default in the table (the tests below check that
/// every such default parses, so the type's own default is never reached).
fn value<T: Default>(configured: Option<&str>, name: &str, parse: impl Fn(&str) -> Option<T>) -> T {
    optional(configured, name, parse).unwrap_or_default()
}

/// `-1` is every member; otherwise at least one.
fn parse_replicas(v: &str) -> Option<usize> {
    match v.parse::<i64>().ok()? {
        -1 => Some(usize::MAX),
        n => usize::try_from(n).ok().filter(|n| *n >= 1),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    Some(matches!(v, "true" | "1" | "yes" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_empty_configuration_gives_the_table_defaults() {
        let s = Settings::default();
        assert_eq!(s.forward_timeout, Duration::from_secs(10));
        assert_eq!(s.offline_threshold, Duration::from_secs(20));
        assert_eq!((s.max_voters, s.max_standby), (3, 2));
        assert_eq!(s.images_minimal_replica, 3);
        let all = map(&[("cluster.images_minimal_replica", "-1")]);
        assert_eq!(
            Settings::new(&all, &BTreeMap::new()).images_minimal_replica,
            usize::MAX
        );
        assert_eq!(
            s.join_token_expiry,
            Some(Expiry {
                hours: 3,
                ..Expiry::default()
            })
        );
        assert_eq!(s.remote_token_expiry, None);
        assert!(!s.acme.agree_tos && !s.acme.wanted());
        assert_eq!(s.acme.ca_url, "https://acme-v02.api.letsencrypt.org/directory");
        assert_eq!(s.acme.challenge, "HTTP-01");
        assert_eq!(s.acme.http_port, ListenAddress { host: None, port: 80 });
        assert!(s.trusted_proxies.is_empty() && s.oidc.is_none() && s.anycast_address.is_none());
        assert_eq!(s.https_address, "");
    }

    /// Every key with a default in the table reaches the settings through it: a value
    /// that does not parse (never accepted on write) takes the default, not zero.
    #[test]
    fn every_table_default_parses() {
        let garbage: BTreeMap<String, String> = config::KEYS
            .iter()
            .filter(|k| k.default.is_some())
            .map(|k| (k.name.to_string(), "\u{1}garbage".to_string()))
            .collect();
        let mut defaults = Settings::default();
        // Text keys take any value; the rest fall back to the defaults.
        defaults.acme.ca_url = "\u{1}garbage".into();
        defaults.acme.challenge = "\u{1}garbage".into();
        assert_eq!(Settings::new(&garbage, &garbage), defaults);
    }

    /// Each key of the table changes the settings when set to another value, so
    /// no key is forgotten (or read under a misspelt name).
    #[test]
    fn every_key_is_read() {
        let samples = [
            ("acme.agree_tos", "true"),
            ("acme.ca_url", "https://ca.example/dir"),
            ("acme.challenge", "DNS-01"),
            ("acme.domain", "A.example, b.example"),
            ("acme.email", "ops@example.org"),
            ("acme.http.port", "127.0.0.1:8080"),
            ("cluster.forward_timeout", "30"),
            ("cluster.https_address", "10.0.0.1:8443"),
            ("cluster.images_minimal_replica", "-1"),
            ("cluster.join_token_expiry", "1d"),
            ("cluster.max_standby", "0"),
            ("cluster.max_voters", "5"),
            ("cluster.offline_threshold", "60"),
            ("core.anycast_address", "203.0.113.10"),
            ("core.https_address", ":8443"),
            ("core.https_trusted_proxy", "127.0.0.1, 10.0.0.0/8"),
            ("core.remote_token_expiry", "3H"),
            ("oidc.audience", "aud"),
            ("oidc.claim", "email"),
            ("oidc.client.id", "cli"),
            ("oidc.issuer", "https://idp.example"),
            ("oidc.scopes", "openid"),
        ];
        assert_eq!(
            samples.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            config::KEYS.iter().map(|k| k.name).collect::<Vec<_>>(),
            "a sample for every key"
        );
        // oidc.* count only with both of issuer and client id set.
        let base = map(&[("oidc.issuer", "https://idp.test"), ("oidc.client.id", "base")]);
        let without = Settings::new(&base, &BTreeMap::new());
        for (key, sample) in samples {
            let mut global = base.clone();
            let mut local = BTreeMap::new();
            match config::scope(key) {
                Some(config::Scope::Local) => local.insert(key.to_string(), sample.to_string()),
                _ => global.insert(key.to_string(), sample.to_string()),
            };
            assert_ne!(Settings::new(&global, &local), without, "{key} is not read");
        }
    }

    #[test]
    fn values_are_typed() {
        let s = Settings::new(
            &map(&[
                ("acme.agree_tos", "true"),
                ("acme.domain", " A.example,, b.example "),
                ("cluster.forward_timeout", "30"),
                ("core.https_trusted_proxy", "127.0.0.1, 10.0.0.0/8"),
                ("oidc.issuer", "https://idp.test"),
                ("oidc.client.id", "cli"),
                ("oidc.scopes", "openid, email,,"),
                ("oidc.claim", "  "),
            ]),
            &map(&[
                ("core.anycast_address", "203.0.113.10/32"),
                ("core.https_address", ":8443"),
            ]),
        );
        assert_eq!(s.acme.domains, ["a.example", "b.example"]);
        assert!(s.acme.wanted());
        assert_eq!(s.forward_timeout, Duration::from_secs(30));
        assert!(s.trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(s.trusted_proxy("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!s.trusted_proxy("192.0.2.1".parse().unwrap()));
        let oidc = s.oidc.unwrap();
        assert_eq!(oidc.scopes, ["openid", "email"]);
        assert_eq!(oidc.claim, None);
        assert_eq!(s.anycast_address, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(s.https_address, ":8443");
        // A local key in the global map (or the reverse) is not read.
        let crossed = Settings::new(
            &map(&[("core.https_address", ":8443")]),
            &map(&[("acme.agree_tos", "true")]),
        );
        assert_eq!(crossed, Settings::default());
    }

    #[test]
    fn oidc_needs_issuer_and_client_and_takes_the_table_scopes() {
        assert_eq!(
            Settings::new(&map(&[("oidc.issuer", "https://i")]), &BTreeMap::new()).oidc,
            None
        );
        let s = Settings::new(
            &map(&[("oidc.issuer", "https://i"), ("oidc.client.id", "c")]),
            &BTreeMap::new(),
        );
        assert_eq!(
            s.oidc.unwrap().scopes,
            ["openid", "offline_access", "email", "profile"]
        );
    }
}
