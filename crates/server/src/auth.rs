//! Authentication: turns the connection's facts into the request's [`Identity`].
//!
//! ```text
//!  ConnFacts ─> decide() ─> member? ──yes──> X-Incus-forwarded-{username,protocol,address}
//!                  │                          describe the original caller: believe them
//!                  no ──> strip every identity header; the caller is who TLS/unix says
//! ```
//!
//! Identity headers (`X-Incus-forwarded-*`, `X-Stapes-*`) are believed only from
//! another member, proven by its own server certificate, and are removed from every
//! request before any handler sees it: a client can never claim another identity.
//!
//! As in Incus, a certificate is trusted only within its validity period, and a
//! `metrics` certificate only on `/1.0/metrics`: anywhere else its holder is a stranger.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use trust::{AuthMethod, ConnFacts, Identity};

use crate::context::Ctx;

/// Header prefixes that carry identity between members, never from clients.
const RESERVED_PREFIXES: [&str; 2] = ["x-incus-forwarded-", "x-stapes-"];
pub const FWD_USERNAME: &str = "x-incus-forwarded-username";
pub const FWD_PROTOCOL: &str = "x-incus-forwarded-protocol";
pub const FWD_ADDRESS: &str = "x-incus-forwarded-address";
/// The one path a `metrics` certificate is trusted on.
const METRICS_PATH: &str = "/1.0/metrics";

pub async fn layer(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let facts = req.extensions().get::<ConnFacts>().cloned().unwrap_or_default();
    let state = ctx.store.state();
    let path = req.uri().path().to_string();
    let cert_type = |fp: &str| {
        state
            .certificate_type(fp)
            .filter(|t| t != "metrics" || path == METRICS_PATH)
    };
    let now = time::OffsetDateTime::now_utc();
    let mut direct = trust::identity::decide(&facts, now, |fp| {
        if ctx.is_member(&state, fp) {
            Some("member".to_string())
        } else {
            cert_type(fp)
        }
    });
    // A trusted certificate used outside its validity: refusals say why.
    let out_of_date = facts
        .cert_fingerprint
        .as_deref()
        .filter(|fp| ctx.is_member(&state, fp) || state.certificate_type(fp).is_some())
        .and_then(|_| trust::identity::outside_validity(&facts, now));
    if let Some(why) = &out_of_date {
        tracing::info!(address = %direct.address, path = %path, reason = %why, "a trusted certificate was refused for its dates");
    }
    // Member traffic from anyone else is refused before anything else is looked at.
    if direct.method != AuthMethod::Cluster && crate::route::member_only(req.uri().path()) {
        return crate::response::error_response(&api::ApiError::forbidden());
    }
    // Not a trusted certificate nor the socket: an OpenID access token, if it has one.
    // (The browser-login pages themselves never require one.)
    let mut set_cookies = Vec::new();
    if direct.method == AuthMethod::Untrusted && !req.uri().path().starts_with("/oidc/") {
        match crate::oidc::authenticate(&ctx, req.headers(), &direct.address).await {
            Ok(Some(a)) => {
                direct = a.identity;
                set_cookies = a.set_cookies;
            }
            Ok(None) => {}
            Err(refusal) => return refusal,
        }
    }
    // A member speaking for a client: the client's identity, or nobody if it does not
    // check out here. Never the member's own rights.
    let identity = if direct.method == AuthMethod::Cluster && req.headers().contains_key(FWD_PROTOCOL) {
        forwarded_identity(req.headers(), cert_type).unwrap_or(Identity {
            method: AuthMethod::Untrusted,
            username: String::new(),
            address: direct.address.clone(),
            cert_type: None,
        })
    } else {
        direct.clone()
    };
    if direct.method == AuthMethod::Cluster {
        req.extensions_mut().insert(ViaMember);
    }
    strip_reserved_headers(req.headers_mut());
    req.extensions_mut().insert(identity);
    let mut resp = next.run(req).await;
    for c in set_cookies {
        if let Ok(v) = http::HeaderValue::from_str(&c) {
            resp.headers_mut().append(http::header::SET_COOKIE, v);
        }
    }
    if let (Some(why), 403) = (out_of_date, resp.status().as_u16()) {
        resp = crate::response::error_response(&api::ApiError::new(403, why));
    }
    // Refused callers learn where to log in.
    if matches!(resp.status().as_u16(), 401 | 403) {
        if let Some(config) = crate::oidc::config(&ctx.settings()) {
            crate::oidc::write_headers(resp.headers_mut(), &config);
        }
    }
    resp
}

/// Marks a request that arrived from another member (forwarded or its own): it is
/// answered from local knowledge only, never fanned out again.
#[derive(Debug, Clone, Copy)]
pub struct ViaMember;

/// The original caller, as the forwarding member describes it. The certificate type is
/// looked up again here (the trust store is replicated), never taken from the wire.
fn forwarded_identity(
    headers: &http::HeaderMap,
    cert_type: impl Fn(&str) -> Option<String>,
) -> Option<Identity> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let username = get(FWD_USERNAME)?;
    let protocol = get(FWD_PROTOCOL)?;
    let address = get(FWD_ADDRESS).unwrap_or_default();
    let (method, kind) = match protocol.as_str() {
        "unix" => (AuthMethod::Unix, None),
        "tls" => (AuthMethod::Tls, Some(cert_type(&username)?)),
        "cluster" => (AuthMethod::Cluster, None),
        // The forwarding member verified the token; there is nothing to look up here.
        "oidc" => (AuthMethod::Oidc, None),
        _ => return None,
    };
    Some(Identity {
        method,
        username,
        address,
        cert_type: kind,
    })
}

fn strip_reserved_headers(headers: &mut http::HeaderMap) {
    let reserved: Vec<_> = headers
        .keys()
        .filter(|k| RESERVED_PREFIXES.iter().any(|p| k.as_str().starts_with(p)))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_stripped() {
        let mut h = http::HeaderMap::new();
        h.insert("X-Incus-forwarded-protocol", "unix".parse().unwrap());
        h.insert("x-stapes-identity", "root".parse().unwrap());
        h.insert("user-agent", "x".parse().unwrap());
        strip_reserved_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("user-agent"));
    }

    #[test]
    fn forwarded_tls_identity_needs_a_trusted_certificate_here() {
        let mut h = http::HeaderMap::new();
        h.insert(FWD_USERNAME, "abc".parse().unwrap());
        h.insert(FWD_PROTOCOL, "tls".parse().unwrap());
        h.insert(FWD_ADDRESS, "198.51.100.7".parse().unwrap());
        assert!(forwarded_identity(&h, |_| None).is_none());
        let id = forwarded_identity(&h, |_| Some("metrics".into())).unwrap();
        assert_eq!(
            (id.method, id.address.as_str()),
            (AuthMethod::Tls, "198.51.100.7")
        );
        assert!(!id.full_access());
        h.insert(FWD_PROTOCOL, "root".parse().unwrap());
        assert!(forwarded_identity(&h, |_| Some("client".into())).is_none());
    }
}
