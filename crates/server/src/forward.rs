//! `?target=MEMBER`: the member a client reached hands the request to another member and
//! relays the answer, so a client needs no connection to the target itself.
//!
//! ```text
//!  client ─> member A: auth (Identity) ─> target=B? ─> B offline?  ─> 503 at once
//!                                            │         unknown?   ─> 404
//!                                            └─> pooled mTLS h2 to B, identity in
//!                                                X-Incus-forwarded-* (set, never appended),
//!                                                bodies streamed (tunnel.rs), an upgrade on
//!                                                a fresh HTTP/1.1 connection, the owner's
//!                                                progress bounded by cluster.forward_timeout
//! ```
//!
//! Where a request runs is the route table's to say ([`crate::route::resolve`]): only
//! per-member routes honour `target` (on cluster-wide ones it is ignored, as in Incus), a
//! request about one operation goes to the member its id names, `target` or not.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use trust::Identity;

use crate::auth::{FWD_ADDRESS, FWD_PROTOCOL, FWD_USERNAME};
use crate::context::Ctx;
use crate::peers::PeerError;
use crate::response::{error_response, ApiError};
use crate::route::Resolved;

/// Why a request could not be handed to the member that owns it (mapped to the envelope
/// in `response.rs`). It names the member as clients know it, and says which of the
/// failures an operator tells apart it was.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("Cluster member \"{member}\" refused the connection or cannot be reached ({error})")]
    Refused { member: String, error: PeerError },
    #[error("Cluster member \"{member}\" did not answer in time ({error})")]
    Timeout { member: String, error: PeerError },
    #[error("Cluster member \"{member}\" presented a TLS certificate that is not the one the cluster trusts for it (at {address})")]
    CertificateMismatch { member: String, address: String },
    #[error("Cluster member \"{member}\" is unreachable: {error}")]
    Other { member: String, error: PeerError },
}

impl ForwardError {
    /// A failed call to the member `member`, by what failed.
    pub fn new(member: &str, error: PeerError) -> ForwardError {
        let member = member.to_string();
        match error {
            PeerError::Refused { .. } => ForwardError::Refused { member, error },
            PeerError::Timeout { .. } => ForwardError::Timeout { member, error },
            PeerError::CertificateMismatch { address } => {
                ForwardError::CertificateMismatch { member, address }
            }
            _ => ForwardError::Other { member, error },
        }
    }
}

/// The value of `?target=`, if any.
pub fn target_of(uri: &http::Uri) -> Option<String> {
    query_value(uri, "target")
}

/// The (first, non-empty) value of `?key=`.
pub fn query_value(uri: &http::Uri, key: &str) -> Option<String> {
    let query = uri.query()?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key && !v.is_empty()).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        out.push(b);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn layer(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    // A member's request is answered from local knowledge, never handed on again.
    if req.extensions().get::<crate::auth::ViaMember>().is_some() {
        return next.run(req).await;
    }
    let state = ctx.store.state();
    let resolved = {
        let me = ctx.server_name();
        let online = |name: &str| crate::membership::is_online(&ctx, name);
        let view = crate::route::View {
            state: &state,
            me: &me,
            me_id: ctx.own_id(),
            clustered: ctx.store.clustered(),
            online: &online,
        };
        crate::route::resolve(req.method(), req.uri(), &view)
    };
    // The untrusted are answered here (the public view), except where the request
    // itself carries the capability (an operation websocket's secret).
    let trusted = req.extensions().get::<Identity>().is_some_and(Identity::trusted);
    let secret = crate::route::TABLE
        .lookup(req.method(), req.uri().path(), true)
        .is_some_and(|f| f.route.access == crate::route::Access::Secret);
    if !trusted && !secret {
        return next.run(req).await;
    }
    match resolved {
        Resolved::Local => next.run(req).await,
        Resolved::Forward { member, wait } => {
            let bound = ctx.settings().forward_timeout + wait;
            to_member_within(&ctx, &member, req, bound).await
        }
        Resolved::NotFound(msg) => error_response(&ApiError::not_found_msg(msg)),
        Resolved::Unavailable(msg) => error_response(&ApiError::unavailable(msg)),
        Resolved::BadRequest(msg) => error_response(&ApiError::bad_request(msg)),
    }
}

/// Forwards `req` to the member named `name`, bounded by `cluster.forward_timeout`.
pub async fn to_member(ctx: &Ctx, name: &str, req: Request) -> Response {
    let timeout = ctx.settings().forward_timeout;
    to_member_within(ctx, name, req, timeout).await
}

/// As [`to_member`], with an explicit bound (an operation wait asks for its own).
pub async fn to_member_within(ctx: &Ctx, name: &str, mut req: Request, timeout: Duration) -> Response {
    let state = ctx.store.state();
    let Some(member) = state.members.get(name) else {
        return error_response(&ApiError::not_found_msg("Cluster member not found"));
    };
    if !crate::membership::is_online(ctx, name) {
        return error_response(&ApiError::unavailable(format!(
            "Cluster member \"{name}\" is offline"
        )));
    }
    let address = member.address.clone();
    let upgrade = crate::tunnel::take_upgrade(&mut req);
    let identity = req.extensions().get::<Identity>().cloned();
    let (parts, body) = req.into_parts();
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (k, v) in parts.headers.iter() {
        // Credentials stay with the member that checked them; the identity travels in
        // the forwarded-identity headers.
        if !is_hop_by_hop(k.as_str()) && k != http::header::AUTHORIZATION && k != http::header::COOKIE {
            out = out.header(k, v);
        }
    }
    if upgrade.is_some() {
        // The one hop-by-hop exchange that must reach the owner: it answers the switch.
        out = out.header(http::header::HOST, address.as_str());
        for k in [http::header::CONNECTION, http::header::UPGRADE] {
            if let Some(v) = parts.headers.get(&k) {
                out = out.header(k.clone(), v);
            }
        }
    }
    let Ok(mut out) = out.body(body) else {
        return error_response(&ApiError::bad_request("Cannot forward this request"));
    };
    if let Some(id) = identity {
        let h = out.headers_mut();
        for (name, value) in [
            (FWD_USERNAME, id.username),
            (FWD_PROTOCOL, id.method.as_str().to_string()),
            (FWD_ADDRESS, id.address),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    match upgrade {
        Some(client) => crate::tunnel::upgrade(ctx, name, &address, out, client, timeout).await,
        None => crate::tunnel::stream(ctx, name, &address, out, timeout).await,
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parameter() {
        let t = |u: &str| target_of(&u.parse().unwrap());
        assert_eq!(t("/1.0?target=node2"), Some("node2".into()));
        assert_eq!(t("/1.0?recursion=1&target=n%2D3"), Some("n-3".into()));
        assert_eq!(t("/1.0?target="), None);
        assert_eq!(t("/1.0"), None);
        assert_eq!(t("/1.0?target=%zz"), Some("%zz".into()));
    }
}
