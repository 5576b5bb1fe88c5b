//! Who is calling: the trust decision.
//!
//! ```text
//!   ConnFacts (from transport)         trust store lookup
//!   unix creds | cert fingerprint  --> decide() --> Identity { method, username, address }
//! ```
//!
//! The decision is made per request, against the current trust store and the current
//! time, so removing a certificate, or its expiry, takes effect on connections that are
//! already open. As in Incus, a certificate outside its validity period is not trusted,
//! whatever the trust store says.

use std::net::SocketAddr;

use time::OffsetDateTime;

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Local access on the unix socket.
    Unix,
    /// A trusted TLS client certificate.
    Tls,
    /// Another member of the cluster, by its own server certificate.
    Cluster,
    /// An access token from the configured OpenID provider.
    Oidc,
    /// Nothing that is trusted: the caller may only reach public endpoints.
    Untrusted,
}

impl AuthMethod {
    /// The protocol name Incus uses (`auth_user_method`, `requestor.protocol`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Unix => "unix",
            AuthMethod::Tls => "tls",
            AuthMethod::Cluster => "cluster",
            AuthMethod::Oidc => "oidc",
            AuthMethod::Untrusted => "",
        }
    }
}

/// The facts the transport learnt about one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnFacts {
    /// The client's address (after a PROXY header, when there is one).
    pub remote: Option<SocketAddr>,
    /// SHA-256 of the client certificate's DER, when one was presented and proven.
    pub cert_fingerprint: Option<String>,
    /// DER of the client certificate, for adding the caller to the trust store.
    pub cert_der: Option<std::sync::Arc<[u8]>>,
    /// The client certificate's validity period (notBefore, notAfter).
    pub cert_validity: Option<(OffsetDateTime, OffsetDateTime)>,
    /// The peer's user name on the unix socket.
    pub unix_user: Option<String>,
}

/// The caller of one request, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub method: AuthMethod,
    /// The user name: the unix user, the certificate fingerprint, or the OpenID claim.
    pub username: String,
    /// Where the request came from: `@` for the unix socket (as Incus), else the IP.
    pub address: String,
    /// The certificate type that matched (`client`, `metrics`, `server`), if any.
    pub cert_type: Option<String>,
}

impl Identity {
    pub fn trusted(&self) -> bool {
        self.method != AuthMethod::Untrusted
    }

    /// A trusted caller that may do everything (not a metrics-only certificate).
    pub fn full_access(&self) -> bool {
        match self.method {
            // Without a finer authorization model, OpenID users are administrators, as
            // in Incus.
            AuthMethod::Unix | AuthMethod::Cluster | AuthMethod::Oidc => true,
            AuthMethod::Tls => matches!(self.cert_type.as_deref(), Some("client") | Some("server")),
            AuthMethod::Untrusted => false,
        }
    }
}

/// Why the client certificate cannot be trusted at `now`, whatever the trust store says.
pub fn outside_validity(facts: &ConnFacts, now: OffsetDateTime) -> Option<String> {
    let (not_before, not_after) = facts.cert_validity?;
    crate::cert::out_of_date(not_before, not_after, now).map(|o| match o {
        crate::cert::OutOfDate::NotYetValid(d) => format!("Client certificate is not valid before {d}"),
        crate::cert::OutOfDate::Expired(d) => format!("Client certificate expired on {d}"),
    })
}

/// Decides who the caller is at `now`. `lookup` maps a fingerprint to the type of the
/// trusted certificate with that fingerprint; the type `member` means another cluster
/// member.
pub fn decide(facts: &ConnFacts, now: OffsetDateTime, lookup: impl Fn(&str) -> Option<String>) -> Identity {
    let address = facts
        .remote
        .map(|a| plain_ip(a).to_string())
        .unwrap_or_else(|| "@".to_string());
    if let Some(user) = &facts.unix_user {
        return Identity {
            method: AuthMethod::Unix,
            username: user.clone(),
            address: "@".into(),
            cert_type: None,
        };
    }
    if let Some(fp) = facts
        .cert_fingerprint
        .as_ref()
        .filter(|_| outside_validity(facts, now).is_none())
    {
        if let Some(kind) = lookup(fp) {
            let method = if kind == "member" {
                AuthMethod::Cluster
            } else {
                AuthMethod::Tls
            };
            return Identity {
                method,
                username: fp.clone(),
                address,
                cert_type: Some(kind),
            };
        }
    }
    Identity {
        method: AuthMethod::Untrusted,
        username: String::new(),
        address,
        cert_type: None,
    }
}

fn plain_ip(addr: SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(addr.ip()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_certificate_is_untrusted() {
        let facts = ConnFacts {
            remote: Some("127.0.0.5:3000".parse().unwrap()),
            cert_fingerprint: Some("aa".into()),
            ..Default::default()
        };
        let id = decide(&facts, OffsetDateTime::now_utc(), |_| None);
        assert_eq!(id.method, AuthMethod::Untrusted);
        assert_eq!(id.address, "127.0.0.5");
    }

    #[test]
    fn a_trusted_certificate_outside_its_validity_is_untrusted() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let facts = |from: OffsetDateTime, until: OffsetDateTime| ConnFacts {
            remote: Some("127.0.0.5:3000".parse().unwrap()),
            cert_fingerprint: Some("aa".into()),
            cert_validity: Some((from, until)),
            ..Default::default()
        };
        let trusted = |_: &str| Some("client".to_string());
        let expired = facts(now - 10 * day, now - day);
        assert_eq!(decide(&expired, now, trusted).method, AuthMethod::Untrusted);
        assert!(outside_validity(&expired, now)
            .unwrap()
            .starts_with("Client certificate expired on "));
        let early = facts(now + 365 * day, now + 400 * day);
        assert_eq!(decide(&early, now, trusted).method, AuthMethod::Untrusted);
        assert!(outside_validity(&early, now)
            .unwrap()
            .starts_with("Client certificate is not valid before "));
        let valid = facts(now - day, now + day);
        assert_eq!(decide(&valid, now, trusted).method, AuthMethod::Tls);
        assert_eq!(outside_validity(&valid, now), None);
    }

    #[test]
    fn known_certificate_is_tls_and_metrics_is_limited() {
        let facts = ConnFacts {
            remote: Some("[::ffff:127.0.0.5]:3000".parse().unwrap()),
            cert_fingerprint: Some("aa".into()),
            ..Default::default()
        };
        let id = decide(&facts, OffsetDateTime::now_utc(), |fp| {
            (fp == "aa").then(|| "metrics".to_string())
        });
        assert_eq!(id.method, AuthMethod::Tls);
        assert_eq!(id.address, "127.0.0.5");
        assert!(id.trusted() && !id.full_access());
    }

    #[test]
    fn unix_socket_is_trusted() {
        let facts = ConnFacts {
            unix_user: Some("root".into()),
            ..Default::default()
        };
        let id = decide(&facts, OffsetDateTime::now_utc(), |_| None);
        assert_eq!(
            (id.method, id.username.as_str(), id.address.as_str()),
            (AuthMethod::Unix, "root", "@")
        );
        assert!(id.full_access());
    }
}
